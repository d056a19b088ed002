#!/usr/bin/env bash
# Host prerequisites for Bastion, idempotent: Debian packages, the kernel
# headers link BCC needs, and tracefs. Needs root.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup-host: needs root (installs Debian packages, links kernel headers, mounts tracefs)" >&2
    exit 1
fi

packages=(python3-bpfcc linux-headers-amd64 libseccomp2 iproute2 sqlite3 gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# BCC compiles against /lib/modules/$(uname -r)/build. Debian's headers for
# its own kernel serve any 6.x kernel here, because Bastion's programs read
# only tracepoint arguments and helper results, never kernel structs.
kver=$(uname -r)
arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
common_dir=${arch_dir%-amd64}-common
mkdir -p "/lib/modules/$kver"
[ -e "/lib/modules/$kver/build/include/generated" ] || ln -sfn "$arch_dir" "/lib/modules/$kver/build"
[ -e "/lib/modules/$kver/source/include/linux/kconfig.h" ] || ln -sfn "$common_dir" "/lib/modules/$kver/source"

if ! grep -q " /sys/kernel/tracing tracefs " /proc/mounts; then
    mount -t tracefs tracefs /sys/kernel/tracing
fi
