"""QEMU's vhost-user-rng front-end has no config space support: our rng back-end must not offer
VHOST_USER_PROTOCOL_F_CONFIG, or QEMU logs a warning on every start (it did, in every qemu.log). No guest boots:
the vhost-user handshake happens when QEMU realizes the device, with the machine paused (-S)."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64")
def test_qemu_does_not_warn_about_config_for_the_embedded_rng(tmp_path):
    folder = tmp_path / "sock"
    folder.mkdir(mode=0o700)
    sock = folder / "rng.sock"
    serve = subprocess.Popen([ACRNMGR, "devmodel", "serve", "--device", "rng", "--socket", str(sock)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.exists(), serve.stderr.read() if serve.poll() is not None else "no socket"
        qemu = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "128M",
             "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-numa", "node,memdev=mem",
             "-nodefaults", "-display", "none", "-S", "-monitor", "stdio",
             "-chardev", f"socket,id=r,path={sock}", "-device", "vhost-user-rng-pci,chardev=r"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = qemu.communicate("info pci\nquit\n", timeout=60)
        assert qemu.returncode == 0, err
        assert "Class 00ff: Device 1af4:1044" in out or "1af4:1044" in out  # the device is there (virtio-rng)
        assert "VHOST_USER_PROTOCOL_F_CONFIG" not in err, err
    finally:
        serve.terminate()
        serve.wait(timeout=10)
