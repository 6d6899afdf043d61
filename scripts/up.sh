#!/usr/bin/env bash
# Sets up this machine and starts the whole platform on the embedded defaults.
# Arguments are passed to `kiln up` (e.g. --config kiln.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/kiln" up "$@"
