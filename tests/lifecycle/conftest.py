import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))
STANDIN = Path(__file__).with_name("standin_acrn_dm.py")


class Env:
    """An isolated host for the acrn engine: state folder, fake sysfs/cpuinfo, stand-in acrn-dm."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.state = root / "state"
        self.mngr = root / "mngr"
        self.cpu = root / "cpu"
        self.remove_cpu = root / "remove_cpu"
        self.starts = root / "starts"
        for d in (self.bin, self.state, self.cpu):
            d.mkdir()
        for n in range(4):
            (self.cpu / f"cpu{n}").mkdir()
            (self.cpu / f"cpu{n}" / "online").write_text("1")
        self.remove_cpu.write_text("")
        (root / "cpuinfo").write_text("".join(f"processor\t: {n}\napicid\t\t: {n * 2}\n\n" for n in range(4)))
        acrn_dm = self.bin / "acrn-dm"
        acrn_dm.write_text(f"#!{sys.executable}\n" + STANDIN.read_text())
        acrn_dm.chmod(0o755)
        self.host = root / "host.yaml"
        self.host.write_text(textwrap.dedent(f"""\
            is_service_vm: true
            hsm_device: /dev/acrn_hsm
            acrn_dm: {acrn_dm}
            acrn_dm_version: "3.2"
            net_tun: true
            lapic_ids: [0, 2, 4, 6]
            hugepages_total: 1024
            hugepages_free: 1024
            iasl: /usr/bin/true
            """))
        (root / "bzImage").write_bytes(b"kernel")
        (root / "disk.img").write_bytes(bytes(1 << 20))
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "ACRNMGR_STATE_DIR": str(self.state),
            "ACRNMGR_ACRN_MNGR_DIR": str(self.mngr),
            "ACRNMGR_HSM_REMOVE_CPU": str(self.remove_cpu),
            "ACRNMGR_CPU_SYSFS": str(self.cpu),
            "ACRNMGR_CPUINFO": str(root / "cpuinfo"),
            "ACRNMGR_LIFE_MNGR_SOCKET": str(root / "life_mngr.sock"),
            "STANDIN_STARTS": str(self.starts),
            "ACRNMGR_STARTUP_WINDOW": "0.3",  # the stand-in starts (or fails) at once; keep the suite quick
        }

    def spec(self, name: str = "vm1", settings: str = "", extra_devices: str = "") -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(textwrap.dedent(f"""\
            apiVersion: acrnmgr/v1
            kind: VM
            metadata: {{name: {name}}}
            spec:
              cpu: {{affinity: [2]}}
              memory: 256M
              boot:
                kernel: {{path: bzImage, cmdline: "console=hvc0"}}
              devices:
                - {{type: virtio-blk, name: root, path: disk.img}}
            """) + extra_devices + settings)
        return path

    def run(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([ACRNMGR, *args], capture_output=True, text=True, env={**self.env, **(env or {})},
                              timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"acrnmgr {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def status(self, name: str) -> dict:
        proc = self.run("status", name, "--output", "json", check=False)
        assert proc.returncode in (0, 3), proc.stderr  # 3: the VM does not run (systemctl is-active)
        return json.loads(proc.stdout)

    def up(self, spec: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return self.run("up", "--engine", "acrn", "--host", str(self.host), *extra, str(spec), env=env)


@pytest.fixture
def acrn_env(tmp_path):
    env = Env(tmp_path)
    yield env
    # Never leave a VM behind, even when a test failed half-way.
    subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=env.env, capture_output=True)
