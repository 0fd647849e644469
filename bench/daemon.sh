#!/bin/bash
# Warm start through `skiff daemon` vs `runc run` (issue 10): for each image, the median
# wall time of `skiff run --rm IMAGE CMD` through a running daemon (image already run
# once, so its merged tree is in the daemon's memory and its chunks in the cache), of
# the same run standalone (SKIFF_NO_DAEMON=1, same kind of warm root) and of `runc run`
# on the image unpacked by umoci, interleaved, RUNS times each. Prints a table and the
# ratios, the daemon's RSS, and where one more warm run of each image spends its time
# (from the debug log lines of the CLI and the daemon: CLI start -> request sent ->
# daemon mounted (FUSE INIT done) -> container started and exited -> unmounted -> CLI
# exit; with a build that has them, the container's own steps: /etc files, cgroups,
# setup process, PID 1's exec and exit, cgroups removed).
#
# With --baseline PATH, a second skiff build runs beside the first, through a daemon of
# its own (its own root), interleaved in the same rounds: a before/after comparison
# under the same load.
#
#   bash bench/daemon.sh [--runs 10] [--images python,gcc,node] [--format esgz]
#        [--cache /var/tmp/skiff-bench] [--skiff PATH] [--baseline PATH]
#
# Needs root, the images of bench/coldstart.sh in --cache (run it once first: it builds
# and pushes bench/{python,gcc,node}:{gzip,esgz,zstd}), umoci, runc, jq,
# docker-registry. Unpacked bundles are cached in CACHE/bundles/. Everything started
# here (registry, daemon, mounts, temp dirs) is stopped and removed on exit.
{
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export SKIFF_NETWORK=none
RUNS=10 IMAGES=python,gcc,node FORMAT=esgz CACHE=/var/tmp/skiff-bench SKIFF= BASE=
while [ $# -gt 0 ]; do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --format) FORMAT=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --skiff) SKIFF=$2; shift 2 ;;
    --baseline) BASE=$2; shift 2 ;;
    -h | --help) awk 'NR>1 && /^\{/{exit} NR>1{sub(/^# ?/,""); print}' "$0"; exit 0 ;;
    *) echo "daemon.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "daemon.sh: needs root" >&2; exit 1; }
[ -n "$SKIFF" ] || SKIFF=$REPO/target/release/skiff
[ -x "$SKIFF" ] || { echo "daemon.sh: no skiff at $SKIFF (cargo build --release -p skiff)" >&2; exit 1; }
[ -z "$BASE" ] || [ -x "$BASE" ] || { echo "daemon.sh: no baseline skiff at $BASE" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
WORK=$(mktemp -d /tmp/skiff-daemon-bench.XXXXXX)
PIDS=()
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ -S "$WORK/d/daemon.sock" ] && timeout 30 "$SKIFF" --root "$WORK/d" daemon stop --force >/dev/null 2>&1
    [ -S "$WORK/b/daemon.sock" ] && timeout 30 "$BASE" --root "$WORK/b" daemon stop --force >/dev/null 2>&1
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.5
    mount | awk -v d="$WORK/" 'index($3,d)==1{print $3}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    runc list -q 2>/dev/null | grep "^skiff-dbench-$$-" | xargs -r -n1 runc delete -f 2>/dev/null
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

image_cmd() { # sets CMD=(...) and EXPECT, as bench/coldstart.sh runs them
    case $1 in
    python) CMD=(python3 -c 'print(1)') EXPECT=1 ;;
    node) CMD=(node -e 'console.log(1)') EXPECT=1 ;;
    gcc) CMD=(sh -c 'printf "#include <stdio.h>\nint main(void){puts(\"hello\");return 0;}\n" >/tmp/hello.c && gcc -o /tmp/hello /tmp/hello.c && /tmp/hello') EXPECT=hello ;;
    *) echo "daemon.sh: unknown image $1" >&2; exit 2 ;;
    esac
}

# bundle IMAGE: CACHE/bundles/IMAGE, unpacked once by umoci, its config running CMD.
bundle() {
    local b=$CACHE/bundles/$1
    if [ ! -f "$b/.done" ]; then
        log "unpacking $1 for runc ($b)"
        rm -rf "$b"
        mkdir -p "$CACHE/bundles"
        umoci unpack --image "$CACHE/oci:$1" "$b" >/dev/null
        touch "$b/.done"
    fi
    local args hard
    args=$(printf '%s\n' "${CMD[@]}" | jq -R . | jq -sc .)
    # runc here cannot raise RLIMIT_NOFILE above the host's hard limit.
    hard=$(ulimit -Hn)
    jq --argjson a "$args" --argjson h "$hard" '.process.terminal=false | .process.args=$a
        | .process.rlimits=[{"type":"RLIMIT_NOFILE","hard":$h,"soft":$h}]' "$b/config.json" >"$b/c.json"
    mv "$b/c.json" "$b/config.json"
    echo "$b"
}

# timed OUT_VAR EXPECT CMD...: runs CMD, checks its output is EXPECT, sets OUT_VAR to
# the seconds it took.
timed() {
    local var=$1 want=$2 t0 t1 out; shift 2
    t0=$(now_s)
    out=$("$@" </dev/null 2>"$WORK/last.err") || { cat "$WORK/last.err" >&2; return 1; }
    t1=$(now_s)
    [ "$(printf '%s\n' "$out" | tail -1)" = "$want" ] || { log "bad output from $*: $out"; return 1; }
    printf -v "$var" '%s' "$(echo "$t1 - $t0" | bc)"
}

# wait_quiet [SKIFF ROOT]: until the daemon's registry request count stays the same for
# 2 s (the background fetch a first run starts is over), at most 5 minutes.
wait_quiet() {
    local skiff=${1:-$SKIFF} root=${2:-$WORK/d} last=-1 now same=0 i
    for i in $(seq 300); do
        now=$("$skiff" --root "$root" daemon status --json | jq '[.registries[].requests] | add // 0')
        if [ "$now" = "$last" ]; then
            same=$((same + 1))
            [ "$same" -ge 2 ] && return 0
        else
            same=0
        fi
        last=$now
        sleep 1
    done
}

start_registry
log "registry $REG (storage $CACHE/registry)"
mkdir -p "$WORK/d"
RUST_LOG=info,skiff=debug,fuser=warn start_daemon "$WORK/d"
log "daemon pid $DAEMON_PID on $WORK/d"
MAIN_DAEMON_PID=$DAEMON_PID
if [ -n "$BASE" ]; then
    mkdir -p "$WORK/b"
    SKIFF=$BASE RUST_LOG=info,skiff=debug,fuser=warn start_daemon "$WORK/b"
    log "baseline daemon pid $DAEMON_PID on $WORK/b ($BASE)"
    DAEMON_PID=$MAIN_DAEMON_PID
fi
IFS=, read -r -a IMGS <<<"$IMAGES"
echo -e "image\tdaemon_s\tstandalone_s\trunc_s\tbaseline_s" >"$WORK/medians.tsv"
for img in "${IMGS[@]}"; do
    image_cmd "$img"
    b=$(bundle "$img")
    ref=$REG/bench/$img:$FORMAT
    log "$img: warming (one run through the daemon, one standalone, one runc)"
    timed _ "$EXPECT" "$SKIFF" --root "$WORK/d" run --rm "$ref" "${CMD[@]}"
    timed _ "$EXPECT" env SKIFF_NO_DAEMON=1 "$SKIFF" --root "$WORK/s-$img" run --rm "$ref" "${CMD[@]}"
    timed _ "$EXPECT" runc run -b "$b" "skiff-dbench-$$-w"
    [ -z "$BASE" ] || timed _ "$EXPECT" "$BASE" --root "$WORK/b" run --rm "$ref" "${CMD[@]}"
    # The daemon's first run of an image fetches the rest of it in the background: let
    # that finish, so that what is timed is a warm start, not a start beside a download.
    wait_quiet
    [ -z "$BASE" ] || wait_quiet "$BASE" "$WORK/b"
    : >"$WORK/$img.d" ; : >"$WORK/$img.s" ; : >"$WORK/$img.r" ; : >"$WORK/$img.b"
    for n in $(seq "$RUNS"); do
        timed t "$EXPECT" "$SKIFF" --root "$WORK/d" run --rm "$ref" "${CMD[@]}"; echo "$t" >>"$WORK/$img.d"
        if [ -n "$BASE" ]; then
            timed t "$EXPECT" "$BASE" --root "$WORK/b" run --rm "$ref" "${CMD[@]}"; echo "$t" >>"$WORK/$img.b"
        fi
        timed t "$EXPECT" runc run -b "$b" "skiff-dbench-$$-$n"; echo "$t" >>"$WORK/$img.r"
        timed t "$EXPECT" env SKIFF_NO_DAEMON=1 "$SKIFF" --root "$WORK/s-$img" run --rm "$ref" "${CMD[@]}"; echo "$t" >>"$WORK/$img.s"
    done
    printf '%s\t%s\t%s\t%s\t%s\n' "$img" "$(median <"$WORK/$img.d")" "$(median <"$WORK/$img.s")" \
        "$(median <"$WORK/$img.r")" "$(median <"$WORK/$img.b")" >>"$WORK/medians.tsv"
done
rss_runs=$(rss_mb "$DAEMON_PID") hwm_runs=$(rss_mb "$DAEMON_PID" VmHWM)

# trace IMAGE: one more warm run through the daemon with debug logs; prints its phases.
trace() {
    image_cmd "$1"
    local t0 t1 mark
    mark=$(wc -l <"$WORK/daemon-d.log")
    t0=$(now_s)
    RUST_LOG=skiff=debug "$SKIFF" --root "$WORK/d" run --rm "$REG/bench/$1:$FORMAT" "${CMD[@]}" \
        </dev/null >/dev/null 2>"$WORK/trace-$1.cli"
    t1=$(now_s)
    tail -n +"$((mark + 1))" "$WORK/daemon-d.log" >"$WORK/trace-$1.daemon"
    python3 - "$1" "$t0" "$t1" "$WORK/trace-$1.cli" "$WORK/trace-$1.daemon" <<'PY'
import re, sys, datetime
img, t0, t1, cli, daemon = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
ansi = re.compile(r"\x1b\[[0-9;]*m")
def first(path, needle):
    for line in open(path, errors="replace"):
        line = ansi.sub("", line)
        if needle in line:
            ts = line.split()[0].rstrip("Z")
            return datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp()
    return None
marks = [
    ("CLI start -> daemon found", first(cli, "using the daemon")),
    ("-> mount request read", first(daemon, "request req=Mount")),
    ("-> mounted (FUSE INIT answered)", first(daemon, "mounted id=")),
    ("-> CLI has the view", first(cli, "the daemon mounted the view")),
    ("-> spec + /etc files", first(cli, "container: /etc files written")),
    ("-> cgroups", first(cli, "container: cgroups created")),
    ("-> setup process in its cgroups", first(cli, "container: setup process in its cgroups")),
    ("-> setup process forked", first(cli, "container: setup process started")),
    ("-> PID 1 exec'd", first(cli, "container: PID 1 executed its program")),
    ("-> PID 1 exited", first(cli, "container: PID 1 exited")),
    ("-> cgroups removed", first(cli, "container: cgroups removed")),
    ("-> container ran, unmount asked", first(daemon, "request req=Unmount")),
    ("-> unmounted", first(daemon, "unmounted mountpoint")),
    ("-> CLI exit", t1),
]
prev, parts = t0, []
for name, t in marks:
    if t is None:
        parts.append(f"{name}: ?")
        continue
    parts.append(f"{name} {1000 * (t - prev):.1f} ms")
    prev = t
print(f"| {img} | {1000 * (t1 - t0):.0f} ms | " + "; ".join(parts) + " |")
PY
}
echo "| image | traced warm run | phases |" >"$WORK/trace.md"
echo "|---|---|---|" >>"$WORK/trace.md"
for img in "${IMGS[@]}"; do trace "$img" >>"$WORK/trace.md"; done

echo
echo "Warm start, median of $RUNS (seconds; $FORMAT images; skiff $SKIFF)"
echo
echo "| image | skiff run via daemon | skiff run standalone | runc run | daemon ÷ runc | standalone ÷ runc |"
echo "|---|---|---|---|---|---|"
tail -n +2 "$WORK/medians.tsv" | awk -F'\t' '{printf "| %s | %.3f | %.3f | %.3f | %.2f× | %.2f× |\n", $1, $2, $3, $4, $2/$4, $3/$4}'
if [ -n "$BASE" ]; then
    echo
    echo "Baseline $BASE through its own daemon, in the same rounds:"
    echo
    echo "| image | baseline via daemon | skiff via daemon | runc run | baseline ÷ runc | skiff ÷ runc |"
    echo "|---|---|---|---|---|---|"
    tail -n +2 "$WORK/medians.tsv" | awk -F'\t' '{printf "| %s | %.3f | %.3f | %.3f | %.2f× | %.2f× |\n", $1, $5, $2, $4, $5/$4, $2/$4}'
fi
echo
echo "daemon RSS after the runs: ${rss_runs} MB (peak ${hwm_runs} MB)"
echo
cat "$WORK/trace.md"
exit 0
}
