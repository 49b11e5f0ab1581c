"""`acrnmgr systemd FILE`: a unit that starts the VM at boot and stops it at shutdown."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from acrnmgr.lifecycle.errors import LifecycleError
from acrnmgr.spec.validation import load_spec


def _quote(arg: str) -> str:
    """systemd command-line quoting (and % escaping, since systemd expands specifiers)."""
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in ' \t"\'\\;$'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _acrnmgr() -> str:
    local = Path(sys.executable).with_name("acrnmgr")
    return str(local) if local.exists() else (shutil.which("acrnmgr") or "/usr/bin/acrnmgr")


def render_unit(name: str, spec_path: Path, engine: str, connect: str | None, timeout: float, exe: str) -> str:
    connection = ["--connect", connect] if connect else []
    up = [exe, "up", "--wait-ready", "--engine", engine, *connection, str(spec_path)]
    down = [exe, "down", "--timeout", f"{timeout:g}", *connection, name]
    return f"""[Unit]
Description=acrnmgr VM {name}
Documentation=file://{spec_path}
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={" ".join(map(_quote, up))}
ExecStop={" ".join(map(_quote, down))}
TimeoutStartSec=300
TimeoutStopSec={int(timeout) + 60}

[Install]
WantedBy=multi-user.target
"""


def write_unit(spec_file: Path, engine: str, connect: str | None, unit_dir: Path, timeout: float) -> Path:
    for what, value in (("the spec's path", os.path.realpath(spec_file)), ("--connect", connect or "")):
        if any(ord(c) < 0x20 or c == "\x7f" for c in value):
            # A newline would end the ExecStart= line and start a directive of its own.
            raise LifecycleError(f"{what} {value!r} holds a control character, which a systemd unit cannot hold")
    spec = load_spec(spec_file)
    path = Path(unit_dir) / f"acrnmgr-{spec.name}.service"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_unit(spec.name, Path(spec_file).resolve(), engine, connect, timeout, _acrnmgr()))
    return path
