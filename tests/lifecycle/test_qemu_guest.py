"""The qemu engine end to end with a real Linux guest (tests/guest), through the real CLI:
up -> status -> the guest writes its disk -> down (ACPI power button) -> the write is in the image,
and nothing is left behind. Also: the embedded device model killed mid-run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from acrnmgr.lifecycle.state import VmState, wait_until

pytestmark = pytest.mark.guest

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))
BOOT_TIMEOUT = 300  # TCG boots of the guest kernel are slow on a loaded 2-core box


@pytest.fixture(scope="module")
def guest():
    from tests.guest.build import build_guest_image
    from tests.guest.qemu import pick_accel

    image = build_guest_image()
    return image, pick_accel(image)


class QemuVm:
    def __init__(self, root: Path, image, accel: str, script: str, backend: str):
        from tests.guest.build import initrd_with_script
        from tests.guest.vmspec import write_guest_spec, write_host_profile

        self.root = root
        self.name = "e2e" + backend.replace("-", "")[:6]
        self.disk = root / "disk.img"
        self.disk.write_bytes(bytes(16 << 20))
        initrd = initrd_with_script(script, root)
        self.host = write_host_profile(root / "host.yaml", accel, net_tun=True)
        mode = "legacy" if backend == "vbs-u" else "modern"
        disk = f"- {{type: virtio-blk, name: root, path: disk.img, mode: {mode}, backend: {backend}}}"
        self.spec = write_guest_spec(root / f"{self.name}.yaml", self.name, image, initrd, disk)
        self.state = root / "state"
        self.env = {**os.environ, "ACRNMGR_STATE_DIR": str(self.state)}

    def run(self, *args, check=True):
        proc = subprocess.run([ACRNMGR, *args], capture_output=True, text=True, env=self.env, timeout=600)
        if check and proc.returncode != 0 and not (args[0] == "status" and proc.returncode == 3):  # 3: not running
            raise AssertionError(f"acrnmgr {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
                                 f"\n{self.logs()}")
        return proc

    def logs(self) -> str:
        return subprocess.run([ACRNMGR, "logs", self.name], capture_output=True, text=True, env=self.env).stdout

    def status(self) -> dict:
        return json.loads(self.run("status", self.name, "--output", "json").stdout)

    def console_has(self, marker: str) -> bool:
        log = self.state / self.name / "console.log"
        return log.exists() and marker in log.read_text(errors="replace")

    def wait_console(self, marker: str) -> None:
        if not wait_until(lambda: self.console_has(marker), BOOT_TIMEOUT, 0.5):
            raise AssertionError(f"guest never printed {marker}\n{self.logs()}")

    def leftovers(self) -> list[str]:
        run = VmState(self.name, self.state).read_run()
        alive = [f"{p.name} pid {p.identity.pid}" for p in run.processes if p.identity.alive()]
        if run.supervisor.alive():
            alive.append(f"supervisor pid {run.supervisor.pid}")
        sockets = [str(p) for p in (self.state / self.name).iterdir() if p.is_socket()]
        return alive + sockets


@pytest.fixture
def make_vm(tmp_path, guest):
    """Build a QemuVm; whatever happens in the test, its VM is stopped afterwards."""
    made = []

    def make(script: str, backend: str) -> QemuVm:
        made.append(QemuVm(tmp_path, *guest, script, backend))
        return made[-1]

    yield make
    for vm in made:
        subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=vm.env, capture_output=True)


WRITE_AND_SERVE = """\
printf 'acrnmgr-e2e-%s' "$(cat /proc/sys/kernel/random/boot_id)" > /tmp/marker
dd if=/tmp/marker of=/dev/vda bs=4096 seek=1 conv=notrunc,fsync 2>/dev/null
sync
echo "ACRNMGR-WROTE $(cat /tmp/marker)"
echo "acrnmgr-guest: ready"  # examples/linux-qemu.yaml's spec.console.ready pattern
while :; do sleep 1; done
"""


def _marker(vm: QemuVm) -> str:
    text = (vm.state / vm.name / "console.log").read_text(errors="replace")
    return text.split("ACRNMGR-WROTE ", 1)[1].split()[0]


@pytest.mark.parametrize("backend", ["embedded", "vbs-u"])
def test_up_write_down_graceful(make_vm, backend):
    vm = make_vm(WRITE_AND_SERVE, backend)
    vm.run("up", "--engine", "qemu", "--host", str(vm.host), "--wait-ready", str(vm.spec))
    st = vm.status()
    assert st["state"] == "running" and st["vm_status"] == "running" and st["engine"] == "qemu"
    if backend == "embedded":
        assert st["processes"]["devmodel-root"]["alive"]
    vm.wait_console("ACRNMGR-WROTE")
    assert vm.status()["state"] == "running"

    down = vm.run("down", vm.name, "--timeout", "120")
    assert "system_powerdown" in down.stderr and "(graceful)" in down.stderr, down.stderr
    assert vm.console_has("ACRNMGR-GUEST-POWERDOWN")
    st = vm.status()
    assert st["state"] == "stopped" and st["exit_code"] == 0

    marker = _marker(vm).encode()
    with open(vm.disk, "rb") as fh:
        fh.seek(4096)
        assert fh.read(len(marker)) == marker
    assert vm.leftovers() == []


def test_devmodel_killed_mid_run_is_reported_and_keeps_flushed_data(make_vm):
    vm = make_vm(WRITE_AND_SERVE, "embedded")
    vm.run("up", "--engine", "qemu", "--host", str(vm.host), "--wait-ready", str(vm.spec))
    vm.wait_console("ACRNMGR-WROTE")
    pid = vm.status()["processes"]["devmodel-root"]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: vm.status()["state"] == "degraded", 30)
    st = vm.status()
    assert st["degraded"] == [{"process": "devmodel-root", "device": "root", "exit_code": 137, "signal": 9}]
    text = vm.run("status", vm.name).stdout
    assert "degraded" in text and "device root" in text and "signal 9" in text

    # The guest may hang flushing a disk whose backend is gone: down escalates as needed.
    vm.run("down", vm.name, "--timeout", "10")
    marker = _marker(vm).encode()
    with open(vm.disk, "rb") as fh:
        fh.seek(4096)
        assert fh.read(len(marker)) == marker
    assert vm.leftovers() == []


EXAMPLE_SCRIPT = """\
printf 'acrnmgr-example-%s' "$(cat /proc/sys/kernel/random/boot_id)" > /tmp/marker
dd if=/tmp/marker of=/dev/vda bs=4096 seek=1 conv=notrunc,fsync 2>/dev/null
sync
head -c 64 /dev/hwrng | wc -c | grep -qx 64 || echo "ACRNMGR-NO-RNG"
echo "ACRNMGR-WROTE $(cat /tmp/marker)"
echo "acrnmgr-guest: ready"  # examples/linux-qemu.yaml's spec.console.ready pattern
while :; do sleep 1; done
"""


def test_the_linux_qemu_example_boots_with_its_embedded_disk(make_vm, guest):
    """examples/linux-qemu.yaml itself, with only its host paths (kernel, initrd, image, socket) patched."""
    import yaml

    from acrnmgr.gitops.desired import merge_patch
    from tests.guest.build import initrd_with_script

    vm = make_vm(EXAMPLE_SCRIPT, "embedded")
    example = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "linux-qemu.yaml").read_text())
    devices = example["spec"]["devices"]
    assert [(d["type"], d.get("backend")) for d in devices] == [
        ("virtio-blk", "embedded"), ("virtio-console", None), ("virtio-rnd", "embedded")]
    devices[0]["path"] = str(vm.disk)
    devices[1]["ports"][0]["path"] = str(vm.root / "agent.sock")
    spec = merge_patch(example, {"spec": {"boot": {"kernel": {
        "path": str(guest[0].kernel), "initrd": str(initrd_with_script(EXAMPLE_SCRIPT, vm.root))}}}})
    vm.name = spec["metadata"]["name"]
    vm.spec.write_text(yaml.safe_dump(spec, sort_keys=False))

    vm.run("up", "--engine", "qemu", "--host", str(vm.host), "--wait-ready", str(vm.spec))
    st = vm.status()
    assert st["state"] == "running"
    assert st["processes"]["devmodel-data"]["alive"] and st["processes"]["devmodel-rng"]["alive"]
    vm.wait_console("ACRNMGR-WROTE")
    assert not vm.console_has("ACRNMGR-NO-RNG")
    down = vm.run("down", vm.name, "--timeout", "120")
    assert "(graceful)" in down.stderr, down.stderr
    marker = _marker(vm).encode()
    with open(vm.disk, "rb") as fh:
        fh.seek(4096)
        assert fh.read(len(marker)) == marker
    assert vm.leftovers() == []
