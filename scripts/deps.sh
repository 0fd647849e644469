#!/usr/bin/env bash
# Installs what Skiff's build, tests and demo need on Debian 12 (run as root).
# Sourced by test.sh and demo.sh; safe to run again.
set -euo pipefail

SKIFF_APT_PACKAGES=(
  build-essential pkg-config libssl-dev openssl ca-certificates curl bc python3 zstd
  docker-registry skopeo umoci runc fuse3 busybox-static apache2-utils
  containerd stargz-snapshotter fuse-overlayfs libseccomp-dev tini
  containernetworking-plugins iptables iproute2
)

missing=()
for p in "${SKIFF_APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo is required (rustup toolchain)" >&2; exit 1; }
