#!/usr/bin/env bash
# The main job on an embedded default: start a local registry, push a small busybox
# image built from Debian's busybox-static, pull and inspect it with skiff, then run a
# container from it lazily.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

cargo build --release -p skiff
SKIFF=$PWD/target/release/skiff

work=$(mktemp -d /tmp/skiff-demo.XXXXXX)
reg_pid=
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A registry of our own on a free loopback port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

# A busybox image: one layer with the static busybox and its applet links.
umoci init --layout "$work/layout"
umoci new --image "$work/layout:latest"
umoci unpack --rootless --image "$work/layout:latest" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for applet in sh ls cat echo id env true; do ln -s busybox "$work/bundle/rootfs/bin/$applet"; done
umoci repack --image "$work/layout:latest" "$work/bundle"
umoci config --image "$work/layout:latest" --config.cmd /bin/sh --config.env PATH=/bin
skopeo copy --dest-tls-verify=false "oci:$work/layout:latest" "docker://127.0.0.1:$port/demo/busybox:latest"

export SKIFF_ROOT="$work/root"
image="127.0.0.1:$port/demo/busybox:latest"
"$SKIFF" pull "$image"
"$SKIFF" inspect "$image"
"$SKIFF" images

# The lazy path: publish a layer index beside the image, then start a container from a
# fresh store and cache, fetching only the bytes the command reads.
"$SKIFF" index --push -q "$image"
SKIFF_ROOT="$work/cold" "$SKIFF" run --rm "$image" echo "hello from a lazily mounted busybox"
