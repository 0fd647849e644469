#!/usr/bin/env bash
# Skiff's whole test suite: installs what it needs, builds, runs every test.
# Tests start their own docker-registry processes on free loopback ports, mount
# their own FUSE filesystems and clean them up.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

# deps.sh installed every tool the interop tests use, so here a missing tool (or not
# being root) fails those tests and names the tool instead of letting them pass unchecked.
export SKIFF_TEST_REQUIRE_TOOLS=1

cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast

# POSIX conformance (pjdfstest) and data integrity (fsx, bounded to FSX_OPS operations)
# on the writable mount. pjdfstest's runner script lives in ../shared/peers.
# The test asserts pjdfstest's exit status and its exact counts (382 passed, 0 failed).
suite=${POSIX_SUITE:-$(cd .. && pwd)/shared/peers/posix-suite.sh}
if [ ! -f "$suite" ]; then
  echo "POSIX suite runner $suite not found (set POSIX_SUITE); pjdfstest/fsx not run" >&2
  exit 1
fi
for tool in pjdfstest fsx; do
  command -v "$tool" >/dev/null || cargo install --locked "$tool"
done
# --workspace (not -p skiff-fs): the same feature set as the build above, so cargo
# reuses it instead of building every dependency again for one package.
POSIX_SUITE=$suite FSX_OPS=${FSX_OPS:-20000} \
  cargo test --workspace --test posix -- --ignored --nocapture --test-threads=1
