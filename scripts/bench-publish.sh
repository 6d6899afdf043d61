#!/usr/bin/env bash
# Benchmark: publishing a directory. Builds a ~100 MB tree of mixed files (3,000 small text
# files, 40 MB of compressible text, 48 MB of random bytes) in a temporary directory, then times
# `ArtifactStore::put_dir` (pack, zstd -3 on one thread, sha256, fsync and rename into the
# store) beside the shell pipeline `tar -C DIR -cf - . | zstd -3 -T1 | sha256sum`, plus
# `pack_dir_to` into a sink (put_dir's work without the disk write). Runs are interleaved;
# medians and ratios are printed.
# Release build; installs zstd from Debian if missing (needs root).
#
# Environment: BENCH_RUNS (3; medians shown), TMPDIR (where the tree and stores go; needs
# ~300 MB), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v zstd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends zstd; then
        apt-get update
        apt-get install -y --no-install-recommends zstd
    fi
fi

cargo build --release -p kiln-artifacts --bin kiln-bench-publish
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}"
exec "$target_dir/release/kiln-bench-publish"
