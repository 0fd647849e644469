#!/bin/sh
# Warm, local start-up cost: `skiff run --rootfs` vs `runc run` on the same unpacked
# umoci bundle (busybox, `true`), N runs each, interleaved. Prints ms/run and the ratio.
# Usage: bench/run_vs_runc.sh [N]   (SKIFF=path/to/skiff to pick a build; needs root,
# umoci, runc, busybox-static, jq)
set -eu
N=${1:-50}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SKIFF=${SKIFF:-$HERE/target/debug/skiff}
W=$(mktemp -d /tmp/skiff-bench-run.XXXXXX)
trap 'rm -rf "$W"' EXIT

umoci init --layout "$W/L" >/dev/null
umoci new --image "$W/L:t" >/dev/null
umoci unpack --image "$W/L:t" "$W/U" >/dev/null
mkdir -p "$W/U/rootfs/bin" "$W/U/rootfs/etc"
cp /bin/busybox "$W/U/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$W/U/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$W/U/rootfs/etc/passwd"
echo 'root:x:0:' > "$W/U/rootfs/etc/group"
umoci repack --image "$W/L:t" "$W/U" >/dev/null
umoci unpack --image "$W/L:t" "$W/B" >/dev/null
# runc here cannot raise RLIMIT_NOFILE above the host's hard limit (no CAP_SYS_RESOURCE).
HARD=$(ulimit -Hn)
jq --argjson h "$HARD" '.process.terminal=false | .process.args=["true"]
    | .process.rlimits=[{"type":"RLIMIT_NOFILE","hard":$h,"soft":$h}]' \
    "$W/B/config.json" > "$W/c.json" && mv "$W/c.json" "$W/B/config.json"

now() { date +%s%N; }
skiff_total=0; runc_total=0
i=0
while [ $i -lt "$N" ]; do
    t0=$(now); "$SKIFF" --root "$W/state" run --rm --rootfs "$W/B/rootfs" true; t1=$(now)
    runc run --bundle "$W/B" "skiff-bench-$$-$i" </dev/null; t2=$(now)
    skiff_total=$((skiff_total + t1 - t0)); runc_total=$((runc_total + t2 - t1))
    i=$((i + 1))
done
awk -v s="$skiff_total" -v r="$runc_total" -v n="$N" 'BEGIN {
    printf "runs: %d\nskiff run: %.2f ms/run\nrunc run:  %.2f ms/run\nratio skiff/runc: %.2f\n",
        n, s / n / 1e6, r / n / 1e6, s / r }'
