#!/bin/bash
# Cold-start one image with containerd and the skiff snapshotter (lazy pull) and
# print time-to-exit: the counterpart of /work/shared/peers/stargz-run.sh for
# bench/containerd.sh.  Usage: SKIFF=PATH skiff-ctr-run.sh IMAGE [CMD...]
# Each run: fresh private containerd + `skiff daemon` (proxy snapshotter "skiff") under
# $SK_DIR (default /tmp/ctd-skiff) with empty caches; timed = rpull + run until exit
# (the daemons' start-up is not counted, as in stargz-run.sh). Localhost registries
# are plain http. Everything started here is stopped on exit.
# SK_TRACE=DIR keeps a trace of the run in DIR/skiff-IMAGE-PID/: the daemon's log at
# RUST_LOG=debug (each gRPC call and registry request, timestamped), containerd's at
# debug level, and the wall-clock marks of rpull and run (times.txt).
set -euo pipefail
IMAGE=${1:?usage: $0 IMAGE [CMD...]}; shift
SKIFF=${SKIFF:?SKIFF: the skiff binary}
D=${SK_DIR:-/tmp/ctd-skiff}
A=$D/ctd.sock
keep_trace() {
    [ -n "${SK_TRACE:-}" ] && [ -n "${t0:-}" ] || return 0
    local to t
    t=${IMAGE##*/}
    to=$SK_TRACE/skiff-${t%%:*}-$$
    mkdir -p "$to"
    cp "$D/skiff.log" "$D/containerd.log" "$to/" 2>/dev/null || true
    for t in "${t0:-}" "${t1:-}" "${t2:-}"; do
        if [ -n "$t" ]; then date -u -d "@$t" +%T.%N; fi
    done | paste -d' ' - <(printf '%s\n' "rpull start" "rpull end, run start" "run end") >"$to/times.txt"
}
stop() {
    keep_trace
    # containerd first (its containers are gone after `run --rm`), then the daemon
    # for good (`daemon stop` unmounts every view and ends its keeper)
    if [ -f "$D/containerd.pid" ]; then
        kill -TERM "$(cat "$D/containerd.pid")" 2>/dev/null && sleep 0.5
        rm -f "$D/containerd.pid"
    fi
    if [ -f "$D/skiff.pid" ]; then
        timeout 30 "$SKIFF" --root "$D/skiff" daemon stop --force >/dev/null 2>&1 ||
            kill -TERM "$(cat "$D/skiff.pid")" 2>/dev/null
        rm -f "$D/skiff.pid"
    fi
    # (the keeper may be ending on its own and remove its pid file meanwhile)
    local keeper
    keeper=$(cat "$D/skiff/daemon-keeper.pid" 2>/dev/null || true)
    [ -n "$keeper" ] && kill -TERM "$keeper" 2>/dev/null || true
    # (a view the daemon detached may still be listed for a moment)
    mount | awk -v d="$D/" 'index($3,d)==1{print $3}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
stop; rm -rf "$D"; mkdir -p "$D/skiff"
cat >"$D/config.toml" <<TOML
version = 2
root = "$D/root"
state = "$D/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$A"
[ttrpc]
  address = "$A.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/opt"
[proxy_plugins.skiff]
  type = "snapshot"
  address = "$D/skiff/snapshotter.sock"
TOML
CTD_LOG=()
if [ -n "${SK_TRACE:-}" ]; then
    export RUST_LOG=${RUST_LOG:-debug,h2=info,hyper=info,tower=info,reqwest=info}
    CTD_LOG=(--log-level debug)
fi
setsid "$SKIFF" --root "$D/skiff" daemon >"$D/skiff.log" 2>&1 &
echo $! >"$D/skiff.pid"
setsid containerd --config "$D/config.toml" "${CTD_LOG[@]}" >"$D/containerd.log" 2>&1 &
echo $! >"$D/containerd.pid"
trap stop EXIT
# (the snapshotter's socket file exists from its bind on, a moment before it accepts:
# wait until it does, or the pull's first Prepare may be refused)
accepts() { python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$1" 2>/dev/null; }
for _ in $(seq 100); do [ -S "$A" ] && accepts "$D/skiff/snapshotter.sock" && break; sleep 0.1; done
ctr -a "$A" version >/dev/null

t0=$(date +%s.%N)
ctr-remote -a "$A" images rpull --plain-http --snapshotter skiff "$IMAGE" >"$D/rpull.log"
t1=$(date +%s.%N)
# layers containerd unpacked (on disk) instead of skiff serving them lazily
unpacked=$(find "$D/skiff/snapshotter/snapshots" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
rc=0; ctr -a "$A" run --snapshotter skiff --rm "$IMAGE" "cold-$$" "$@" || rc=$?
t2=$(date +%s.%N)
echo "skiff: image=$IMAGE rpull=$(echo "$t1-$t0" | bc)s run=$(echo "$t2-$t1" | bc)s total=$(echo "$t2-$t0" | bc)s unpacked_layers=$unpacked exit=$rc" >&2
exit $rc
