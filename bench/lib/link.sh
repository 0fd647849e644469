# shellcheck shell=bash
# The emulated link of the cold-start benchmarks (sourced, not run): bench/shaper.py
# in front of the registry, its byte counters, and one measured run over it.
# Needs: HERE (bench/), REG, WORK, CACHE, PIDS (array), log(), free_port and
# wait_port (lib/common.sh), EXPECT (lib/commands.sh); run_one: LINK_CTL.

# start_shaper VAR RATE_MBIT ONE_WAY_DELAY_MS: a shaper in front of $REG; sets
# VAR=host:port of the link and VAR_CTL=port of its counters.
start_shaper() {
    local var=$1 port ctl
    port=$(free_port); ctl=$(free_port)
    python3 "$HERE/shaper.py" --listen "127.0.0.1:$port" --upstream "$REG" \
        --control "127.0.0.1:$ctl" --rate-mbit "$2" --delay-ms "$3" >"$WORK/shaper-$var.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port" && wait_port "$ctl" || { cat "$WORK/shaper-$var.log" >&2; return 1; }
    printf -v "$var" '127.0.0.1:%s' "$port"
    printf -v "${var}_CTL" '%s' "$ctl"
}

# counters CTL_PORT [reset] -> "DOWN_BYTES"
counters() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    echo "${2:-get}" >&3
    read -r line <&3
    exec 3<&-
    line=${line#down=}
    echo "${line%% *}"
}

# run_one IMAGE TOOL RUN_NO CMD... : runs, checks the output, appends a row to
# $WORK/results.tsv: image tool run seconds bytes status
run_one() {
    local img=$1 tool=$2 n=$3; shift 3
    local out=$WORK/log/$img.$tool.$n t0 t1 rc=0 secs bytes status=ok
    counters "$LINK_CTL" reset >/dev/null
    t0=$(date +%s.%N)
    # a hung run (e.g. a stuck FUSE mount) must not stall the suite
    timeout -k 10 "${RUN_TIMEOUT:-600}" "$@" >"$out.out" 2>"$out.err" </dev/null || rc=$?
    t1=$(date +%s.%N)
    bytes=$(counters "$LINK_CTL")
    # the peers' scripts report their own total (excludes daemon start-up)
    secs=$(grep -o 'total=[0-9.]*' "$out.err" | tail -1 | cut -d= -f2 || true)
    [ -n "$secs" ] || secs=$(echo "$t1 - $t0" | bc)
    if [ "$rc" != 0 ]; then
        status="exit=$rc"
    elif ! grep -qx "${EXPECT[$img]}" "$out.out"; then
        status=bad-output
    fi
    [ "$status" = ok ] || log "  $tool on $img run $n: $status (log: $out.err)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$img" "$tool" "$n" "$secs" "$bytes" "$status" >>"$WORK/results.tsv"
    if [ "$status" != ok ]; then
        mkdir -p "$CACHE/failed-logs"
        cp "$out.err" "$CACHE/failed-logs/" 2>/dev/null || true
    fi
}
