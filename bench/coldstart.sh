#!/bin/bash
# Cold-start benchmark (issue 6): time from command start to container exit, and bytes
# fetched over an emulated WAN link, for HelloBench-style commands on images built
# from Debian packages, for full pull, podman, stargz-snapshotter and skiff.
#
#   bash bench/coldstart.sh [--rate-mbit 100] [--rtt-ms 20] [--runs 3]
#        [--images python,gcc,node] [--tools fullpull,podman,stargz,skiff]
#        [--cache /var/tmp/skiff-bench] [--skiff PATH] [--out bench/RESULTS.md]
#        [--mirror http://deb.debian.org/debian] [--no-calibrate] [--merge-previous]
#
# --merge-previous: also report the previous run's rows (CACHE/last-results.tsv) of the
# tools not run now, e.g. `--tools skiff --merge-previous` after a skiff rebuild.
#
# Needs root. First run builds the images (debootstrap + chroot apt-get, a few
# minutes) into --cache, with a registry whose storage also lives there; reruns reuse
# both. All benchmark traffic stays on loopback: registry 127.0.0.1:R (unshaped, used
# to push) and shaper 127.0.0.1:S (bench/shaper.py: delay + rate + byte counters) that
# every system under test pulls through. Everything started here (registry, shaper,
# containerd/stargz daemons, mounts, podman storage, temp dirs) is stopped and removed
# on exit, Ctrl-C included.
#
# Timing: for the peers, the total their script in /work/shared/peers reports (from the
# first registry request to container exit; stargz's daemon start-up is not counted, as
# in a real deployment it is already running); for skiff, the wall time of
# `skiff run --rm`. Bytes: registry -> client bytes counted by the shaper during the run.
# The whole script is one { ... } block so bash parses it before running: editing the
# file during a long run cannot change what the run executes.
{
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-/work/shared/peers}
# No network for the container, as `ctr run` and `runc run` give it: skiff's default
# bridge (CNI) would add its setup to every run and put interfaces on the host.
export SKIFF_NETWORK=none
RATE=100 RTT=20 RUNS=3 IMAGES=python,gcc,node TOOLS=fullpull,podman,stargz,skiff
CACHE=/var/tmp/skiff-bench OUT=$HERE/RESULTS.md MIRROR=http://deb.debian.org/debian
CALIBRATE=1 SKIFF= MERGE=0
while [ $# -gt 0 ]; do
    case $1 in
    --rate-mbit) RATE=$2; shift 2 ;;
    --rtt-ms) RTT=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --skiff) SKIFF=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --no-calibrate) CALIBRATE=0; shift ;;
    --merge-previous) MERGE=1; shift ;;
    -h | --help) awk 'NR>1 && /^# The whole script/{exit} NR>1{sub(/^# ?/,""); print}' "$0"; exit 0 ;;
    *) echo "coldstart.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "coldstart.sh: needs root" >&2; exit 1; }
if [ -z "$SKIFF" ]; then
    for s in "$REPO/target/release/skiff" "$REPO/target/debug/skiff"; do
        [ -x "$s" ] && { SKIFF=$s; break; }
    done
fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
has_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }

# Tools the suite needs; Debian packages for the missing ones.
need=()
for t in debootstrap:debootstrap umoci:umoci skopeo:skopeo runc:runc jq:jq bc:bc curl:curl \
    docker-registry:docker-registry; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
has_tool podman && ! command -v podman >/dev/null && need+=(podman)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if has_tool stargz && ! command -v containerd-stargz-grpc >/dev/null; then
    log "building containerd-stargz-grpc ($PEERS/stargz-setup.sh)"
    bash "$PEERS/stargz-setup.sh" >&2
fi

mkdir -p "$CACHE/stamps" "$CACHE/registry"
WORK=$(mktemp -d /tmp/skiff-coldstart.XXXXXX)
PIDS=()
# shellcheck source=lib/images.sh
. "$HERE/lib/images.sh"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # podman: its containers and images, then its storage mounts
    if [ -d "$WORK/podman" ]; then
        CONTAINERS_STORAGE_CONF=$WORK/podman/storage.conf CONTAINERS_CONF=$WORK/podman/containers.conf \
            CONTAINERS_REGISTRIES_CONF=$WORK/podman/registries.conf podman rm -af >/dev/null 2>&1
        CONTAINERS_STORAGE_CONF=$WORK/podman/storage.conf CONTAINERS_CONF=$WORK/podman/containers.conf \
            CONTAINERS_REGISTRIES_CONF=$WORK/podman/registries.conf podman rmi -af >/dev/null 2>&1
    fi
    # stargz: daemons the peer script left (it stops them itself unless interrupted)
    for p in "$WORK"/sgz/*.pid; do
        [ -f "$p" ] && kill -TERM "$(cat "$p")" 2>/dev/null
    done
    runc list -q 2>/dev/null | grep -E '^(fullpull-|bench-floor-)' | xargs -r -n1 runc delete -f 2>/dev/null
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

# free_port, wait_port, start_registry (lib/common.sh); start_shaper, counters,
# run_one (lib/link.sh); the command of each image (lib/commands.sh)
. "$HERE/lib/common.sh"
. "$HERE/lib/link.sh"
. "$HERE/lib/commands.sh"

# Probe: can this skiff build run an image (`skiff run IMAGE CMD`)? Until the lead's
# wiring lands it says "not wired in yet"; any other failure still runs the rows (and
# the table shows the failures).
skiff_can_run_images() {
    [ -n "$SKIFF" ] && [ -x "$SKIFF" ] || return 1
    "$SKIFF" --root "$WORK/skiff-probe" run --rm "$REG/bench/$1:esgz" true \
        >"$WORK/skiff-probe.log" 2>&1 </dev/null && return 0
    ! grep -qiE 'not wired|unrecognized|unexpected argument|requires --rootfs' "$WORK/skiff-probe.log"
}

# ---- floor: what the program really reads ----------------------------------------------
# Unpacks IMAGE locally, zeroes every file's atime, runs the command once with runc and
# sums the files it touched (relatime updates an atime older than ctime): their size, and
# their gzip -6 size (what a lazy loader must move at least). Then times runc run on the
# unpacked bundle (RUNS times): the warm "setup + program" term of the floor.
floor_one() {
    local img=$1 b=$WORK/floor/$1 i t0 t1
    image_cmd "$img"
    umoci unpack --image "$CACHE/oci:$img" "$b" >/dev/null
    local args; args=$(printf '%s\n' "${CMD[@]}" | jq -R . | jq -sc .)
    jq --argjson a "$args" '.process.terminal=false | .process.args=$a' "$b/config.json" >"$b/c.json"
    mv "$b/c.json" "$b/config.json"
    find "$b/rootfs" -xdev -type f -exec touch -a -d @0 {} +
    runc run -b "$b" "bench-floor-$$" </dev/null >/dev/null 2>&1 || true
    find "$b/rootfs" -xdev -type f -printf '%A@ %s %p\n' | awk '$1 > 1 {print $2, $3}' >"$WORK/floor-$img.files"
    local raw gz=0 f
    raw=$(awk '{s+=$1} END {print s+0}' "$WORK/floor-$img.files")
    while read -r _ f; do gz=$((gz + $(gzip -6 -c "$f" | wc -c))); done <"$WORK/floor-$img.files"
    local times=()
    for i in $(seq "$RUNS"); do
        t0=$(date +%s.%N)
        runc run -b "$b" "bench-floor-$$-$i" </dev/null >/dev/null 2>&1 || true
        t1=$(date +%s.%N)
        times+=("$(echo "$t1 - $t0" | bc)")
    done
    local runc_med
    runc_med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$img" "$(wc -l <"$WORK/floor-$img.files")" "$raw" "$gz" "$runc_med" >>"$WORK/floor.tsv"
    rm -rf "$b"
}

# ---- link calibration: is the Python shaper good enough? ---------------------------------
calibrate() {
    local blob digest size t0 t1 repo=bench/$1
    digest=$(skopeo inspect --raw --tls-verify=false "docker://$REG/$repo:gzip" | jq -r '.layers | max_by(.size) | .digest')
    size=$(skopeo inspect --raw --tls-verify=false "docker://$REG/$repo:gzip" | jq -r '.layers | max_by(.size) | .size')
    blob="/v2/$repo/blobs/$digest"
    local line t
    for target in RAW LINK; do
        local hp=${!target}
        t=$(curl -sf -o /dev/null -w '%{time_total}' "http://$hp$blob")
        line+=$(printf '%s: %s MB blob in %.2f s (%.0f Mbit/s), ' "$target" "$(echo "scale=1; $size/1000000" | bc)" \
            "$t" "$(echo "$size * 8 / $t / 1000000" | bc -l)")
        t=$(curl -sf -o /dev/null -o /dev/null -w '%{time_total} ' "http://$hp/v2/" "http://$hp/v2/")
        line+=$(echo "$t" | awk '{printf "GET /v2/ new connection %.0f ms, reused %.0f ms. ", $1*1000, $2*1000}')
    done
    echo "$line" >"$WORK/calibration.txt"
    log "calibration: $line"
}

# ======================================================================================
mkdir -p "$WORK/log"
IFS=, read -r -a IMGS <<<"$IMAGES"
for img in "${IMGS[@]}"; do image_packages "$img" >/dev/null || { echo "unknown image $img" >&2; exit 2; }; done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_registry
log "registry $REG (storage $CACHE/registry)"
[ -n "$SKIFF" ] || { echo "coldstart.sh: no skiff binary (cargo build --release -p skiff, or --skiff)" >&2; exit 1; }
build_base
for img in "${IMGS[@]}"; do build_variant "$img"; push_variant "$img"; done

start_shaper LINK "$RATE" "$(echo "$RTT / 2" | bc -l)"
start_shaper RAW 0 0
log "shaped link $LINK -> $REG: ${RATE} Mbit/s, ${RTT} ms RTT"
[ "$CALIBRATE" = 1 ] && calibrate "${IMGS[0]}"

SKIFF_ROWS=1
if has_tool skiff && ! skiff_can_run_images "${IMGS[0]}"; then
    SKIFF_ROWS=0
    log "skiff rows: n/a ($SKIFF cannot run an image yet: $(tail -1 "$WORK/skiff-probe.log"))"
fi
rm -rf "$WORK/skiff-probe"

for img in "${IMGS[@]}"; do
    log "floor for $img: files the command reads"
    floor_one "$img"
    for fmt in gzip esgz zstd; do
        printf '%s\t%s\t%s\n' "$img" "$fmt" "$(image_size "$REG/bench/$img:$fmt")" >>"$WORK/sizes.tsv"
    done
done

for n in $(seq "$RUNS"); do
    for img in "${IMGS[@]}"; do
        image_cmd "$img"
        ref=$LINK/bench/$img
        log "run $n/$RUNS: $img (${CMD_DESC[$img]})"
        has_tool fullpull && run_one "$img" fullpull "$n" env FP_DIR="$WORK/fullpull" bash "$PEERS/fullpull-run.sh" "$ref:gzip" "${CMD[@]}"
        rm -rf "$WORK/fullpull"
        has_tool podman && run_one "$img" podman "$n" env PODMAN_DIR="$WORK/podman" bash "$PEERS/podman-run.sh" "$ref:gzip" "${CMD[@]}"
        has_tool stargz && command -v containerd-stargz-grpc >/dev/null &&
            run_one "$img" stargz "$n" env SGZ_DIR="$WORK/sgz" bash "$PEERS/stargz-run.sh" "$ref:esgz" "${CMD[@]}"
        if has_tool skiff && [ "$SKIFF_ROWS" = 1 ]; then
            # Without a profile: --no-prefetch, so a profile published below is not used.
            for fmt in gzip esgz zstd; do
                rm -rf "$WORK/skiff-cold"
                run_one "$img" "skiff-$fmt" "$n" "$SKIFF" --root "$WORK/skiff-cold" run --rm --no-prefetch "$ref:$fmt" "${CMD[@]}"
            done
            # With a profile: recorded once (unmeasured) and published beside the image;
            # a cold run from an empty root finds it in the registry and prefetches it.
            if [ ! -f "$WORK/profile-pushed-$img" ]; then
                rm -rf "$WORK/skiff-rec-$img"
                "$SKIFF" --root "$WORK/skiff-rec-$img" run --rm --record-profile "$ref:esgz" "${CMD[@]}" >/dev/null 2>&1 </dev/null &&
                    "$SKIFF" --root "$WORK/skiff-rec-$img" profile push "$ref:esgz" >/dev/null 2>&1 </dev/null &&
                    touch "$WORK/profile-pushed-$img"
            fi
            rm -rf "$WORK/skiff-cold"
            run_one "$img" skiff-profile "$n" "$SKIFF" --root "$WORK/skiff-cold" run --rm "$ref:esgz" "${CMD[@]}"
            rm -rf "$WORK/skiff-cold"
            # warm: same root as a previous run of the same image (run once unmeasured)
            [ -d "$WORK/skiff-warm-$img" ] ||
                "$SKIFF" --root "$WORK/skiff-warm-$img" run --rm "$ref:esgz" "${CMD[@]}" >/dev/null 2>&1 </dev/null || true
            run_one "$img" skiff-warm "$n" "$SKIFF" --root "$WORK/skiff-warm-$img" run --rm "$ref:esgz" "${CMD[@]}"
        fi
    done
done

# ---- report ----------------------------------------------------------------------------
touch "$WORK/results.tsv"
if [ "$MERGE" = 1 ] && [ -f "$CACHE/last-results.tsv" ]; then
    # previous rows of the tools not run this time (tool "skiff-esgz" belongs to "skiff")
    awk -F'\t' -v tools=",$TOOLS," '{ t = $2; sub(/-.*/, "", t); if (index(tools, "," t ",") == 0) print }' \
        "$CACHE/last-results.tsv" >>"$WORK/results.tsv"
    log "merged $(awk -F'\t' -v tools=",$TOOLS," '{ t = $2; sub(/-.*/, "", t); if (index(tools, "," t ",") == 0) n++ } END {print n+0}' "$CACHE/last-results.tsv") rows of other tools from the previous run"
fi
# raw rows first: a failing report must not lose a long run
cp "$WORK/results.tsv" "$CACHE/last-results.tsv"
cp "$WORK/floor.tsv" "$CACHE/last-floor.tsv"
cp "$WORK/sizes.tsv" "$CACHE/last-sizes.tsv"
MACHINE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r)"
python3 "$HERE/lib/report.py" --results "$WORK/results.tsv" --floor "$WORK/floor.tsv" --sizes "$WORK/sizes.tsv" \
    --rate-mbit "$RATE" --rtt-ms "$RTT" --runs "$RUNS" --machine "$MACHINE" \
    --load "1/5/15-min load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)" \
    --calibration "$(cat "$WORK/calibration.txt" 2>/dev/null || echo not run)" \
    --skiff "$SKIFF ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo ?))" \
    --skiff-rows "$SKIFF_ROWS" --tools "$TOOLS" \
    --commands "$(for i in "${IMGS[@]}"; do printf '%s: %s; ' "$i" "${CMD_DESC[$i]}"; done)" \
    --out "$OUT"
log "wrote $OUT (raw rows: $CACHE/last-results.tsv)"
exit 0
}
