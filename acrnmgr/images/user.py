"""`acrnmgr image build`: a bootable Linux guest for users, from Debian's packages only.

The same builder as the test guest (build.py): the kernel of `linux-image-amd64` (apt-get download, dpkg-deb -x)
and a busybox-static initramfs with the virtio modules, plus ext4 for the data disk. Instead of a test script,
the initramfs ends with /test.sh = GUEST_SCRIPT below, which brings the network up on every virtio-net
interface (DHCP in the background), mounts the data disk on /data and keeps a shell on the console.

The image folder (default ~/.cache/acrnmgr/images/debian/, the path examples/linux-qemu.yaml names: a spec
expands ~ but no environment variables, so XDG_CACHE_HOME does not move it) holds:
  vmlinux      the kernel as an ELF (QEMU boots it directly through PVH: seconds faster under TCG)
  bzImage      Debian's original kernel image (for acrn-dm or anything that wants a bzImage)
  initrd.img   the initramfs
  data.img     a raw disk image with an ext2 file system (kept across rebuilds: it is the guest's data)
  manifest.json what went into it
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .build import GuestBuildError, Progress, _host_tool, build_guest_image
from .cpio import CpioWriter
from .gpio_i2c import gpio_i2c_layer, layer_modules

READY_TEXT = "acrnmgr-guest: ready"
EXTRA_MODULES = ("ext4", "crc32c_generic")
DEFAULT_DATA_SIZE = 64 << 20

# Runs as /test.sh under /init (acrnmgr/images/init.sh), with functions.sh sourced; stdio is the console.
GUEST_SCRIPT = r"""# acrnmgr image: network, data disk, then a shell on the console for as long as the guest runs.
[ "$(hostname)" = "(none)" ] && hostname guest  # the kernel sets hostname= from its command line
ip link set lo up
for d in /dev/vd[a-z]; do
    [ -b "$d" ] || continue
    mkdir -p /data
    if mount -t ext4 "$d" /data 2>/dev/null; then
        echo "acrnmgr-guest: data disk $d mounted on /data"
        break
    fi
done
for n in /sys/class/net/*; do
    n=${n##*/}
    [ "$n" = lo ] && continue
    ip link set "$n" up && echo "acrnmgr-guest: network $n up (DHCP in the background)"
    udhcpc -i "$n" -b -q -t 5 -T 2 -s /etc/acrnmgr/udhcpc.sh >/dev/null 2>&1
done
echo "READY_TEXT; a shell on this console (poweroff -f, or acrnmgr down, stops the guest)"
cd /root
while :; do
    setsid cttyhack sh -l
done
""".replace("READY_TEXT", READY_TEXT)

UDHCPC_SCRIPT = """#!/bin/sh
# busybox udhcpc hook: configure the lease on $interface.
case $1 in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    ;;
esac
"""

PROFILE = r"""export HOME=/root PS1='\u@\h:\w# '
alias poweroff='sync; poweroff -f'
"""


def images_root() -> Path:
    return Path("~/.cache/acrnmgr/images").expanduser()


def default_image_dir() -> Path:
    return images_root() / "debian"


@dataclass(frozen=True)
class UserImage:
    directory: Path
    kernel: Path  # vmlinux
    bzimage: Path
    initrd: Path
    data: Path
    kernel_version: str
    data_created: bool


def _overlay() -> bytes:
    """The archive appended to the base initramfs: /test.sh (GUEST_SCRIPT) and its configuration files."""
    import io

    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.directory("root", 0o700)
    w.file("etc/acrnmgr/udhcpc.sh", UDHCPC_SCRIPT.encode(), 0o755)
    w.file("etc/profile", PROFILE.encode())
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    w.file("test.sh", GUEST_SCRIPT.encode(), 0o755)
    w.close()
    return buf.getvalue()


def _place(src: Path, dest: Path) -> None:
    """dest becomes a copy of src (a hard link when they share a file system), atomically."""
    tmp = dest.with_name(f".{dest.name}.new")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def make_data_disk(path: Path, size: int, progress: Progress) -> None:
    """A raw disk image of `size` bytes holding an empty ext2 file system (busybox mke2fs)."""
    busybox = _host_tool("busybox")
    tmp = path.with_name(f".{path.name}.new")
    with open(tmp, "wb") as f:
        f.truncate(size)
    progress(f"creating the data disk {path} ({size >> 20} MiB, raw, ext2 made by busybox mke2fs)")
    out = subprocess.run([str(busybox), "mke2fs", "-F", "-L", "data", str(tmp)], capture_output=True, text=True)
    if out.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise GuestBuildError(f"busybox mke2fs failed: {out.stderr.strip()}")
    os.replace(tmp, path)


def build_user_image(directory: Path | None = None, *, data_size: int = DEFAULT_DATA_SIZE, new_disk: bool = False,
                     gpio_i2c: bool = False, progress: Progress) -> UserImage:
    """Build (or refresh) the image in `directory`; the kernel and base initramfs come from a cache shared by
    every image folder. The data disk is made only when missing (or when new_disk). `gpio_i2c` adds the
    gpio-i2c layer (gpio_i2c.py: the virtio-gpio/i2c drivers, i2c-dev, at24, lm75), which /init loads."""
    directory = Path(directory) if directory is not None else default_image_dir()
    if data_size < 1 << 20:
        raise GuestBuildError("the data disk needs at least 1 MiB")
    progress("resolving the kernel package linux-image-amd64 depends on (apt-cache)")
    base = build_guest_image(root=images_root() / "build", fio=False, extra_modules=EXTRA_MODULES,
                             progress=progress)
    layers = [gpio_i2c_layer(base, progress)] if gpio_i2c else []
    directory.mkdir(parents=True, exist_ok=True)
    progress(f"kernel {base.kernel_version}; writing the image into {directory}")
    _place(base.kernel, directory / "vmlinux")
    _place(base.bzimage, directory / "bzImage")
    tmp = directory / ".initrd.img.new"
    with open(tmp, "wb") as out:
        for part in [base.initrd_base, *layers]:
            out.write(part.read_bytes())
        out.write(_overlay())
    os.replace(tmp, directory / "initrd.img")
    data = directory / "data.img"
    created = new_disk or not data.exists()
    if created:
        make_data_disk(data, data_size, progress)
    else:
        progress(f"keeping the existing data disk {data} (--new-disk makes a fresh one)")
    modules = list(base.modules) + [m for layer in layers for m in layer_modules(layer)]
    manifest = {"kernel_version": base.kernel_version, "modules": modules, "ready": READY_TEXT,
                "built_from": str(base.directory), "layers": [str(layer) for layer in layers]}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return UserImage(directory, directory / "vmlinux", directory / "bzImage", directory / "initrd.img", data,
                     base.kernel_version, created)
