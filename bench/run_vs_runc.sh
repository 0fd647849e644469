#!/bin/sh
# Warm start-up cost: `skiff run --rootfs` and `skiff run IMAGE` (lazy FUSE view from a
# loopback registry, warm chunk cache) vs `runc run` on the same unpacked umoci bundle
# (busybox, `true`), N runs each, interleaved. Prints ms/run and the ratios.
# Usage: bench/run_vs_runc.sh [N]   (SKIFF=path/to/skiff to pick a build; needs root,
# umoci, runc, busybox-static, jq, skopeo, docker-registry)
set -eu
N=${1:-50}
HERE=$(cd "$(dirname "$0")/.." && pwd)
# No network for the container, as `ctr run` and `runc run` give it: skiff's default
# bridge (CNI) would add its setup to every run and put interfaces on the host.
export SKIFF_NETWORK=none
SKIFF=${SKIFF:-$HERE/target/debug/skiff}
W=$(mktemp -d /tmp/skiff-bench-run.XXXXXX)
REG_PID=
trap '[ -n "$REG_PID" ] && kill $REG_PID 2>/dev/null; rm -rf "$W"' EXIT

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

# The same image in a loopback registry, for the lazy path.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$W/registry" "$PORT" > "$W/registry.yml"
docker-registry serve "$W/registry.yml" >/dev/null 2>&1 &
REG_PID=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false "oci:$W/L:t" "docker://127.0.0.1:$PORT/bench/busybox:t"
IMAGE=127.0.0.1:$PORT/bench/busybox:t
"$SKIFF" --root "$W/state" run --rm "$IMAGE" true   # warm the index store and chunk cache

now() { date +%s%N; }
skiff_total=0; image_total=0; runc_total=0
i=0
while [ $i -lt "$N" ]; do
    t0=$(now); "$SKIFF" --root "$W/state" run --rm --rootfs "$W/B/rootfs" true; t1=$(now)
    runc run --bundle "$W/B" "skiff-bench-$$-$i" </dev/null; t2=$(now)
    "$SKIFF" --root "$W/state" run --rm "$IMAGE" true; t3=$(now)
    skiff_total=$((skiff_total + t1 - t0)); runc_total=$((runc_total + t2 - t1))
    image_total=$((image_total + t3 - t2))
    i=$((i + 1))
done
awk -v s="$skiff_total" -v r="$runc_total" -v m="$image_total" -v n="$N" 'BEGIN {
    printf "runs: %d\nskiff run --rootfs:    %.2f ms/run\nskiff run IMAGE (warm): %.2f ms/run\nrunc run:              %.2f ms/run\n",
        n, s / n / 1e6, m / n / 1e6, r / n / 1e6
    printf "ratio skiff --rootfs/runc: %.2f\nratio skiff IMAGE warm/runc: %.2f\n", s / r, m / r }'
