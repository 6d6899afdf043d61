#!/usr/bin/env bash
# Benchmark: sandbox create → first exec (50 sequential, 20 concurrent) beside a raw
# `unshare` baseline in the same run. Release build; needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
export KILN_TEST_IMAGES_DIR="${KILN_TEST_IMAGES_DIR:-/var/cache/kiln-test/images}"
cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/kiln-bench-sandbox" "$CARGO_TARGET_DIR/release/kiln"
