"""The qemu engine with firmware only (OVMF, no OS): QMP status, and a guest that ignores the ACPI
power button, so `down` must fall back from system_powerdown to quit."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))
OVMF = Path("/usr/share/OVMF")

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-system-x86_64") and (OVMF / "OVMF_CODE.fd").exists()),
    reason="needs qemu-system-x86_64 and OVMF (Debian: qemu-system-x86, ovmf)",
)


def test_powerdown_ignored_then_quit(tmp_path):
    spec = tmp_path / "fw1.yaml"
    spec.write_text(textwrap.dedent(f"""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {{name: fw1}}
        spec:
          cpu: {{affinity: [0]}}
          memory: 256M
          boot:
            ovmf: {{code: {OVMF}/OVMF_CODE.fd, vars: {OVMF}/OVMF_VARS.fd}}
          console:
            lpc: [{{port: com1, backend: stdio}}]
          devices:
            - {{type: virtio-rnd, backend: vbs-u}}
        """))
    host = tmp_path / "host.yaml"
    host.write_text("kvm: false\nlapic_ids: [0, 1]\n")
    env = {**os.environ, "ACRNMGR_STATE_DIR": str(tmp_path / "state")}

    def run(*args):
        proc = subprocess.run([ACRNMGR, *args], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0 or (args[0] == "status" and proc.returncode == 3), proc.stderr
        return proc

    vars_before = (OVMF / "OVMF_VARS.fd").read_bytes()
    try:
        _check(run, spec, host, tmp_path)
    finally:
        subprocess.run([ACRNMGR, "down", "--all", "--force"], env=env, capture_output=True)
    assert (OVMF / "OVMF_VARS.fd").read_bytes() == vars_before


def _check(run, spec, host, tmp_path):
    run("up", "--engine", "qemu", "--host", str(host), "--wait-ready", str(spec))
    st = json.loads(run("status", "fw1", "--output", "json").stdout)
    assert (st["state"], st["vm_status"]) == ("running", "running")
    state = tmp_path / "state" / "fw1"
    assert (state / "qmp.sock").is_socket() and (state / "com1.console.sock").is_socket()
    assert (state / "OVMF_VARS.fd.run").exists()  # without writeback the guest gets a copy

    down = run("down", "fw1", "--timeout", "2")
    assert "system_powerdown" in down.stderr and "sent quit over QMP" in down.stderr and "(forced)" in down.stderr
    assert json.loads(run("status", "fw1", "--output", "json").stdout)["state"] == "stopped"
    assert [p.name for p in state.iterdir() if p.is_socket() or p.name.endswith(".run")] == []
