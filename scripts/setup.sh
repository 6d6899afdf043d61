#!/usr/bin/env bash
# Installs the system packages Kiln and its tests need on Debian 12. Idempotent: asks apt
# only for what is missing, and runs `apt-get update` at most once.
set -euo pipefail

packages=(
    iproute2 nftables util-linux procps   # machine namespaces, bridges, firewall
    mmdebstrap debian-archive-keyring     # building machine images
    ca-certificates curl python3          # tests and tools
    python3-venv                          # the S3 test's boto3 venv
    postgresql                            # the store's PostgreSQL test run
    e2fsprogs                             # VM workspace volumes (mkfs.ext4)
)

if [[ $(id -u) -ne 0 ]]; then
    echo "setup: run as root (machines need namespaces, bridges and cgroups)" >&2
    exit 1
fi

# The preview test installs a stock Vite dev server from npm; any Node.js with npm will do.
command -v npm >/dev/null || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: a Rust toolchain (cargo) is required" >&2; exit 1; }
