"""`up` does not report success for a dead VM: a VM that dies at once is an exit 1 with the reason and its last
log lines, and `--wait-ready` waits for spec.console.ready's pattern (with progress) or says why it stopped."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))

pytestmark = pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64")


def _spec(tmp_path: Path, ready: str = "") -> Path:
    (tmp_path / "bzImage").write_bytes(bytes(4096))  # what examples/images/ holds: not a kernel
    (tmp_path / "initrd.img").write_bytes(bytes(4096))
    spec = tmp_path / "dead.yaml"
    spec.write_text(textwrap.dedent("""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {name: dead1}
        spec:
          cpu: {affinity: [0]}
          memory: 128M
          boot:
            kernel: {path: bzImage, initrd: initrd.img, cmdline: "console=ttyS0"}
          console:
            lpc: [{port: com1, backend: stdio}]
        """) + ready)
    return spec


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    host = tmp_path / "host.yaml"
    host.write_text("kvm: false\nlapic_ids: [0, 1]\n")
    env = {**os.environ, "ACRNMGR_STATE_DIR": str(tmp_path / "state")}
    return subprocess.run([ACRNMGR, *args[:1], "--engine", "qemu", "--host", str(host), *args[1:]]
                          if args[0] == "up" else [ACRNMGR, *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture
def no_vm_left(tmp_path):
    yield
    _run(tmp_path, "down", "--all", "--force", "--timeout", "1")


@pytest.mark.parametrize("wait", [False, True], ids=["plain", "wait-ready"])
def test_up_of_a_vm_that_dies_at_once_fails_with_the_reason(tmp_path, wait, no_vm_left):
    spec = _spec(tmp_path, '    ready: {pattern: "login:", timeout: 30}\n')
    proc = _run(tmp_path, "up", *(["--wait-ready"] if wait else []), str(spec))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "started (pid" not in proc.stderr
    assert "error: dead1 died during start (crashed: exit code 1)" in proc.stderr, proc.stderr
    assert "last lines of its log:" in proc.stderr
    assert "linux kernel too old to load a ram disk" in proc.stderr  # QEMU's own words
    assert "checking that dead1 stays up" in proc.stderr  # progress while it waits
    st = json.loads(_run(tmp_path, "status", "dead1", "--output", "json").stdout)
    assert st["state"] == "crashed"


def test_a_bad_ready_pattern_spec_is_refused(tmp_path):
    spec = _spec(tmp_path, "    ready: {timeout: 3}\n")
    proc = _run(tmp_path, "up", str(spec))
    assert proc.returncode == 1 and "pattern" in proc.stderr and "Traceback" not in proc.stderr
