"""`logs` and `console`: read what a VM wrote, or attach a terminal to its console."""

from __future__ import annotations

import os
import select
import socket
import sys
import time

from acrnmgr.lifecycle.engine import LifecycleError
from acrnmgr.lifecycle.state import VmState, all_vms

DETACH = b"\x1d"  # Ctrl-]


def _state(name: str) -> tuple[VmState, dict]:
    state = VmState(name)
    launch = state.read_json("launch.json")
    if launch is None:
        raise LifecycleError(f"no VM named {name} (known: {', '.join(all_vms()) or 'none'})")
    return state, launch


def _log_files(state: VmState, launch: dict) -> list[str]:
    names = ["console.log"] + [f"{p['name']}.log" for p in reversed(launch["processes"])] + ["supervisor.log"]
    return [n for n in names if state.path(n).exists()]


def show(name: str, follow: bool = False) -> None:
    state, launch = _state(name)
    files = _log_files(state, launch)
    out = sys.stdout.buffer
    offsets = {}
    for n in files:
        data = state.path(n).read_bytes()
        offsets[n] = len(data)
        out.write(f"==> {n} <==\n".encode() + data + (b"" if data.endswith(b"\n") or not data else b"\n"))
    out.flush()
    if not follow:
        return
    last = None
    while True:
        alive = state.supervisor_alive()
        wrote = False
        for n in _log_files(state, launch):
            path = state.path(n)
            with open(path, "rb") as fh:
                fh.seek(offsets.get(n, 0))
                data = fh.read()
            if data:
                offsets[n] = offsets.get(n, 0) + len(data)
                if last != n:
                    out.write(f"==> {n} <==\n".encode())
                    last = n
                out.write(data)
                wrote = True
        out.flush()
        if not alive and not wrote:
            return
        time.sleep(0.2)


def attach_console(name: str) -> None:
    state, launch = _state(name)
    if not state.supervisor_alive():
        raise LifecycleError(f"{name} is not running")
    consoles = launch.get("info", {}).get("consoles", [])
    target = next((c for c in consoles if c["kind"] == "socket" and c.get("path")), None) or next(
        (c for c in consoles if c["kind"] in ("pty", "tty") and c.get("path")), None
    )
    if target is None:
        raise LifecycleError(f"{name} has no console acrnmgr can attach to (give it a stdio, socket or pty console)")
    sys.stderr.write(f"attached to {name} console {target['name']} ({target['path']}); detach with Ctrl-]\n")
    if target["kind"] == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(target["path"])
        fd = sock.fileno()
    else:
        fd = os.open(target["path"], os.O_RDWR | os.O_NOCTTY)
    _bridge(fd)


def _bridge(fd: int) -> None:
    stdin = sys.stdin.fileno()
    saved = None
    if os.isatty(stdin):
        import termios
        import tty

        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    try:
        while True:
            ready, _, _ = select.select([stdin, fd], [], [])
            if fd in ready:
                data = os.read(fd, 4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data or DETACH in data:
                    break
                os.write(fd, data)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        os.close(fd)
