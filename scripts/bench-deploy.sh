#!/usr/bin/env bash
# Benchmark: promotion and rollback times through the real API (release build; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
export KILN_TEST_IMAGES_DIR="${KILN_TEST_IMAGES_DIR:-/var/cache/kiln-test/images}"
cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/kiln-bench-deploy" "$CARGO_TARGET_DIR/release/kiln"
