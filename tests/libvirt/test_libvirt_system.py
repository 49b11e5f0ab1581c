"""The libvirt engine on qemu:///system with the real test guest (tests/guest), through the real CLI:
up defines and starts the domain, status says running, the guest writes a marker to its virtio-blk
disk (QEMU's own with backend vbs-u; with backend embedded a <disk type='vhostuser'> served by an
`acrnmgr devmodel serve` process that up starts under the lifecycle supervisor; with backend vhost-user a
<disk type='vhostuser'> on the socket of a qemu-storage-daemon the test starts, which acrnmgr leaves alone) and
reports READY on its
serial console (stdio, which libvirt's virtlogd writes to /var/log/libvirt/qemu/<name>.log), down presses
the ACPI power button and the guest powers itself off. Afterwards the marker is in the image, the domain
is defined but shut off (the engine's down keeps the definition) and no QEMU or device model of it is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest
ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))
TIMEOUT = 120.0  # generous: under TCG the guest boots in ~20 s


def _qemu_pids(name: str) -> list[int]:
    """PIDs of processes whose argv names the domain (libvirt starts QEMU with -name guest=<name>,...)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.startswith(f"guest={name},".encode()) for a in argv):
                pids.append(int(entry))
    return pids


@pytest.mark.parametrize("backend", ["vbs-u", "embedded", "vhost-user"])
def test_up_status_down_with_a_real_guest(system_libvirt, guest_image, tmp_path, backend):
    import libvirt

    from tests.guest import POWERDOWN_MARKER, READY_MARKER, initrd_with_script, pick_accel
    from tests.guest.vmspec import write_guest_spec, write_host_profile

    uri = system_libvirt
    name = f"lvsys-{uuid.uuid4().hex[:8]}"  # acrn-dm VM names: at most 15 characters
    marker = f"LIBVIRT-SYSTEM-MARKER-{name}"
    console = Path(f"/var/log/libvirt/qemu/{name}.log")
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(8 << 20))
    initrd = initrd_with_script(f"settle_devices\necho {marker} > /dev/vda\nwait_for_powerdown\n", tmp_path)
    host = write_host_profile(tmp_path / "host.yaml", pick_accel(guest_image), net_tun=True)
    spec = write_guest_spec(tmp_path / "vm.yaml", name, guest_image, initrd,
                            f"- {{type: virtio-blk, name: root, path: disk.img, backend: {backend}}}",
                            memory="256M", cmdline=guest_image.cmdline)
    served = tmp_path / "served" / "vhost-blk.0"
    storage_daemon = None
    if backend == "vhost-user":  # the other process: acrnmgr attaches the domain to its socket, nothing more
        served.parent.mkdir()
        storage_daemon = subprocess.Popen(
            ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=disk,filename={disk}", "--export",
             f"type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={served},writable=on"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not served.exists():
            assert storage_daemon.poll() is None and time.monotonic() < deadline, "qemu-storage-daemon did not start"
            time.sleep(0.05)
        spec.write_text(spec.read_text().replace(f"path: disk.img, backend: {backend}",
                                                 f"backend: vhost-user, socket: {served}"))

    env = {**os.environ, "ACRNMGR_STATE_DIR": str(tmp_path / "state")}  # the device models' state folder
    socket = tmp_path / "state" / name / "root.vhost.sock"

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([ACRNMGR, *args], capture_output=True, text=True, timeout=TIMEOUT + 30, env=env)
        assert proc.returncode == 0 or (args[0] == "status" and proc.returncode == 3), \
            f"acrnmgr {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def console_text() -> str:
        return console.read_text(errors="replace") if console.exists() else ""

    conn = libvirt.open(uri)
    try:
        up = run("up", str(spec), "--engine", "libvirt", "--connect", uri, "--host", str(host))
        assert f"defined {name} on {uri}" in up.stderr
        st = json.loads(run("status", name, "--connect", uri, "--output", "json").stdout)
        assert st["state"] == "running" and st["engine"] == "libvirt"
        assert len(_qemu_pids(name)) == 1
        if backend == "vhost-user":
            disk_el = ET.fromstring(conn.lookupByName(name).XMLDesc()).find("devices/disk")
            assert disk_el.get("type") == "vhostuser" and disk_el.find("source").get("path") == str(served)
            assert not (tmp_path / "state" / name / "run.json").exists()  # no device model of ours to supervise
        if backend == "embedded":
            disk_el = ET.fromstring(conn.lookupByName(name).XMLDesc()).find("devices/disk")
            assert disk_el.get("type") == "vhostuser" and disk_el.find("source").get("path") == str(socket)
            helpers = json.loads(run("status", name, "--output", "json").stdout)  # the supervisor's view
            assert helpers["engine"] == "libvirt" and helpers["state"] == "running", helpers
            assert helpers["processes"]["devmodel-root"]["alive"]
            devmodel_pid = helpers["processes"]["devmodel-root"]["pid"]

        deadline = time.monotonic() + TIMEOUT
        while READY_MARKER not in console_text():
            assert conn.lookupByName(name).isActive(), f"the guest stopped before READY:\n{console_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {READY_MARKER} within {TIMEOUT:g} s:\n{console_text()[-3000:]}"
            time.sleep(0.2)

        down = run("down", name, "--connect", uri, "--timeout", str(int(TIMEOUT)))
        assert f"{name} stopped (graceful)" in down.stderr, down.stderr
        assert POWERDOWN_MARKER in console_text()  # the guest saw the power button and powered off
        assert disk.read_bytes().startswith(marker.encode() + b"\n")
        st = json.loads(run("status", name, "--connect", uri, "--output", "json").stdout)
        assert st["state"] == "stopped" and st["id"] is None  # down keeps the definition, shut off
        assert _qemu_pids(name) == []
        if backend == "embedded":
            assert not Path(f"/proc/{devmodel_pid}").exists() and not socket.exists()
            assert json.loads(run("status", name, "--output", "json").stdout)["state"] == "stopped"
        if backend == "vhost-user":
            assert storage_daemon.poll() is None and served.is_socket()  # not ours: left running
    finally:
        if storage_daemon is not None:
            storage_daemon.terminate()
            storage_daemon.wait(10)
        subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=env, capture_output=True)
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
        conn.close()
        console.unlink(missing_ok=True)
