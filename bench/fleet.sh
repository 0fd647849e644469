#!/bin/bash
# Fleet cold start through one pull-through mirror (issue 12): N nodes start the same
# image at the same moment, each behind its own emulated link, all through one
# docker-registry in proxy mode whose own link to the upstream registry is shaped too.
#
#   bash bench/fleet.sh [--nodes 8] [--images python,gcc,node] [--tools skiff,stargz]
#                       [--rate-mbit 100] [--rtt-ms 20] [--upstream-rate-mbit 100]
#                       [--mirror registry|skiff] [--mirror-block-size 64KiB]
#                       [--cache /var/tmp/skiff-bench] [--skiff PATH] [--out FILE]
#
# --mirror says which pull-through mirror the fleet shares: `registry` (default) is
# docker-registry in proxy mode, `skiff` is `skiff mirror` (lazy, range-caching,
# single-flight; its /skiff/stats counters are reported under the table). Its blocks are
# 64 KiB (its default): a node's lazy reads are scattered, and with 1 MiB
# blocks upstream sent 3.65x what one node read (python, 2 nodes), with 64 KiB 1.14x.
#
# Root only; needs the images bench/coldstart.sh builds (run it once first) and, for the
# stargz rows, the stargz-snapshotter peer (/work/shared/peers/stargz-setup.sh).
#
# Layout (every address lives in network namespaces this script creates, or on their
# loopback; nothing touches the host's interfaces):
#   hub namespace:  upstream docker-registry 127.0.0.1:5000 (the bench image storage)
#                   upstream link: shaper 127.0.0.1:5001 -> 5000 (--upstream-rate-mbit)
#                   mirror: docker-registry proxy or skiff mirror
#                           10.77.0.1:5002 -> 127.0.0.1:5001
#                   bridge fleetbr0 10.77.0.1/24
#   node i:         veth 10.77.0.(10+i)/24 on that bridge
#                   node link: shaper 127.0.0.1:6000 -> 10.77.0.1:5002 (--rate-mbit)
#                   skiff with hosts.toml: registry 127.0.0.1:5000 through mirror
#                   http://127.0.0.1:6000 (its own link); stargz pulls the same image
#                   through 127.0.0.1:6000 as its registry.
# Each image and tool starts with an empty mirror and empty node roots. Reported per
# image: time to the last node's exit, median node time, bytes the upstream sent (to the
# mirror), bytes the mirror sent (to all nodes), and one node's bytes for comparison.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PEERS=/work/shared/peers
NODES=8 IMAGES=python,gcc,node TOOLS=skiff,stargz RATE=100 RTT=20 UPRATE=100
CACHE=/var/tmp/skiff-bench SKIFF="" OUT="" MIRROR=registry MIRROR_BLOCK=64KiB
while [ $# -gt 0 ]; do
    case $1 in
    --nodes) NODES=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --rate-mbit) RATE=$2; shift 2 ;;
    --rtt-ms) RTT=$2; shift 2 ;;
    --upstream-rate-mbit) UPRATE=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --mirror-block-size) MIRROR_BLOCK=$2; shift 2 ;;
    --skiff) SKIFF=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "fleet.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $MIRROR in registry|skiff) ;; *) echo "fleet.sh: --mirror is registry or skiff" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "fleet.sh: run as root" >&2; exit 1; }
[ -d "$CACHE/registry/docker" ] || { echo "fleet.sh: no bench images in $CACHE (run bench/coldstart.sh once)" >&2; exit 1; }
SKIFF=${SKIFF:-$REPO/target/release/skiff}
[ -x "$SKIFF" ] || { echo "fleet.sh: no skiff binary at $SKIFF (cargo build --release -p skiff)" >&2; exit 1; }
export SKIFF_NETWORK=none
DELAY=$(python3 -c "print($RTT / 2)")
TAG=$$
HUB=fleet-hub-$TAG
W=$(mktemp -d /tmp/skiff-fleet.XXXXXX)
# Where the output of a node that failed is kept (the work directory is removed).
FAILED_DIR=${FLEET_FAILED_DIR:-/var/tmp/skiff-bench/failed-logs}
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

nodes() { seq 1 "$NODES"; }
# nsenter, not `ip netns exec`: that one also remounts /sys, hiding /sys/fs/cgroup.
in_hub() { nsenter --net="/run/netns/$HUB" "$@"; }
in_node() { local i=$1; shift; nsenter --net="/run/netns/fleet-n$i-$TAG" "$@"; }

cleanup() {
    set +e
    for ns in $(ip netns list | awk '{print $1}' | grep -- "-$TAG\$"); do
        ip netns pids "$ns" | xargs -r kill -9 2>/dev/null
    done
    sleep 0.5
    mount | awk -v d="$W/" 'index($3,d)==1{print $3}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    for ns in $(ip netns list | awk '{print $1}' | grep -- "-$TAG\$"); do ip netns del "$ns"; done
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ctl() { # ctl NAMESPACE-RUNNER PORT COMMAND
    local runner=$1 port=$2 cmd=$3
    $runner python3 -c "
import socket,sys
s=socket.create_connection(('127.0.0.1',$port)); s.sendall(b'$cmd\n'); print(s.recv(200).decode().strip())"
}
down_bytes() { sed -E 's/.*down=([0-9]+).*/\1/'; }

wait_port() { # wait_port RUNNER HOST PORT
    for _ in $(seq 100); do
        $1 python3 -c "import socket; socket.create_connection(('$2',$3),timeout=0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "fleet.sh: nothing listens on $2:$3" >&2; return 1
}

registry_config() { # registry_config FILE ADDR STORAGE [REMOTE]
    {
        printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n'
        printf 'storage:\n  filesystem:\n    rootdirectory: %s\n  cache:\n    blobdescriptor: inmemory\n' "$3"
        printf 'http:\n  addr: %s\n' "$2"
        if [ -n "${4:-}" ]; then printf "proxy:\n  remoteurl: %s\n" "$4"; fi
    } > "$1"
}

# ---- network -------------------------------------------------------------------------
log "namespaces: hub + $NODES nodes, bridge 10.77.0.0/24"
ip netns add "$HUB"
in_hub ip link set lo up
in_hub ip link add fleetbr0 type bridge
in_hub ip addr add 10.77.0.1/24 dev fleetbr0
in_hub ip link set fleetbr0 up
for i in $(nodes); do
    ns=fleet-n$i-$TAG
    ip netns add "$ns"
    nsenter --net="/run/netns/$ns" ip link set lo up
    ip link add "fv$i-$TAG" type veth peer name "fn$i-$TAG"
    ip link set "fv$i-$TAG" netns "$HUB"
    ip link set "fn$i-$TAG" netns "$ns"
    in_hub ip link set "fv$i-$TAG" master fleetbr0 up
    nsenter --net="/run/netns/$ns" ip addr add "10.77.0.$((10 + i))/24" dev "fn$i-$TAG"
    nsenter --net="/run/netns/$ns" ip link set "fn$i-$TAG" up
done

# ---- upstream and its link -------------------------------------------------------------
registry_config "$W/upstream.yml" 127.0.0.1:5000 "$CACHE/registry"
in_hub setsid docker-registry serve "$W/upstream.yml" > "$W/upstream.log" 2>&1 &
wait_port in_hub 127.0.0.1 5000
in_hub setsid python3 "$HERE/shaper.py" --listen 127.0.0.1:5001 --upstream 127.0.0.1:5000 \
    --delay-ms "$DELAY" --rate-mbit "$UPRATE" --control 127.0.0.1:5101 > "$W/upshaper.log" 2>&1 &
wait_port in_hub 127.0.0.1 5001
for i in $(nodes); do
    in_node "$i" setsid python3 "$HERE/shaper.py" --private-ok --listen 127.0.0.1:6000 \
        --upstream 10.77.0.1:5002 --delay-ms "$DELAY" --rate-mbit "$RATE" \
        --control 127.0.0.1:6100 > "$W/shaper-$i.log" 2>&1 &
    mkdir -p "$W/n$i/certs.d/127.0.0.1:5000"
    printf 'server = "http://127.0.0.1:5000"\n\n[host."http://127.0.0.1:6000"]\n  capabilities = ["pull", "resolve"]\n' \
        > "$W/n$i/certs.d/127.0.0.1:5000/hosts.toml"
done
for i in $(nodes); do wait_port "in_node $i" 127.0.0.1 6000; done

stop_mirror() { # the mirror started last, by the pid it wrote
    [ -s "$W/mirror.pid" ] || return 0
    local pid; pid=$(cat "$W/mirror.pid"); rm -f "$W/mirror.pid"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

start_mirror() { # a cold mirror for each image and tool
    stop_mirror
    rm -rf "$W/mirror"
    case $MIRROR in
    registry)
        registry_config "$W/mirror.yml" 10.77.0.1:5002 "$W/mirror" http://127.0.0.1:5001
        in_hub setsid sh -c 'echo $$ > "$1"; exec docker-registry serve "$2"' sh \
            "$W/mirror.pid" "$W/mirror.yml" > "$W/mirror.log" 2>&1 & ;;
    skiff)
        in_hub setsid sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$W/mirror.pid" \
            "$SKIFF" --root "$W/mirror-root" mirror --upstream http://127.0.0.1:5001 \
            --listen 10.77.0.1:5002 --storage "$W/mirror" --block-size "$MIRROR_BLOCK" \
            > "$W/mirror.log" 2>&1 & ;;
    esac
    wait_port in_hub 10.77.0.1 5002
}

mirror_stats() { # skiff mirror's counters, as JSON on one line
    in_hub python3 -c "import urllib.request; print(urllib.request.urlopen('http://10.77.0.1:5002/skiff/stats', timeout=5).read().decode())"
}

reset_counters() {
    ctl in_hub 5101 reset > /dev/null
    for i in $(nodes); do ctl "in_node $i" 6100 reset > /dev/null; done
}

node_cmd() { # node_cmd TOOL I IMAGE: the command one node runs
    local tool=$1 i=$2 img=$3
    local -a cmd
    case $img in
    python) cmd=(python3 -c 'print(1)') ;;
    node) cmd=(node -e 'console.log(1)') ;;
    gcc) cmd=(sh -c 'printf "#include <stdio.h>\nint main(void){puts(\"hello\");return 0;}\n" >/tmp/hello.c && gcc -o /tmp/hello /tmp/hello.c && /tmp/hello') ;;
    esac
    case $tool in
    skiff) in_node "$i" "$SKIFF" --root "$W/n$i/root" run --rm --no-prefetch \
        --hosts-dir "$W/n$i/certs.d" "127.0.0.1:5000/bench/$img:esgz" "${cmd[@]}" ;;
    stargz) in_node "$i" env SGZ_DIR="$W/n$i/sgz" bash "$PEERS/stargz-run.sh" \
        "127.0.0.1:6000/bench/$img:esgz" "${cmd[@]}" ;;
    esac
}

# ---- runs ------------------------------------------------------------------------------
RESULTS=$W/results.tsv
: > "$RESULTS"
IFS=, read -r -a IMGS <<< "$IMAGES"
IFS=, read -r -a TLS <<< "$TOOLS"
for img in "${IMGS[@]}"; do
    for tool in "${TLS[@]}"; do
        # One node alone first: what a single node reads.
        start_mirror; reset_counters
        rm -rf "$W/n1/root" "$W/n1/sgz"
        node_cmd "$tool" 1 "$img" > "$W/single.out" 2>&1 || log "single $tool $img failed: $(tail -2 "$W/single.out")"
        single=$(ctl "in_node 1" 6100 get | down_bytes)
        # The fleet, all at once, with a cold mirror again.
        start_mirror; reset_counters
        for i in $(nodes); do rm -rf "$W/n$i/root" "$W/n$i/sgz"; done
        log "$img / $tool: $NODES nodes at once"
        t0=$(date +%s.%N)
        pids=()
        for i in $(nodes); do
            ( s=$(date +%s.%N); rc=0; node_cmd "$tool" "$i" "$img" > "$W/out-$i" 2>&1 || rc=$?
              e=$(date +%s.%N); echo "$i $rc $(echo "$e - $s" | bc) $(echo "$e - $t0" | bc)" > "$W/time-$i" ) &
            pids+=($!)
        done
        # Only the nodes: a bare `wait` would also wait for the registries and shapers.
        wait "${pids[@]}"
        up=$(ctl in_hub 5101 get | down_bytes)
        mirror=0
        for i in $(nodes); do mirror=$((mirror + $(ctl "in_node $i" 6100 get | down_bytes))); done
        if [ "$MIRROR" = skiff ]; then
            printf '%s\t%s\t%s\n' "$img" "$tool" "$(mirror_stats || echo '{}')" >> "$W/mirror-stats.tsv"
        fi
        # A failed node's output outlives the work directory, for the report to name.
        for i in $(nodes); do
            read -r _ rc _ _ < "$W/time-$i"
            if [ "$rc" != 0 ]; then
                kept="$FAILED_DIR/fleet-$TAG-$img-$tool-node$i.log"
                mkdir -p "$FAILED_DIR" && cp "$W/out-$i" "$kept"
                log "node $i failed ($img / $tool, exit $rc): $(tail -2 "$W/out-$i" | tr '\n' ' ') — kept in $kept"
            fi
        done
        ok=$(cat "$W"/time-* | awk '$2 == 0' | wc -l)
        last=$(cat "$W"/time-* | awk '{print $4}' | sort -n | tail -1)
        median=$(cat "$W"/time-* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$img" "$tool" "$ok" "$last" "$median" "$up" "$mirror" "$single" >> "$RESULTS"
        rm -f "$W"/time-*
    done
done

stop_mirror

# ---- report ----------------------------------------------------------------------------
if [ "$MIRROR" = skiff ]; then
    MIRROR_TEXT="skiff mirror, ${MIRROR_BLOCK} blocks"
else
    MIRROR_TEXT="docker-registry proxy"
fi
{
    echo "### Fleet: $NODES nodes, ${RATE} Mbit/s and ${RTT} ms per node, upstream link ${UPRATE} Mbit/s"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), skiff $(cd "$REPO" && git rev-parse --short HEAD), load $(cut -d' ' -f1-3 /proc/loadavg). Cold mirror ($MIRROR_TEXT) and empty nodes for every row; eStargz images; skiff through hosts.toml, stargz-snapshotter with the node's link as its registry."
    echo
    echo "| image | system | ok nodes | last node exit s | median node s | upstream sent MB | mirror sent MB | one node alone MB | upstream ÷ one node |"
    echo "|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' '{ printf "| %s | %s | %s/%d | %.2f | %.2f | %.1f | %.1f | %.1f | %.2f× |\n", $1, $2, $3, '"$NODES"', $4, $5, $6/1e6, $7/1e6, $8/1e6, ($8 > 0 ? $6/$8 : 0) }' "$RESULTS"
    if [ -s "$W/mirror-stats.tsv" ]; then
        echo
        echo "skiff mirror counters after each fleet run (/skiff/stats):"
        echo
        awk -F'\t' '{ printf "- %s / %s: `%s`\n", $1, $2, $3 }' "$W/mirror-stats.tsv"
    fi
} | tee "${OUT:-/dev/stdout}"
