#!/bin/bash
# Skiff mount vs local disk vs fuse-overlayfs, in one run:
#  1. sequential read of a 512 MiB file (skiff: chunk cache warm, page cache dropped)
#  2. find + stat walk over ~30,000 files
# Usage: bench/fs-bench.sh [SKIFF_BINARY] [ROUNDS]   (root; needs fuse-overlayfs, python3)
# Each measurement is taken ROUNDS times (default 5), the three systems interleaved, and
# the median is printed: single reads with the page cache dropped vary 3x on a shared disk.
set -euo pipefail
SKIFF=${1:-target/debug/skiff}
ROUNDS=${2:-5}
W=$(mktemp -d /tmp/skiff-bench.XXXXXX)
cleanup() {
  for m in "$W/skiff" "$W/ovl"; do mountpoint -q "$m" && { fusermount3 -u "$m" || umount -l "$m"; }; done
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/local" "$W/skiff" "$W/ovl" "$W/upper" "$W/ovlupper" "$W/ovlwork" "$W/root"
head -c $((512 << 20)) /dev/urandom > "$W/local/big.bin"
python3 - "$W/local" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(300):
    p = os.path.join(root, "tree", f"d{d:03}")
    os.makedirs(p)
    for f in range(100):
        with open(os.path.join(p, f"f{f:03}"), "wb") as fh:
            fh.write(b"x" * 100)
PY
tar -C "$W/local" -cf "$W/layer.tar" .
SKIFF_ROOT="$W/root" "$SKIFF" mount -d --layer "$W/layer.tar" --upper "$W/upper" "$W/skiff" >/dev/null
fuse-overlayfs -o "lowerdir=$W/local,upperdir=$W/ovlupper,workdir=$W/ovlwork" "$W/ovl"
cat "$W/skiff/big.bin" > /dev/null   # fetch: fills skiff's chunk cache
cat "$W/skiff/big.bin" > /dev/null   # fully cached now: assembled once for passthrough
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A R W2 RS WS
for _ in $(seq "$ROUNDS"); do
  for n in local skiff ovl; do
    drop; RS[$n]="${RS[$n]:-} $(t cat "$W/$n/big.bin")"
    drop; WS[$n]="${WS[$n]:-} $(t sh -c "find '$W/$n/tree' -exec stat -c '%s %Y' {} +")"
  done
done
for n in local skiff ovl; do
  # shellcheck disable=SC2086
  R[$n]=$(median ${RS[$n]}); W2[$n]=$(median ${WS[$n]})
done
echo "medians of $ROUNDS rounds; every round:"
for n in local skiff ovl; do echo "  $n: read${RS[$n]}; walk${WS[$n]}"; done
printf "%-16s %10s %10s %12s\n" "" local skiff fuse-overlayfs
printf "%-16s %10.3f %10.3f %12.3f\n" "read 512MiB (s)" "${R[local]}" "${R[skiff]}" "${R[ovl]}"
printf "%-16s %10.3f %10.3f %12.3f\n" "walk 30k (s)" "${W2[local]}" "${W2[skiff]}" "${W2[ovl]}"
echo "ratios skiff/local: read $(echo "${R[skiff]} / ${R[local]}" | bc -l | cut -c1-5)  walk $(echo "${W2[skiff]} / ${W2[local]}" | bc -l | cut -c1-5)"
echo "ratios skiff/fuse-overlayfs: read $(echo "${R[skiff]} / ${R[ovl]}" | bc -l | cut -c1-5)  walk $(echo "${W2[skiff]} / ${W2[ovl]}" | bc -l | cut -c1-5)"
SKIFF_ROOT="$W/root" "$SKIFF" stats "$W/skiff"
