"""`logs` and `console`: read what a VM wrote, or attach a terminal to its console."""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from pathlib import Path

from acrnmgr.lifecycle.engine import Engine

DETACH = b"\x1d"  # Ctrl-]
LINGER = 2.0  # seconds of console quiet after a piped stdin ends


def show(engine: Engine, name: str, follow: bool = False, tail: int | None = None) -> None:
    """Print every log of the VM (with tail, the last `tail` lines of each); with follow, keep printing what is
    appended until it stops."""
    out = sys.stdout.buffer
    offsets: dict[Path, int] = {}
    for path in engine.log_files(name):
        data = path.read_bytes()
        offsets[path] = len(data)
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail else b""
        out.write(f"==> {path.name} <==\n".encode() + data + (b"" if data.endswith(b"\n") or not data else b"\n"))
    out.flush()
    if not follow:
        return
    last = None
    while True:
        alive = engine.active(name)
        wrote = False
        for path in engine.log_files(name):
            with open(path, "rb") as fh:
                fh.seek(offsets.get(path, 0))
                data = fh.read()
            if data:
                offsets[path] = offsets.get(path, 0) + len(data)
                if last != path:
                    out.write(f"==> {path.name} <==\n".encode())
                    last = path
                out.write(data)
                wrote = True
        out.flush()
        if not alive and not wrote:
            return
        time.sleep(0.2)


def attach_console(engine: Engine, name: str, port: str | None = None, linger: float = LINGER) -> None:
    target = engine.console(name, port)
    sys.stderr.write(f"attached to {name} console {target.name} ({target.path}); detach with Ctrl-]\n")
    if target.kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(target.path)
        fd = os.dup(sock.fileno())
        sock.close()
    else:
        fd = os.open(target.path, os.O_RDWR | os.O_NOCTTY)
    _bridge(fd, linger)


def _bridge(fd: int, linger: float = LINGER) -> None:
    """Copy stdin to the console and the console to stdout. From a terminal: until Ctrl-]. From a pipe or a
    file (`echo cmd | acrnmgr console vm`): until stdin ends, then until the console is quiet for `linger` s."""
    stdin = sys.stdin.fileno()
    watched = [stdin, fd]
    saved = None
    if os.isatty(stdin):
        import termios
        import tty

        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    try:
        while True:
            ready, _, _ = select.select(watched, [], [], None if stdin in watched else linger)
            if not ready:
                break  # stdin has ended and the console has been quiet for `linger` seconds
            if fd in ready:
                data = os.read(fd, 4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 4096)
                if DETACH in data or (not data and saved is not None):
                    break
                if not data:
                    watched.remove(stdin)
                    continue
                os.write(fd, data)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        os.close(fd)
