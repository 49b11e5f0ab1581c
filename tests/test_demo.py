"""README command 1: `bash scripts/demo.sh` compiles a spec for ACRN, builds the guest image, boots the qemu
example with its embedded disk and RNG, proves the disk from inside the guest, and stops it."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.guest
@pytest.mark.slow
def test_the_demo_boots_the_example_and_proves_its_embedded_disk(tmp_path):
    env = {**os.environ, "ACRNMGR_STATE_DIR": str(tmp_path / "state"), "ACRNMGR_DEMO_LOG": str(tmp_path / "log")}
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "setuptools" not in out and "Reading package lists" not in out  # apt and pip went to the log
    for seen in ("acrn-dm \"${dm_params[@]}\"",  # the ACRN launch script
                 "image: done",
                 "linux-qemu is up (pid",
                 "linux-qemu: running (engine qemu",
                 "virtio_rng",  # the guest's hwrng is the embedded RNG
                 "linux-qemu stopped (graceful)",
                 "bytes are in"):
        assert seen in out, (seen, out)
    stamp = re.search(r"acrnmgr-demo-\d+", out).group(0)
    assert re.search(rf"^{stamp}$", out, re.M), out  # read back in the guest after dropping its page cache
