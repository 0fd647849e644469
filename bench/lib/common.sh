# shellcheck shell=bash
# Helpers shared by bench/daemon.sh and bench/bigimage.sh (sourced, not run): a
# docker-registry on the cached bench storage, process memory, medians.
# Needs: CACHE, WORK, PIDS (array), log().

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# start_registry: a docker-registry serving $CACHE/registry on a free port; sets REG.
start_registry() {
    local port; port=$(free_port)
    mkdir -p "$CACHE/registry"
    cat >"$WORK/registry.yml" <<YML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $CACHE/registry}
  delete: {enabled: true}
http: {addr: "127.0.0.1:$port"}
YML
    docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port" || { cat "$WORK/registry.log" >&2; return 1; }
    REG=127.0.0.1:$port
}

# rss_mb PID [VmRSS|VmHWM]: resident memory of PID in MB (1e6 bytes).
rss_mb() { awk -v k="${2:-VmRSS}:" '$1 == k {printf "%.1f", $2 * 1024 / 1e6}' "/proc/$1/status"; }

# median: the median of the numbers on stdin.
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# now_s: the time, seconds since the epoch with nanoseconds.
now_s() { date +%s.%N; }

# wait_mounted DIR [TRIES]: until DIR is a mount point (0.01 s polls).
wait_mounted() {
    local i
    for i in $(seq "${2:-6000}"); do
        mountpoint -q "$1" && return 0
        sleep 0.01
    done
    return 1
}

# start_daemon ROOT [ARGS...]: `skiff daemon ARGS` on ROOT in the background; sets
# DAEMON_PID once its socket answers.
start_daemon() {
    local root=$1; shift
    "$SKIFF" --root "$root" daemon "$@" >"$WORK/daemon-$(basename "$root").log" 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    local i
    for i in $(seq 300); do
        "$SKIFF" --root "$root" daemon status >/dev/null 2>&1 && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/daemon-$(basename "$root").log" >&2
    return 1
}
