#!/bin/bash
# Cold start through containerd (issue 11): `ctr` with the skiff snapshotter against
# `ctr` with stargz-snapshotter, on the same eStargz images (python, gcc, node, built
# and cached by bench/coldstart.sh's image code), over the same emulated link, runs
# interleaved in one session, no prefetch profile on either side.
#
#   bash bench/containerd.sh [--rate-mbit 100] [--rtt-ms 20] [--runs 3]
#        [--images python,gcc,node] [--cache /var/tmp/skiff-bench] [--skiff PATH]
#        [--mirror http://deb.debian.org/debian] [--out FILE] [--trace DIR]
#        [--baseline PATH]
#
# Each run, for each image: /work/shared/peers/stargz-run.sh (fresh containerd +
# containerd-stargz-grpc, `ctr-remote images rpull` + `ctr-remote run`) and
# bench/lib/skiff-ctr-run.sh (fresh containerd + `skiff daemon` as its proxy
# snapshotter, `ctr-remote images rpull --snapshotter skiff` + `ctr run --snapshotter
# skiff`), in alternating order. Timed: rpull + run until the container exits (the
# daemons' start-up is not counted: on a node they already run). Bytes: what the
# registry sent through the shaper (bench/shaper.py) during the run. The output is
# checked (`1` / `hello`).
#
# Prints one table: per image the median time of each, the ratio skiff ÷ stargz and
# the median MB fetched (also written to --out if given). Raw rows are kept in
# CACHE/last-containerd.tsv, logs of failed runs in CACHE/failed-logs/. --trace DIR
# keeps each skiff run's daemon log at RUST_LOG=debug (gRPC calls and registry
# requests, timestamped), containerd's debug log and the rpull/run marks under DIR
# (bench/lib/skiff-ctr-run.sh's SK_TRACE), and each stargz run's daemon log at
# debug level (DIR/stargz-IMAGE-RUN/). --baseline PATH runs a second skiff
# binary (an earlier build) in the same rounds, next to the first (alternating which
# goes first), and adds its medians and ratios to the table, so a change is measured
# against its base under the same load. Needs root.
# Everything started here is stopped on exit, Ctrl-C included.
# The whole script is one { ... } block so bash parses it before running.
{
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-/work/shared/peers}
RATE=100 RTT=20 RUNS=3 IMAGES=python,gcc,node CACHE=/var/tmp/skiff-bench
SKIFF= MIRROR=http://deb.debian.org/debian OUT= TRACE= BASELINE=
while [ $# -gt 0 ]; do
    case $1 in
    --rate-mbit) RATE=$2; shift 2 ;;
    --rtt-ms) RTT=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --skiff) SKIFF=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --trace) TRACE=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    -h | --help) awk 'NR>1 && /^# The whole script/{exit} NR>1{sub(/^# ?/,""); print}' "$0"; exit 0 ;;
    *) echo "containerd.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "containerd.sh: needs root" >&2; exit 1; }
if [ -z "$SKIFF" ]; then
    for s in "$REPO/target/release/skiff" "$REPO/target/debug/skiff"; do
        [ -x "$s" ] && { SKIFF=$s; break; }
    done
fi
[ -n "$SKIFF" ] || { echo "containerd.sh: no skiff binary (cargo build --release -p skiff, or --skiff)" >&2; exit 1; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

need=()
for t in containerd:containerd ctr:containerd ctr-remote:containerd-stargz-snapshotter \
    runc:runc debootstrap:debootstrap umoci:umoci skopeo:skopeo jq:jq bc:bc \
    docker-registry:docker-registry; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v containerd-stargz-grpc >/dev/null; then
    log "building containerd-stargz-grpc ($PEERS/stargz-setup.sh)"
    bash "$PEERS/stargz-setup.sh" >&2
fi

mkdir -p "$CACHE/stamps" "$CACHE/registry"
WORK=$(mktemp -d /tmp/skiff-ctrbench.XXXXXX)
PIDS=()
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/link.sh
. "$HERE/lib/link.sh"
# shellcheck source=lib/commands.sh
. "$HERE/lib/commands.sh"
# shellcheck source=lib/images.sh
. "$HERE/lib/images.sh"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # daemons a run script left (each stops its own unless interrupted)
    for p in "$WORK"/sgz/*.pid "$WORK"/sk/containerd.pid; do
        [ -f "$p" ] && kill -TERM "$(cat "$p")" 2>/dev/null
    done
    if [ -f "$WORK/sk/skiff.pid" ]; then
        timeout 30 "$SKIFF" --root "$WORK/sk/skiff" daemon stop --force >/dev/null 2>&1 ||
            kill -TERM "$(cat "$WORK/sk/skiff.pid")" 2>/dev/null
    fi
    [ -f "$WORK/sk/skiff/daemon-keeper.pid" ] && kill -TERM "$(cat "$WORK/sk/skiff/daemon-keeper.pid")" 2>/dev/null
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.5
    mount | awk -v d="$WORK/" 'index($3,d)==1{print $3}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    undo_chroot_mounts
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$WORK/log"
IFS=, read -r -a IMGS <<<"$IMAGES"
for img in "${IMGS[@]}"; do image_packages "$img" >/dev/null || { echo "unknown image $img" >&2; exit 2; }; done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_registry
log "registry $REG (storage $CACHE/registry)"
build_base
for img in "${IMGS[@]}"; do build_variant "$img"; push_variant "$img"; done
start_shaper LINK "$RATE" "$(echo "$RTT / 2" | bc -l)"
log "shaped link $LINK -> $REG: ${RATE} Mbit/s, ${RTT} ms RTT"

# (with --trace, stargz-snapshotter logs at debug level and its log is kept beside
# skiff's, to compare what each fetched)
stargz_run() {
    run_one "$1" stargz "$2" env SGZ_DIR="$WORK/sgz" ${TRACE:+SGZ_LOG=debug} bash "$PEERS/stargz-run.sh" "$3" "${CMD[@]}"
    if [ -n "$TRACE" ]; then
        mkdir -p "$TRACE/stargz-$1-$2"
        cp "$WORK/sgz/stargz.log" "$WORK/sgz/containerd.log" "$TRACE/stargz-$1-$2/" 2>/dev/null || true
    fi
}
skiff_one() { run_one "$1" skiff "$2" env SKIFF="$SKIFF" SK_DIR="$WORK/sk" SK_TRACE="$TRACE" bash "$HERE/lib/skiff-ctr-run.sh" "$3" "${CMD[@]}"; }
baseline_one() { run_one "$1" baseline "$2" env SKIFF="$BASELINE" SK_DIR="$WORK/sk" bash "$HERE/lib/skiff-ctr-run.sh" "$3" "${CMD[@]}"; }
# skiff, and the baseline if given (alternating which goes first, as with stargz)
skiff_run() {
    if [ -z "$BASELINE" ]; then
        skiff_one "$@"
    elif [ $(($2 % 2)) = 1 ]; then
        skiff_one "$@"; baseline_one "$@"
    else
        baseline_one "$@"; skiff_one "$@"
    fi
}
for n in $(seq "$RUNS"); do
    for img in "${IMGS[@]}"; do
        image_cmd "$img"
        ref=$LINK/bench/$img:esgz
        log "run $n/$RUNS: $img (${CMD_DESC[$img]})"
        # alternating order: neither always meets the registry's page cache cold
        if [ $((n % 2)) = 1 ]; then
            stargz_run "$img" "$n" "$ref"; skiff_run "$img" "$n" "$ref"
        else
            skiff_run "$img" "$n" "$ref"; stargz_run "$img" "$n" "$ref"
        fi
    done
done

touch "$WORK/results.tsv"
cp "$WORK/results.tsv" "$CACHE/last-containerd.tsv"
python3 - "$WORK/results.tsv" "$RATE" "$RTT" "$RUNS" \
    "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$SKIFF ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo ?))" "$BASELINE" <<'PY' | tee "${OUT:-/dev/null}"
import statistics, sys
path, rate, rtt, runs, load0, load1, skiff, baseline = sys.argv[1:]
rows = {}
failed = {}
by_round = {}
for line in open(path):
    img, tool, n, secs, nbytes, status = line.rstrip("\n").split("\t")
    if status != "ok":
        failed[(img, tool)] = failed.get((img, tool), 0) + 1
        continue
    rows.setdefault((img, tool), []).append((float(secs), int(nbytes or 0)))
    by_round[(img, tool, n)] = float(secs)
def paired(img, a, b):
    """Median over rounds of a's time ÷ b's in the same round (runs side by side
    share the machine's load of the moment, which drifts more than they differ)."""
    v = [t / by_round[(i, b, n)] for (i, t_, n), t in by_round.items()
         if i == img and t_ == a and by_round.get((i, b, n))]
    return statistics.median(v) if v else None
images = list(dict.fromkeys(k[0] for k in list(rows) + list(failed)))
def med(img, tool, i):
    v = [r[i] for r in rows.get((img, tool), [])]
    return statistics.median(v) if v else None
def fmt(x, f):
    return "n/a" if x is None else f.format(x)
print(f"Cold start through containerd, eStargz images, {rate} Mbit/s, {rtt} ms RTT, "
      f"median of {runs} run(s); time = rpull + run to exit; skiff: {skiff}")
print(f"(1/5/15-min load average at start {load0}, at end {load1})")
print()
print("| image | skiff snapshotter (s) | stargz-snapshotter (s) | skiff ÷ stargz "
      "| skiff MB fetched | stargz MB fetched | failed runs (skiff/stargz) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for img in images:
    ts, tz = med(img, "skiff", 0), med(img, "stargz", 0)
    bs, bz = med(img, "skiff", 1), med(img, "stargz", 1)
    ratio = ts / tz if ts is not None and tz else None
    print(f"| {img} | {fmt(ts, '{:.2f}')} | {fmt(tz, '{:.2f}')} | {fmt(ratio, '{:.2f}×')} "
          f"| {fmt(bs and bs / 1e6, '{:.1f}')} | {fmt(bz and bz / 1e6, '{:.1f}')} "
          f"| {failed.get((img, 'skiff'), 0)}/{failed.get((img, 'stargz'), 0)} |")
print()
print("Per round (median over rounds of the ratio of the runs of one round):")
print()
cols = [("skiff", "stargz")] + ([("baseline", "stargz"), ("skiff", "baseline")] if baseline else [])
print("| image | " + " | ".join(f"{a} ÷ {b}" for a, b in cols) + " |")
print("|" + " --- |" * (len(cols) + 1))
for img in images:
    print(f"| {img} | " + " | ".join(fmt(paired(img, a, b), '{:.2f}×') for a, b in cols) + " |")
if baseline:
    print()
    print(f"Baseline (the same rounds, next to each skiff run): {baseline}")
    print()
    print("| image | baseline (s) | baseline ÷ stargz | skiff ÷ baseline | baseline MB fetched "
          "| failed baseline runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for img in images:
        tb, ts, tz = med(img, "baseline", 0), med(img, "skiff", 0), med(img, "stargz", 0)
        bb = med(img, "baseline", 1)
        vs_stargz = tb / tz if tb is not None and tz else None
        vs_base = ts / tb if ts is not None and tb else None
        print(f"| {img} | {fmt(tb, '{:.2f}')} | {fmt(vs_stargz, '{:.2f}×')} "
              f"| {fmt(vs_base, '{:.2f}×')} | {fmt(bb and bb / 1e6, '{:.1f}')} "
              f"| {failed.get((img, 'baseline'), 0)} |")
PY
log "raw rows: $CACHE/last-containerd.tsv"
exit 0
}
