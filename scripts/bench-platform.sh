#!/usr/bin/env bash
# Benchmarks through the real API on a release build (needs root):
#   scripts/bench-platform.sh sandbox   sandbox create → first exec, beside raw baselines
#   scripts/bench-platform.sh deploy    promotion and rollback times
#   scripts/bench-platform.sh s3        S3 PUT/GET throughput (1 MiB, 64 MiB) beside raw disk I/O;
#                                       4 KiB GETs a second
#   scripts/bench-platform.sh databases managed database provision → healthy, per engine
#   scripts/bench-platform.sh boot      machine boot → guest agent ready, process and qemu
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    sandbox | deploy | s3 | databases | boot) bench="kiln-bench-$1" ;;
    *) echo "usage: $0 sandbox|deploy|s3|databases|boot" >&2; exit 2 ;;
esac
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
export KILN_TEST_IMAGES_DIR="${KILN_TEST_IMAGES_DIR:-/var/cache/kiln-test/images}"
cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/$bench" "$CARGO_TARGET_DIR/release/kiln"
