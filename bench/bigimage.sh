#!/bin/bash
# Big images (issues 10 and 13): a 100,000-file image, mounted standalone and through
# `skiff daemon`. Reports, per form (gzip with a published checkpoint index, eStargz):
# `skiff mount` time (until the mount point answers) from an empty root (the index
# fetched from the registry) and again from the same root (indexes in the local
# store), and the mounting process's RSS after the mount and after
# `find MNT -type f | wc -l` plus an lstat of every file. Then the daemon: its RSS with
# the big image mounted (first, alone), after the same walk over it, and with 10 images
# mounted (+ bench/{python,gcc,node}:{gzip,esgz,zstd}); the mount time of a second
# mount of the big image (its tree already in memory).
#
#   bash bench/bigimage.sh [--files 100000] [--mem-cache-mib 256] [--cache /var/tmp/skiff-bench]
#        [--skiff PATH]
#
# --mem-cache-mib is the daemon's in-memory chunk cache bound (its default is 256): the
# prefetch of the nine bench images alone fills it, so the daemon's RSS is that much
# plus what the images themselves take.
#
# Needs root, umoci, skopeo, jq, docker-registry; for the daemon part, the images of
# bench/coldstart.sh in --cache (without them the daemon mounts only the big image).
# The image (400 directories of small files, text of varied length) is built once into
# CACHE/oci:big-N and pushed to the bench registry as bench/big-N:{gzip,esgz,zstd}
# (bench/lib/images.sh); gzip and esgz are measured.
{
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
FILES=100000 CACHE=/var/tmp/skiff-bench SKIFF= MEM_CACHE=256
while [ $# -gt 0 ]; do
    case $1 in
    --files) FILES=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --mem-cache-mib) MEM_CACHE=$2; shift 2 ;;
    --skiff) SKIFF=$2; shift 2 ;;
    -h | --help) awk 'NR>1 && /^\{/{exit} NR>1{sub(/^# ?/,""); print}' "$0"; exit 0 ;;
    *) echo "bigimage.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bigimage.sh: needs root" >&2; exit 1; }
[ -n "$SKIFF" ] || SKIFF=$REPO/target/release/skiff
[ -x "$SKIFF" ] || { echo "bigimage.sh: no skiff at $SKIFF (cargo build --release -p skiff)" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
WORK=$(mktemp -d /tmp/skiff-bigimage.XXXXXX)
PIDS=()
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
# shellcheck source=lib/images.sh
. "$HERE/lib/images.sh"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ -S "$WORK/d/daemon.sock" ] && timeout 30 "$SKIFF" --root "$WORK/d" daemon stop --force >/dev/null 2>&1
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    # A SIGTERMed daemon leaves its keeper holding the mounts (by design): end it too,
    # or it outlives the script with dead connections.
    for f in "$WORK"/*/daemon-keeper.pid; do
        [ -f "$f" ] && kill -KILL "$(cat "$f" 2>/dev/null)" 2>/dev/null
    done
    sleep 0.5
    mount | awk -v d="$WORK/" 'index($3,d)==1{print $3}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

NAME=big-$FILES
# build_big: CACHE/oci:NAME, one layer of FILES small files in 400 directories.
build_big() {
    [ -f "$CACHE/stamps/$NAME" ] && return 0
    log "building $NAME: $FILES files"
    local u=$CACHE/build/u-$NAME
    rm -rf "$u"
    mkdir -p "$CACHE/stamps"
    [ -f "$CACHE/oci/index.json" ] || umoci init --layout "$CACHE/oci"
    umoci new --image "$CACHE/oci:$NAME"
    umoci unpack --image "$CACHE/oci:$NAME" "$u" >/dev/null
    python3 - "$u/rootfs" "$FILES" <<'PY'
import os, random, sys
root, files = sys.argv[1], int(sys.argv[2])
rng = random.Random(13)
words = ["alpha", "beta", "gamma", "delta", "lib", "share", "module", "data", "x86_64", "config"]
dirs = 400
for i in range(files):
    d = os.path.join(root, "usr", "share", "pkg%03d" % (i % dirs), "sub%d" % (i % 7))
    if i < dirs * 7:
        os.makedirs(d, exist_ok=True)
    body = " ".join(rng.choice(words) for _ in range(rng.randint(10, 200)))
    with open(os.path.join(d, "file-%06d-%s.txt" % (i, rng.choice(words))), "w") as f:
        f.write(body + "\n")
PY
    umoci repack --image "$CACHE/oci:$NAME" "$u"
    rm -rf "$u"
    touch "$CACHE/stamps/$NAME"
}

# mount_standalone ROOT REF MNT: `skiff mount` in the foreground (in the background
# here); sets MOUNT_PID and MOUNT_S (seconds until the mount point answers).
mount_standalone() {
    local t0 t1
    mkdir -p "$3"
    t0=$(now_s)
    SKIFF_NO_DAEMON=1 "$SKIFF" --root "$1" mount "$2" "$3" >"$WORK/mount.log" 2>&1 &
    MOUNT_PID=$!
    wait_mounted "$3" || { cat "$WORK/mount.log" >&2; return 1; }
    t1=$(now_s)
    MOUNT_S=$(echo "$t1 - $t0" | bc)
}

# walk MNT: every regular file listed and lstat'ed; prints the count.
walk() {
    local n
    n=$(find "$1" -type f | wc -l)
    find "$1" -type f -print0 | xargs -0 stat -c %s >/dev/null
    echo "$n"
}

unmount_standalone() { # MNT PID
    fusermount3 -u "$1" 2>/dev/null || umount "$1"
    wait "$2" 2>/dev/null || true
}

start_registry
log "registry $REG"
build_big
ref=$REG/bench/$NAME
# :gzip with its published index, :esgz, :zstd, as for the other bench images
push_variant "$NAME"

echo
echo "Standalone \`skiff mount\` of $NAME ($FILES files; skiff $SKIFF)"
echo
echo "| form | mount, empty root (s) | mount, indexes stored (s) | RSS after mount (MB) | files found | RSS after find + stat (MB) | peak RSS (MB) |"
echo "|---|---|---|---|---|---|---|"
for fmt in gzip esgz; do
    root=$WORK/root-$fmt mnt=$WORK/mnt-$fmt
    mount_standalone "$root" "$ref:$fmt" "$mnt"
    cold=$MOUNT_S
    unmount_standalone "$mnt" "$MOUNT_PID"
    mount_standalone "$root" "$ref:$fmt" "$mnt"
    warm=$MOUNT_S
    sleep 0.5
    rss0=$(rss_mb "$MOUNT_PID")
    n=$(walk "$mnt")
    rss1=$(rss_mb "$MOUNT_PID") hwm=$(rss_mb "$MOUNT_PID" VmHWM)
    printf '| %s | %.3f | %.3f | %s | %s | %s | %s |\n' "$fmt" "$cold" "$warm" "$rss0" "$n" "$rss1" "$hwm"
    unmount_standalone "$mnt" "$MOUNT_PID"
done

mkdir -p "$WORK/d"
RUST_LOG=info,fuser=warn start_daemon "$WORK/d" --mem-cache-mib "$MEM_CACHE"
base=$(rss_mb "$DAEMON_PID")
# dmount REF DIR: a mount through the daemon; sets MOUNT_S.
dmount() {
    local t0 t1
    mkdir -p "$2"
    t0=$(now_s)
    "$SKIFF" --root "$WORK/d" mount "$1" "$2" >"$WORK/dmount.log" 2>&1 || { cat "$WORK/dmount.log" >&2; exit 1; }
    t1=$(now_s)
    MOUNT_S=$(echo "$t1 - $t0" | bc)
}
# The big image first, alone, so that what it adds is not mixed with the prefetch of
# the others.
dmount "$ref:gzip" "$WORK/dm/big"
big_mount_s=$MOUNT_S
sleep 0.5
rss_big=$(rss_mb "$DAEMON_PID")
# a second mount of it: its merged tree is already in the daemon's memory
dmount "$ref:gzip" "$WORK/dm/again"
again_s=$MOUNT_S
"$SKIFF" --root "$WORK/d" umount "$WORK/dm/again" >/dev/null 2>&1 || true
n=$(walk "$WORK/dm/big")
rss_walk=$(rss_mb "$DAEMON_PID")
grep -o 'image ready in memory.*' "$WORK/daemon-d.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -1 >"$WORK/big-memory.txt" || true
refs=()
for img in python gcc node; do
    for fmt in gzip esgz zstd; do
        registry_has "$REG/bench/$img:$fmt" && refs+=("$REG/bench/$img:$fmt")
    done
done
i=0
for r in "${refs[@]}"; do
    i=$((i + 1))
    dmount "$r" "$WORK/dm/$i"
done
sleep 2
rss_all=$(rss_mb "$DAEMON_PID") hwm=$(rss_mb "$DAEMON_PID" VmHWM)
echo
echo "\`skiff daemon --mem-cache-mib $MEM_CACHE\` (RSS in MB): idle ${base}; $NAME:gzip mounted ${rss_big}"
echo "(+$(echo "$rss_big - $base" | bc)); after find + stat of its $n files ${rss_walk} (+$(echo "$rss_walk - $base" | bc));"
echo "with $((${#refs[@]} + 1)) images mounted ${rss_all} (peak ${hwm})."
printf 'mount of %s:gzip through the daemon (cold root): %.3f s; a second mount of it: %.3f s\n' \
    "$NAME" "$big_mount_s" "$again_s"
echo "the daemon's log: $(cat "$WORK/big-memory.txt")"
exit 0
}
