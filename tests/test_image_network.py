"""The built image brings the network up on a virtio-net: booted under QEMU with a user-mode NIC, the guest
gets a DHCP lease from QEMU's built-in server (10.0.2.15) and can say so on its console."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from acrnmgr.images.user import READY_TEXT

IMAGE = Path("~/.cache/acrnmgr/images/debian").expanduser()  # built by the session fixture in tests/conftest.py


def _read_until(proc: subprocess.Popen, text: str, seen: bytearray, timeout: float) -> bool:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < deadline and proc.poll() is None:
        if sel.select(0.5):
            seen += os.read(proc.stdout.fileno(), 65536)
    sel.close()
    return text.encode() in seen


@pytest.mark.guest
def test_the_image_brings_a_virtio_net_up_with_dhcp(tmp_path):
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "scripts/setup.sh installs QEMU"
    argv = [qemu, "-machine", "pc,accel=tcg", "-cpu", "max", "-m", "256M", "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "stdio", "-kernel", str(IMAGE / "vmlinux"),
            "-initrd", str(IMAGE / "initrd.img"), "-append", "console=ttyS0 panic=-1 quiet hostname=nettest",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = bytearray()
    try:
        assert _read_until(proc, READY_TEXT, seen, 150), seen.decode(errors="replace")
        assert b"network eth0 up" in seen
        assert proc.stdin is not None
        proc.stdin.write(b"for i in $(seq 30); do ip -4 addr show eth0 | grep -q 10.0.2.15 && break; sleep 1; done;"
                         b" ip -4 addr show eth0; ip route; echo NET-$((1+1))-DONE\n")  # the echo differs
        proc.stdin.flush()
        assert _read_until(proc, "NET-2-DONE", seen, 60), seen.decode(errors="replace")
        out = seen.decode(errors="replace").split("NET-2-DONE", 1)[0]
        assert "inet 10.0.2.15/24" in out and "default via 10.0.2.2" in out, out
    finally:
        proc.kill()
        proc.wait(10)
