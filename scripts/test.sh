#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, then every crate's tests against real
# parts (namespaces, a real PostgreSQL for the store). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# Builds outlive the clone so CI runs on the same machine reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
# Built machine images are cached the same way (building one takes about a minute).
export KILN_TEST_IMAGES_DIR="${KILN_TEST_IMAGES_DIR:-/var/cache/kiln-test/images}"

# A stock Vite dev server for the preview test, from npm, cached like the images.
export KILN_TEST_VITE_DIR="${KILN_TEST_VITE_DIR:-/var/cache/kiln-test/vite}"
if [[ ! -f "$KILN_TEST_VITE_DIR/node_modules/vite/package.json" ]]; then
    mkdir -p "$KILN_TEST_VITE_DIR"
    npm install --prefix "$KILN_TEST_VITE_DIR" --no-audit --no-fund --loglevel=error vite@5
fi

# boto3 from PyPI for the S3 test, in a venv cached like the images.
export KILN_TEST_VENV="${KILN_TEST_VENV:-/var/cache/kiln-test/venv}"
if [[ ! -x "$KILN_TEST_VENV/bin/python" ]] || ! "$KILN_TEST_VENV/bin/python" -c "import boto3" 2>/dev/null; then
    python3 -m venv "$KILN_TEST_VENV"
    "$KILN_TEST_VENV/bin/pip" install --quiet --disable-pip-version-check "boto3>=1.34,<2"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start the real binaries, so build all of them first.
cargo build --workspace --bins

pg_dir=/tmp/kiln-test-pg
trap 'scripts/test-postgres.sh stop "$pg_dir" >/dev/null 2>&1 || true' EXIT
KILN_TEST_POSTGRES_URL=$(scripts/test-postgres.sh "$pg_dir")
export KILN_TEST_POSTGRES_URL

cargo test --workspace "$@"
