#!/bin/bash
# Where a warm `skiff run` through `skiff daemon` spends its time (issue 10): medians of
# RUNS interleaved runs of `skiff run --rm python-image true`, of the same with
# `python3 -c 'print(1)'`, and of `runc run` of the unpacked bundle with each command
# (python − true is the program, `true` the fixed cost of a container start); then one
# traced python run (the CLI's and the daemon's debug lines).
#
#   bash bench/daemon-breakdown.sh SKIFF [RUNS]
#
# Needs what bench/daemon.sh needs, and its unpacked bundle CACHE/bundles/python (run
# daemon.sh once first).
set -euo pipefail
SKIFF=$1 RUNS=${2:-7}
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=/var/tmp/skiff-bench
WORK=$(mktemp -d /tmp/skiff-bd.XXXXXX)
PIDS=()
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
. "$HERE/lib/common.sh"
export SKIFF_NETWORK=none
cleanup() {
  set +e
  timeout 30 "$SKIFF" --root "$WORK/d" daemon stop --force >/dev/null 2>&1
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  mount | awk -v d="$WORK/" 'index($3,d)==1{print $3}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
start_registry
mkdir -p "$WORK/d"
RUST_LOG=info,skiff=debug,fuser=warn start_daemon "$WORK/d"
ref=$REG/bench/python:esgz
b=$CACHE/bundles/python
cp -a "$b/config.json" "$WORK/config.json.orig"
setargs() { jq --argjson a "$1" '.process.args=$a' "$WORK/config.json.orig" > "$b/config.json"; }
t() { local t0 t1; t0=$(now_s); "$@" >/dev/null 2>&1 </dev/null; t1=$(now_s); echo "$t1 - $t0" | bc; }
"$SKIFF" --root "$WORK/d" run --rm "$ref" python3 -c 'print(1)' >/dev/null
sleep 20
: > "$WORK/dt"; : > "$WORK/dp"; : > "$WORK/rt"; : > "$WORK/rp"
for n in $(seq "$RUNS"); do
  t "$SKIFF" --root "$WORK/d" run --rm "$ref" true >> "$WORK/dt"
  t "$SKIFF" --root "$WORK/d" run --rm "$ref" python3 -c 'print(1)' >> "$WORK/dp"
  setargs '["true"]'; t runc run -b "$b" "bd-$$-t$n" >> "$WORK/rt"
  setargs '["python3","-c","print(1)"]'; t runc run -b "$b" "bd-$$-p$n" >> "$WORK/rp"
done
cp "$WORK/config.json.orig" "$b/config.json"
echo "skiff $SKIFF: daemon true $(median < $WORK/dt) python $(median < $WORK/dp) | runc true $(median < $WORK/rt) python $(median < $WORK/rp)"
# one traced python run: CLI debug + daemon log
mark=$(wc -l < "$WORK/daemon-d.log")
t0=$(now_s)
RUST_LOG=skiff=debug "$SKIFF" --root "$WORK/d" run --rm "$ref" python3 -c 'print(1)' </dev/null >/dev/null 2>"$WORK/cli.log"
t1=$(now_s)
echo "traced total: $(echo "$t1 - $t0" | bc)  start $t0"
sed 's/\x1b\[[0-9;]*m//g' "$WORK/cli.log" | grep -E "using the daemon|mounted the view|unmounted the view" 
tail -n +"$((mark + 1))" "$WORK/daemon-d.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -E "request req=|mounted|unmounted" | cut -c1-200
