"""`acrnmgr image build`: a bootable guest from Debian's packages, built into a folder, saying what it does.
(tests/test_console_tmux.py boots it; this checks the build itself, which takes about a second once cached.)"""

import json
import subprocess
import sys
from pathlib import Path

from acrnmgr.images.build import modinfo  # noqa: F401  (the builder is importable from the package)
from acrnmgr.images.user import GUEST_SCRIPT, READY_TEXT

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))


def _build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ACRNMGR, "image", "build", *args], capture_output=True, text=True, timeout=600)


def test_image_build_writes_a_kernel_an_initramfs_and_a_data_disk(tmp_path):
    out = tmp_path / "img"
    proc = _build("--dir", str(out), "--data-size", "8M")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # It says what it does as it goes.
    assert "image: resolving the kernel package" in proc.stderr
    assert "image: kernel " in proc.stderr and "image: done" in proc.stderr
    assert f"image: creating the data disk {out / 'data.img'} (8 MiB" in proc.stderr
    assert proc.stdout.splitlines() == [f"kernel  {out / 'vmlinux'}", f"bzImage {out / 'bzImage'}",
                                        f"initrd  {out / 'initrd.img'}", f"data    {out / 'data.img'}"]
    assert (out / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert (out / "bzImage").read_bytes()[0x202:0x206] == b"HdrS"
    initrd = (out / "initrd.img").read_bytes()
    assert initrd[:6] == b"070701" and GUEST_SCRIPT.encode() in initrd and b"bin/busybox" in initrd
    data = (out / "data.img").read_bytes()
    assert len(data) == 8 << 20 and data[1080:1082] == b"\x53\xef"  # an ext2 superblock's magic
    manifest = json.loads((out / "manifest.json").read_text())
    assert "ext4" in manifest["modules"] and "virtio_net" in manifest["modules"]
    assert manifest["ready"] == READY_TEXT

    # Again: the kernel is cached and the data disk, the guest's data, is kept.
    (out / "data.img").write_bytes(data[:4096] + b"kept" + data[4100:])
    again = _build("--dir", str(out))
    assert again.returncode == 0, again.stderr
    assert "keeping the existing data disk" in again.stderr and "downloading" not in again.stderr
    assert (out / "data.img").read_bytes()[4096:4100] == b"kept"


def test_gpio_i2c_adds_the_virtio_gpio_and_i2c_drivers(tmp_path):
    out = tmp_path / "img"
    proc = _build("--dir", str(out), "--data-size", "1M", "--gpio-i2c")
    assert proc.returncode == 0, proc.stderr
    initrd = (out / "initrd.img").read_bytes()
    for name in ("gpio_virtio", "i2c_virtio", "i2c_dev", "at24", "lm75"):
        assert f"lib/modules/gpio-i2c/{name}.ko".encode() in initrd
    assert initrd.index(b"etc/acrnmgr/modules.d/gpio-i2c.load") < initrd.index(GUEST_SCRIPT.encode())
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"gpio_virtio", "i2c_virtio", "ext4"} <= set(manifest["modules"])
    # The default image stays without them.
    assert _build("--dir", str(out)).returncode == 0
    assert b"gpio_virtio" not in (out / "initrd.img").read_bytes()


def test_bad_sizes_are_usage_errors(tmp_path):
    proc = _build("--dir", str(tmp_path), "--data-size", "lots")
    assert proc.returncode == 2 and "give a size such as 64M" in proc.stderr and "Traceback" not in proc.stderr
    proc = _build("--dir", str(tmp_path), "--data-size", "1K")
    assert proc.returncode == 1 and "at least 1 MiB" in proc.stderr


def test_the_qemu_example_uses_the_built_image():
    text = (Path(__file__).resolve().parents[1] / "examples" / "linux-qemu.yaml").read_text()
    for name in ("vmlinux", "initrd.img", "data.img"):
        assert f"~/.cache/acrnmgr/images/debian/{name}" in text
    assert READY_TEXT in text
