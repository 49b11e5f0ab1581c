"""`acrnmgr gpio` without a running VM: each refusal says why (the running VM's side: tests/devmodel/e2e)."""

import os
import subprocess
import sys
from pathlib import Path

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))


def run(tmp_path, *args):
    env = {**os.environ, "ACRNMGR_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    return subprocess.run([ACRNMGR, "gpio", *args], capture_output=True, text=True, env=env, timeout=60)


def test_unknown_vm(tmp_path):
    proc = run(tmp_path, "get", "nosuch")
    assert proc.returncode == 1 and proc.stderr.startswith("error: no VM named nosuch"), proc.stderr


def test_values_are_0_or_1(tmp_path):
    proc = run(tmp_path, "set", "vm", "led", "2")
    assert proc.returncode == 2 and "it must be at most 1" in proc.stderr, proc.stderr


def test_serve_gpio_usage(tmp_path):
    def serve(*args):
        return subprocess.run([ACRNMGR, "devmodel", "serve", "--socket", str(tmp_path / "v.sock"), *args],
                              capture_output=True, text=True, timeout=60)

    proc = serve("--device", "gpio")
    assert proc.returncode == 2 and "--device gpio needs at least one --line" in proc.stderr
    proc = serve("--device", "rng", "--line", "led")
    assert proc.returncode == 2 and "applies to --device gpio only" in proc.stderr
    proc = serve("--device", "gpio", "--line", "led:sideways")
    assert proc.returncode == 1 and "--line 'led:sideways'" in proc.stderr and "is not in or out" in proc.stderr
    proc = serve("--device", "gpio", "--line", "led", "--line", "led")
    assert proc.returncode == 1 and "unique" in proc.stderr
    assert not (tmp_path / "v.sock").exists()
