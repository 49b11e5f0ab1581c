#!/usr/bin/env bash
# Install everything acrnmgr and its test suite need on a fresh Debian 12 machine:
# Debian packages (QEMU, busybox-static for the test guest, fio, ...) and a virtualenv in .venv.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

# --python-only: the virtualenv and what building it needs (enough for validate/render/plan); no QEMU.
python_only=false
[[ ${1:-} == --python-only ]] && python_only=true

# What `pip install` needs: libvirt-python (the `libvirt` extra) is source-only on PyPI and builds
# against libvirt's headers; setup.py compiles the device model's ring code with mypyc (a C compiler and
# Python's headers; without them it installs as pure Python, slower). gcc also builds the tests' small C
# helpers (the concurrent ring reader, the GPIO uAPI layouts, the bench's vhost-user load generator).
apt_packages=(
    libvirt-dev pkg-config
    python3-venv
    gcc libc6-dev python3-dev
)
if ! $python_only; then
    apt_packages+=(
        qemu-system-x86 qemu-utils qemu-system-gui   # the qemu engine, qemu-storage-daemon (bench peer; the other process of the vhost-user tests)
        busybox-static cpio kmod                      # the test guest's initramfs
        make gcc-12 xz-utils libelf1 libssl3          # the guest's gpio-i2c layer: virtio-gpio/i2c modules built
                                                      # out of tree against Debian's kernel headers (gcc-12 is what
                                                      # they name; linux-kbuild's tools link libelf and libssl)
        gpgv debian-archive-keyring                   # tests/guest/qemu_backports.py: checks bookworm-backports'
                                                      # signed InRelease before it takes a QEMU 10 .deb from it
        fio                                           # guest-side I/O verification and bench
        ovmf                                          # UEFI firmware for the qemu engine's OVMF boot
        iproute2                                      # tap devices
        tmux                                          # a real terminal for the console test
        libvirt-daemon-system libvirt-clients         # libvirtd for qemu:///system (the libvirt engine)
    )
fi
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root to install Debian packages: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,libvirt]'
