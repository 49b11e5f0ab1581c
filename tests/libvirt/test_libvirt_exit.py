"""The libvirt engine's cached connections are closed before the interpreter tears libvirt down: a
command ends with its own output only, no "Exception ignored in virConnect.__del__"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))


def test_up_on_the_test_driver_exits_cleanly():
    proc = subprocess.run([ACRNMGR, "up", "examples/linux-vm.yaml", "--host", "examples/hosts/acrn-service-vm.yaml",
                           "--connect", "test:///default"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "defined linux-demo on test:///default; starting it\n"
