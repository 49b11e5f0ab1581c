"""Runtime state of managed VMs: one folder per VM, a lock per VM, and process identities.

Layout of <root>/<vm>/ (root: $ACRNMGR_STATE_DIR, else /run/acrnmgr as root, else
$XDG_RUNTIME_DIR/acrnmgr):

    lock             flock'ed by up/down so concurrent operations on one VM serialise
    supervisor.lock  flock'ed by the live supervisor for its whole life (free = no supervisor)
    launch.json      what up asked for: engine, spec path + hash, processes (argv), sockets
    argv             the main process's argv rendered as a shell line (for humans)
    run.json         written by the supervisor: its identity, each process's identity and exit
    stop-requested   present while `down` is stopping the VM (so an exit is not a crash)
    *.log            supervisor.log, one log per process, console.log
    *.sock           QMP, consoles, vhost-user sockets (removed when the VM stops)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator


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


# Process identity ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessIdentity:
    """A pid plus what makes it unique over time: its start time (clock ticks after boot, field 22
    of /proc/<pid>/stat) and its command line. A pid whose start time or cmdline differ is another
    process that reused the number and must never be signalled."""

    pid: int
    start_time: int
    cmdline: list[str]

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity | None":
        start = proc_start_time(pid)
        cmdline = proc_cmdline(pid)
        if start is None or cmdline is None:
            return None
        return cls(pid, start, cmdline)

    def alive(self) -> bool:
        """True when this very process still exists (zombies count as gone)."""
        if proc_state(self.pid) in (None, "Z", "X"):
            return False
        return proc_start_time(self.pid) == self.start_time and proc_cmdline(self.pid) == self.cmdline

    def signal(self, sig: int) -> bool:
        """Send `sig` if and only if this is still the same process. Returns whether it was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ProcessIdentity":
        return cls(int(data["pid"]), int(data["start_time"]), list(data["cmdline"]))


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) is in parentheses and may contain spaces: split after the last ')'.
    rest = text[text.rfind(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def proc_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def proc_start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[22 - 3]) if fields and len(fields) > 19 else None


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]]


# Per-VM folder ---------------------------------------------------------------------------------

class VmState:
    def __init__(self, name: str, root: Path | None = None):
        self.name = name
        self.dir = (root or state_root()) / name

    def ensure(self) -> "VmState":
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    def path(self, name: str) -> Path:
        return self.dir / name

    def exists(self) -> bool:
        return self.path("launch.json").exists()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive per-VM operation lock (blocks until the other up/down finishes)."""
        self.ensure()
        fd = os.open(self.path("lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def supervisor_alive(self) -> bool:
        """The supervisor holds supervisor.lock while it lives; a free lock means it is gone,
        whatever pid files say."""
        try:
            fd = os.open(self.path("supervisor.lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)
        return False

    def read_json(self, name: str) -> dict | None:
        try:
            return json.loads(self.path(name).read_text())
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, data: dict) -> None:
        write_atomic(self.path(name), json.dumps(data, indent=2, sort_keys=True) + "\n")

    def remove(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass

    def tail(self, name: str, lines: int = 20) -> list[str]:
        try:
            with open(self.path(name), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                data = fh.read()
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()[-lines:]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def all_vms(root: Path | None = None) -> list[str]:
    base = root or state_root()
    try:
        return sorted(p.name for p in base.iterdir() if (p / "launch.json").exists())
    except OSError:
        return []


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
