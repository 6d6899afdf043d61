#!/usr/bin/env bash
# Installs the system packages Kiln and its tests need on Debian 12. Idempotent: asks apt
# only for what is missing, and runs `apt-get update` at most once.
set -euo pipefail

packages=(
    iproute2 nftables util-linux procps   # machine namespaces, bridges, firewall
    mmdebstrap debian-archive-keyring     # building machine images
    ca-certificates curl python3          # tests and tools
    python3-venv                          # the S3 test's boto3 venv
    e2fsprogs                             # VM workspace volumes (mkfs.ext4)
    postgresql                            # the store's PostgreSQL test run; managed databases
    mariadb-server mariadb-client         # managed MySQL databases (MariaDB)
    redis-server                          # managed Redis databases
    qemu-system-x86 busybox-static cpio   # the qemu driver and its guest image
    libssl-dev pkg-config                 # building: the S3 store hashes bodies with libcrypto
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
    # Kiln runs one server per managed database itself; the packages' default instances must
    # not start (they would hold the default ports and run with the packages' settings).
    # policy-rc.d tells invoke-rc.d not to start services during this install.
    policy=/usr/sbin/policy-rc.d
    own_policy=false
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { $own_policy && rm -f "$policy"; exit 1; }
    $own_policy && rm -f "$policy"
fi

# Stop and disable the packages' default database instances, whether this run installed them
# or an earlier one did (idempotent; Kiln's own instances are not services).
for service in postgresql mariadb redis-server; do
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
        service "$service" stop >/dev/null 2>&1 || true
        update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
done
# The guest kernel for the VM drivers: Debian's cloud kernel, unpacked into a cache rather
# than installed, so the host's own boot setup is never touched. `current` points at the
# version in use; the qemu driver finds `boot/vmlinuz-*` and `lib/modules/*` under it.
kernel_cache=/var/cache/kiln/kernel
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
if [[ -z $kernel_pkg ]]; then
    echo "setup: cannot find the package behind linux-image-cloud-amd64 (apt-get update?)" >&2
    exit 1
fi
if [[ ! -d $kernel_cache/$kernel_pkg/boot ]]; then
    echo "setup: unpacking $kernel_pkg into $kernel_cache" >&2
    work=$(mktemp -d)
    chown _apt "$work" 2>/dev/null || true   # apt downloads as _apt when it can
    (cd "$work" && apt-get download -qq "$kernel_pkg" >/dev/null)
    mkdir -p "$kernel_cache"
    rm -rf "$kernel_cache/.$kernel_pkg"
    dpkg-deb -x "$work"/"$kernel_pkg"_*.deb "$kernel_cache/.$kernel_pkg"
    mv "$kernel_cache/.$kernel_pkg" "$kernel_cache/$kernel_pkg"
    rm -rf "$work"
fi
ln -sfn "$kernel_pkg" "$kernel_cache/current"

command -v cargo >/dev/null || { echo "setup: a Rust toolchain (cargo) is required" >&2; exit 1; }
