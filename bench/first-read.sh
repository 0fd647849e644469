#!/bin/bash
# First sequential read of a big uncached file (node's 47 MB libnode) behind the emulated link
# (100 Mbit/s, 20 ms RTT): bytes the registry sent ÷ time of `cat`, per lazy format (issue 13).
# Usage: bash bench/first-read.sh [SKIFF_BINARY]   (root; the bench images of coldstart.sh)
SK=${1:-target/release/skiff}
set -euo pipefail
W=$(mktemp -d /tmp/fr.XXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: /var/tmp/skiff-bench/registry\nhttp:\n  addr: 127.0.0.1:%s\n' $PORT > $W/reg.yml
docker-registry serve $W/reg.yml > $W/reg.log 2>&1 & RP=$!
python3 "$(dirname "$0")/shaper.py" --listen 127.0.0.1:36001 --upstream 127.0.0.1:$PORT --delay-ms 10 --rate-mbit 100 --control 127.0.0.1:36002 > $W/sh.log 2>&1 & SP=$!
sleep 1.5
ctl() { python3 -c "import socket; s=socket.create_connection(('127.0.0.1',36002)); s.sendall(b'$1\n'); print(s.recv(200).decode().strip())"; }
for fmt in esgz zstd gzip; do
  mkdir -p $W/m-$fmt
  SKIFF_NETWORK=none $SK --root $W/r-$fmt mount -d 127.0.0.1:36001/bench/node:$fmt $W/m-$fmt >/dev/null 2>&1
  sleep 3
  ctl reset >/dev/null
  s=$(date +%s.%N); cat $W/m-$fmt/usr/lib/x86_64-linux-gnu/libnode.so.108 > /dev/null; e=$(date +%s.%N)
  b=$(ctl get | sed -E 's/.*down=([0-9]+).*/\1/')
  python3 -c "t=$e-$s; b=$b; print('$fmt: %.1f MB in %.2f s = %.0f Mbit/s' % (b/1e6, t, b*8/t/1e6))"
  $SK --root $W/r-$fmt umount $W/m-$fmt
done
kill $SP $RP; rm -rf "$W"
