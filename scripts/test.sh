#!/usr/bin/env bash
# Skiff's whole test suite: installs what it needs, builds, runs every test.
# Tests start their own docker-registry processes on free loopback ports, mount
# their own FUSE filesystems and clean them up.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
