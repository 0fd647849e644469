#!/bin/bash
# Layer index benchmark: build time and index size per format for a ~200 MB layer, and
# bytes fetched to read one small file from the middle of the layer, with and without
# an index / checkpoints. Not a test.
# Usage: bench/index.sh [SRC_DIR (default /usr/lib)] [MiB (default 200)]
# Runs the dev-profile example (dependencies are built with opt-level 2, so zlib, zstd
# and sha256 run optimized; Skiff's own glue code is unoptimized).
set -euo pipefail
cd "$(dirname "$0")/.."
W=$(mktemp -d /tmp/skiff-index-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
cargo run -q -p skiff-proto --example index_bench -- "${1:-/usr/lib}" "${2:-200}" "$W"
