"""Where acrnmgr keeps the state of running VMs (a leaf module: the planner and the lifecycle both need it)."""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    env = os.environ.get("ACRNMGR_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/acrnmgr")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "acrnmgr"
    return Path(f"/tmp/acrnmgr-{os.getuid()}")


def vm_state_dir(name: str) -> Path:
    return state_root() / name
