#!/usr/bin/env bash
# Skiff's whole test suite: installs what it needs, builds, runs every test.
# Tests start their own docker-registry processes on free loopback ports, mount
# their own FUSE filesystems and clean them up.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast

# POSIX conformance (pjdfstest) and data integrity (fsx, bounded to FSX_OPS operations)
# on the writable mount. pjdfstest's runner script lives in ../shared/peers.
suite=${POSIX_SUITE:-$(cd .. && pwd)/shared/peers/posix-suite.sh}
if [ -f "$suite" ]; then
  for tool in pjdfstest fsx; do
    command -v "$tool" >/dev/null || cargo install --locked "$tool"
  done
  POSIX_SUITE=$suite FSX_OPS=${FSX_OPS:-20000} \
    cargo test -p skiff-fs --test posix -- --ignored --nocapture --test-threads=1
else
  echo "skipping pjdfstest/fsx: $suite not found (set POSIX_SUITE)" >&2
fi
