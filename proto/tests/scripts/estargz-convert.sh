#!/bin/bash
# Converts an OCI image layout to eStargz with stargz-snapshotter's own converter.
# Usage: estargz-convert.sh SRC_LAYOUT SRC_TAG DST_LAYOUT WORKDIR
# Starts a private containerd (sockets/state under WORKDIR), imports SRC via an
# oci-archive, runs `ctr-remote images convert --estargz --oci`, exports and unpacks
# the result as an OCI layout at DST_LAYOUT (tag "esgz"), and stops containerd.
set -euo pipefail
SRC=$1; TAG=$2; DST=$3; W=$4
mkdir -p "$W"
A=$W/ctd.sock
cat > "$W/config.toml" <<TOML
version = 2
root = "$W/root"
state = "$W/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$A"
[ttrpc]
  address = "$A.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$W/opt"
TOML
setsid containerd --config "$W/config.toml" > "$W/containerd.log" 2>&1 &
PID=$!
stop() { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true;
  mount | awk -v d="$W/" 'index($3,d)==1{print $3}' | sort -r | xargs -r -n1 umount -l; }
trap stop EXIT
for i in $(seq 100); do [ -S "$A" ] && break; sleep 0.1; done
skopeo copy -q "oci:$SRC:$TAG" "oci-archive:$W/src.tar:skiff.test/src:latest"
ctr -a "$A" -n skiff images import --no-unpack --index-name skiff.test/src:latest "$W/src.tar" >/dev/null
ctr-remote -a "$A" -n skiff images convert --estargz --oci skiff.test/src:latest skiff.test/dst:esgz >/dev/null
ctr -a "$A" -n skiff images export "$W/dst.tar" skiff.test/dst:esgz
rm -rf "$DST.arch" && mkdir -p "$DST.arch" && tar -xf "$W/dst.tar" -C "$DST.arch"
skopeo copy -q "oci:$DST.arch" "oci:$DST:esgz" 2>/dev/null || skopeo copy -q "oci:$DST.arch:skiff.test/dst:esgz" "oci:$DST:esgz"
