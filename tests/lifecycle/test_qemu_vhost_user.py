"""backend: vhost-user end to end: `acrnmgr up --engine qemu` attaches a real Linux guest to vhost-user sockets that
another process serves, which the test starts as that other process: qemu-storage-daemon's vhost-user-blk export
and our own `acrnmgr devmodel serve` (blk, and net on a tap). The guest reads and writes the disk, pings over the
NIC; after `down` the other process is still running and its socket is still there (acrnmgr never owns it)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acrnmgr.lifecycle.state import wait_until

pytestmark = pytest.mark.guest

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))
BOOT_TIMEOUT = 300
MiB = 1 << 20


@pytest.fixture(scope="module")
def guest():
    from tests.guest.build import build_guest_image
    from tests.guest.qemu import pick_accel

    image = build_guest_image()
    return image, pick_accel(image)


class Server:
    """The other process: serves a vhost-user socket until the test stops it."""

    def __init__(self, argv: list[str], sock: Path, log: Path) -> None:
        self.sock, self.log = sock, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        if not wait_until(lambda: sock.exists() or self.proc.poll() is not None, 20, 0.05) or not sock.exists():
            raise AssertionError(f"{argv[0]} did not serve {sock}:\n{log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def blk_server(kind: str, image: Path, sock: Path, log: Path) -> Server:
    if kind == "qemu-storage-daemon":
        return Server(["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=disk,filename={image}",
                       "--export", f"type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={sock},"
                                   "writable=on"], sock, log)
    return Server([ACRNMGR, "devmodel", "serve", "--device", "blk", "--socket", str(sock), "--image", str(image)],
                  sock, log)


class Vm:
    def __init__(self, root: Path, guest, script: str, devices: str, extra: str = "") -> None:
        """``extra``: more spec-level lines (2-space indented)."""
        from tests.guest.build import initrd_with_script
        from tests.guest.vmspec import write_guest_spec, write_host_profile

        image, accel = guest
        self.name, self.root = "vu-e2e", root
        initrd = initrd_with_script(script, root)
        self.host = write_host_profile(root / "host.yaml", accel, net_tun=True)
        self.spec = write_guest_spec(root / "vm.yaml", self.name, image, initrd, devices, settings=extra)
        self.state = root / "state"
        self.env = {**os.environ, "ACRNMGR_STATE_DIR": str(self.state)}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([ACRNMGR, *args], capture_output=True, text=True, env=self.env, timeout=600)
        if proc.returncode != 0:
            logs = subprocess.run([ACRNMGR, "logs", self.name], capture_output=True, text=True, env=self.env).stdout
            raise AssertionError(f"acrnmgr {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
                                 f"\n{logs}")
        return proc

    def console(self) -> str:
        log = self.state / self.name / "console.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def wait_console(self, marker: str) -> str:
        if not wait_until(lambda: marker in self.console(), BOOT_TIMEOUT, 0.5):
            raise AssertionError(f"guest never printed {marker}:\n{self.console()[-3000:]}")
        return self.console()

    def down(self) -> None:
        subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=self.env, capture_output=True)


@pytest.fixture
def cleanup():
    things: list = []
    yield things
    for thing in reversed(things):
        thing.down() if isinstance(thing, Vm) else thing.stop()


READ_WRITE = """\
echo "ACRNMGR-SIZE $(cat /sys/block/vda/size)"
echo "ACRNMGR-READ $(dd if=/dev/vda bs=1M count=4 2>/dev/null | md5sum | cut -d' ' -f1)"
printf 'written-by-the-guest' | dd of=/dev/vda bs=4096 seek=1 conv=notrunc,fsync 2>/dev/null
sync
echo "ACRNMGR-WROTE"
while :; do sleep 1; done
"""


@pytest.mark.parametrize("server", ["qemu-storage-daemon", "acrnmgr-devmodel"])
def test_guest_reads_and_writes_a_disk_another_process_serves(tmp_path, guest, cleanup, server):
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(16 * MiB))
    before = hashlib.md5(image.read_bytes()[:4 * MiB]).hexdigest()
    sock = tmp_path / "served" / "vhost-blk.0"
    sock.parent.mkdir()
    cleanup.append(blk_server(server, image, sock, tmp_path / "server.log"))
    vm = Vm(tmp_path, guest, READ_WRITE,
            f"- {{type: virtio-blk, name: data, backend: vhost-user, socket: {sock}, reconnect: 1}}\n")
    cleanup.append(vm)
    plan = vm.run("render", str(vm.spec), "--engine", "qemu", "--host", str(vm.host)).stdout
    assert (f"socket,id=cdev3,path={sock},reconnect=1 -device vhost-user-blk-pci,chardev=cdev3,num-queues=1,addr=0x3"
            in plan)
    vm.run("up", "--engine", "qemu", "--host", str(vm.host), str(vm.spec))
    processes = json.loads(vm.run("status", vm.name, "--output", "json").stdout)["processes"]
    assert not [p for p in processes if p.startswith("devmodel")], processes  # nothing of ours serves the disk
    out = vm.wait_console("ACRNMGR-WROTE")
    assert re.search(r"ACRNMGR-SIZE (\d+)", out).group(1) == str(16 * MiB // 512)
    assert re.search(r"ACRNMGR-READ (\w+)", out).group(1) == before
    vm.run("down", vm.name, "--timeout", "120")
    with open(image, "rb") as fh:
        fh.seek(4096)
        assert fh.read(20) == b"written-by-the-guest"
    # the serving process and its socket are its own: still there after the VM is gone
    assert cleanup[0].proc.poll() is None and sock.is_socket()


TAP = "acrnmgr-vu0"
HOST_IP, GUEST_IP = "10.213.78.1", "10.213.78.2"
MAC = "52:54:00:a1:b2:c4"


@pytest.fixture
def tap():
    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    subprocess.run(["ip", "link", "del", TAP], capture_output=True, check=False)
    ip("tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr")
    try:
        ip("addr", "add", f"{HOST_IP}/24", "dev", TAP)
        ip("link", "set", TAP, "up")
        yield TAP
    finally:
        subprocess.run(["ip", "link", "del", TAP], capture_output=True, check=False)


def test_guest_pings_over_a_nic_another_process_serves(tmp_path, guest, cleanup, tap):
    sock = tmp_path / "vhu0.sock"
    cleanup.append(Server([ACRNMGR, "devmodel", "serve", "--device", "net", "--socket", str(sock), "--tap", tap,
                           "--mac", MAC], sock, tmp_path / "server.log"))
    script = f"""\
echo "ACRNMGR-MAC $(cat /sys/class/net/eth0/address)"
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
if ping -c 3 -W 5 {HOST_IP}; then echo ACRNMGR-PING-OK; else echo ACRNMGR-PING-FAILED; fi
while :; do sleep 1; done
"""
    vm = Vm(tmp_path, guest, script,
            f"- {{type: virtio-net, backend: vhost-user, socket: {sock}, mac: '{MAC}'}}\n")
    cleanup.append(vm)
    vm.run("up", "--engine", "qemu", "--host", str(vm.host), str(vm.spec))
    deadline = time.monotonic() + BOOT_TIMEOUT
    while "ACRNMGR-PING-" not in vm.console() and time.monotonic() < deadline:
        time.sleep(0.5)
    out = vm.console()
    assert "ACRNMGR-PING-OK" in out, out[-3000:] + (tmp_path / "server.log").read_text(errors="replace")
    assert f"ACRNMGR-MAC {MAC}" in out
    vm.run("down", vm.name, "--timeout", "120")
    assert sock.is_socket()
