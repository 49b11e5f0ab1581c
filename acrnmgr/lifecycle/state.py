"""Runtime state of managed VMs: one folder per VM, a lock per VM, and process identities.

Layout of <root>/<vm>/ (root: $ACRNMGR_STATE_DIR, else /run/acrnmgr as root, else
$XDG_RUNTIME_DIR/acrnmgr):

    lock             flock'ed by up/down so concurrent operations on one VM serialise
    supervisor.lock  flock'ed by the live supervisor for its whole life (free = no supervisor)
    launch.json      what up asked for (LaunchRecord): engine, spec path + hash, processes, sockets
    argv             the main process's argv rendered as a shell line (for humans)
    run.json         written by the supervisor (RunRecord): its identity, each process's identity and exit
    stop-requested   present while `down` is stopping the VM (so an exit is not a crash)
    *.log            supervisor.log, one log per process, console.log
    *.sock           QMP, consoles, vhost-user sockets (removed when the VM stops)

launch.json and run.json are typed records with a kind and a schema version; reading one that is
corrupt, foreign or of another version raises StateError with a message for the user.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator

from acrnmgr.lifecycle.errors import StateError
from acrnmgr.paths import state_root

# metadata.name in schemas/vm.schema.json (acrn-dm's VM name); a name becomes a folder name.
VM_NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")


def check_name(name: str) -> str:
    """`name` if it is a valid VM name, else StateError (so `../../x` never becomes a path)."""
    if not isinstance(name, str) or not VM_NAME.fullmatch(name):
        raise StateError(f"invalid VM name {name!r}: a VM name is 1 to 15 letters, digits, '_' or '-'")
    return name


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
    def from_dict(cls, data: Any, where: str = "identity") -> "ProcessIdentity":
        d = _obj(data, where)
        return cls(_get(d, "pid", int, where), _get(d, "start_time", int, where),
                   list(_strings(_get(d, "cmdline", list, where), f"{where}.cmdline")))


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


# Typed state records ------------------------------------------------------------------------

_REQUIRED = object()


def _type_name(kind) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object",
             bool: "a boolean"}
    return names.get(kind, kind.__name__)


def _get(d: dict, key: str, kind, where: str, default: Any = _REQUIRED) -> Any:
    """d[key], checked to be of `kind` (None allowed when a default is given)."""
    if key not in d or (d[key] is None and default is not _REQUIRED):
        if default is _REQUIRED:
            raise StateError(f"{where}: {key} is missing")
        return default
    value = d[key]
    ok = (isinstance(value, (int, float) if kind is float else kind)
          and not (isinstance(value, bool) and kind is not bool))
    if not ok:
        raise StateError(f"{where}.{key} must be {_type_name(kind)}, not {json.dumps(value)[:40]}")
    return float(value) if kind is float else value


def _obj(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise StateError(f"{where} must be an object")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StateError(f"{where} must be a list of strings")
    return tuple(value)


def _choice(value: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise StateError(f"{where} is {value!r}, expected one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a launch: what the supervisor runs (an engine's plan, then launch.json)."""

    name: str
    argv: list[str]  # a list, as plans build it (the record is frozen; do not mutate it either)
    role: str = "helper"  # "helper" (started first) or "main" (the VM itself, last)
    wait_socket: str | None = None  # a helper is ready once this path exists
    device: str | None = None  # the spec device a helper serves
    env: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "argv": list(self.argv), "role": self.role, "wait_socket": self.wait_socket,
                "device": self.device, "env": dict(self.env)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ProcessSpec":
        d = _obj(data, where)
        argv = _strings(_get(d, "argv", list, where), f"{where}.argv")
        if not argv:
            raise StateError(f"{where}.argv is empty")
        env = _get(d, "env", dict, where, {})
        if not all(isinstance(v, str) for v in env.values()):
            raise StateError(f"{where}.env must map names to strings")
        return cls(_get(d, "name", str, where), list(argv), _choice(_get(d, "role", str, where), ("helper", "main"),
                   f"{where}.role"), _get(d, "wait_socket", str, where, None), _get(d, "device", str, where, None),
                   env)


def _record_fields(data: Any, kind: str, version: int, where: str) -> dict:
    d = _obj(data, where)
    if d.get("kind") != kind:
        raise StateError(f"{where} is not an acrnmgr {kind} record")
    if d.get("version") != version:
        raise StateError(f"{where} has schema version {d.get('version')!r}; this acrnmgr reads version {version} "
                         "(it was written by another acrnmgr version)")
    return d


@dataclass(frozen=True)
class LaunchRecord:
    """launch.json: what `up` asked the supervisor to run, and how to clean up after it."""

    KIND: ClassVar[str] = "acrnmgr-launch"
    VERSION: ClassVar[int] = 1

    name: str
    engine: str
    processes: tuple[ProcessSpec, ...]  # helpers first, the main process (the VM) last
    spec_hash: str
    spec_path: str | None = None  # None: the spec was given loaded, not as a file (gitops overlays)
    created_at: float = 0.0
    cleanup: tuple[str, ...] = ()  # paths removed after stop; "{pid}" = main pid
    post_stop: tuple[tuple[str, ...], ...] = ()  # commands run after stop (e.g. deleting taps)
    info: dict[str, Any] = field(default_factory=dict)  # engine data for query/stop (sockets, channels)
    engine_options: dict[str, Any] = field(default_factory=dict)  # get_engine(engine, **engine_options)

    def __post_init__(self) -> None:
        if not self.processes or self.processes[-1].role != "main":
            raise StateError(f"the launch of {self.name} has no main process last")
        object.__setattr__(self, "processes", tuple(self.processes))
        object.__setattr__(self, "cleanup", tuple(self.cleanup))
        object.__setattr__(self, "post_stop", tuple(tuple(argv) for argv in self.post_stop))

    @property
    def main(self) -> ProcessSpec:
        return self.processes[-1]

    def to_dict(self) -> dict:
        return {"kind": self.KIND, "version": self.VERSION, "name": self.name, "engine": self.engine,
                "processes": [p.to_dict() for p in self.processes], "spec_hash": self.spec_hash,
                "spec_path": self.spec_path, "created_at": self.created_at, "cleanup": list(self.cleanup),
                "post_stop": [list(argv) for argv in self.post_stop], "info": self.info,
                "engine_options": self.engine_options}

    @classmethod
    def from_dict(cls, data: Any, where: str = "launch.json") -> "LaunchRecord":
        d = _record_fields(data, cls.KIND, cls.VERSION, where)
        procs = tuple(ProcessSpec.from_dict(p, f"{where}.processes[{i}]")
                      for i, p in enumerate(_get(d, "processes", list, where)))
        post_stop = tuple(_strings(argv, f"{where}.post_stop[{i}]")
                          for i, argv in enumerate(_get(d, "post_stop", list, where, [])))
        return cls(check_name(_get(d, "name", str, where)), _get(d, "engine", str, where), procs,
                   _get(d, "spec_hash", str, where), _get(d, "spec_path", str, where, None),
                   _get(d, "created_at", float, where, 0.0),
                   _strings(_get(d, "cleanup", list, where, []), f"{where}.cleanup"), post_stop,
                   _get(d, "info", dict, where, {}), _get(d, "engine_options", dict, where, {}))


RUN_STATES = ("starting", "running", "degraded", "exited")
OUTCOMES = ("stopped", "crashed", "failed")


@dataclass(frozen=True)
class ProcessRun:
    """One process as the supervisor saw it: who it is, and how it ended (exit_code None: running)."""

    name: str
    role: str
    identity: ProcessIdentity
    device: str | None = None
    exit_code: int | None = None  # 128 + signal when killed by a signal
    signal: int | None = None
    exited_at: float | None = None

    @property
    def exited(self) -> bool:
        return self.exit_code is not None

    def alive(self) -> bool:
        return not self.exited and self.identity.alive()

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "identity": self.identity.to_dict(), "device": self.device,
                "exit_code": self.exit_code, "signal": self.signal, "exited_at": self.exited_at}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ProcessRun":
        d = _obj(data, where)
        return cls(_get(d, "name", str, where),
                   _choice(_get(d, "role", str, where), ("helper", "main"), f"{where}.role"),
                   ProcessIdentity.from_dict(_get(d, "identity", dict, where), f"{where}.identity"),
                   _get(d, "device", str, where, None), _get(d, "exit_code", int, where, None),
                   _get(d, "signal", int, where, None), _get(d, "exited_at", float, where, None))


@dataclass(frozen=True)
class RunEvent:
    time: float
    event: str
    exit_code: int | None = None
    signal: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "RunEvent":
        d = _obj(data, where)
        return cls(_get(d, "time", float, where), _get(d, "event", str, where), _get(d, "exit_code", int, where, None),
                   _get(d, "signal", int, where, None))


@dataclass(frozen=True)
class RunRecord:
    """run.json: the supervisor's account of a launch. Updated by replacing it (records are frozen)."""

    KIND: ClassVar[str] = "acrnmgr-run"
    VERSION: ClassVar[int] = 1

    state: str  # RUN_STATES
    started_at: float
    supervisor: ProcessIdentity | None = None
    processes: tuple[ProcessRun, ...] = ()  # in start order
    outcome: str | None = None  # OUTCOMES, once exited
    error: str | None = None
    ended_at: float | None = None
    events: tuple[RunEvent, ...] = ()
    cleanup_problems: tuple[str, ...] = ()

    def process(self, name: str) -> ProcessRun | None:
        return next((p for p in self.processes if p.name == name), None)

    def with_process(self, entry: ProcessRun) -> "RunRecord":
        """This record with `entry` replacing the process of the same name (or appended)."""
        if self.process(entry.name) is None:
            return replace(self, processes=(*self.processes, entry))
        return replace(self, processes=tuple(entry if p.name == entry.name else p for p in self.processes))

    def to_dict(self) -> dict:
        return {"kind": self.KIND, "version": self.VERSION, "state": self.state, "started_at": self.started_at,
                "supervisor": self.supervisor.to_dict() if self.supervisor else None,
                "processes": [p.to_dict() for p in self.processes], "outcome": self.outcome, "error": self.error,
                "ended_at": self.ended_at, "events": [e.to_dict() for e in self.events],
                "cleanup_problems": list(self.cleanup_problems)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "run.json") -> "RunRecord":
        d = _record_fields(data, cls.KIND, cls.VERSION, where)
        sup = _get(d, "supervisor", dict, where, None)
        procs = tuple(ProcessRun.from_dict(p, f"{where}.processes[{i}]")
                      for i, p in enumerate(_get(d, "processes", list, where, [])))
        outcome = _get(d, "outcome", str, where, None)
        return cls(_choice(_get(d, "state", str, where), RUN_STATES, f"{where}.state"),
                   _get(d, "started_at", float, where),
                   ProcessIdentity.from_dict(sup, f"{where}.supervisor") if sup is not None else None, procs,
                   _choice(outcome, OUTCOMES, f"{where}.outcome") if outcome is not None else None,
                   _get(d, "error", str, where, None), _get(d, "ended_at", float, where, None),
                   tuple(RunEvent.from_dict(e, f"{where}.events[{i}]")
                         for i, e in enumerate(_get(d, "events", list, where, []))),
                   _strings(_get(d, "cleanup_problems", list, where, []), f"{where}.cleanup_problems"))


# Per-VM folder ---------------------------------------------------------------------------------

class VmState:
    def __init__(self, name: str, root: Path | None = None):
        self.name = check_name(name)
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

    def read_launch(self) -> LaunchRecord | None:
        """launch.json, None when there is none; StateError when it cannot be used."""
        return self._read("launch.json", LaunchRecord)

    def read_run(self) -> RunRecord | None:
        """run.json, None when there is none (yet); StateError when it cannot be used."""
        return self._read("run.json", RunRecord)

    def write_launch(self, record: LaunchRecord) -> None:
        self._write("launch.json", record.to_dict())

    def write_run(self, record: RunRecord) -> None:
        self._write("run.json", record.to_dict())

    def _read(self, name: str, record):
        path = self.path(name)
        try:
            try:
                text = path.read_text()
            except FileNotFoundError:
                return None
            except (OSError, UnicodeDecodeError) as exc:
                raise StateError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise StateError(f"{path} is corrupt (not JSON: {exc})") from None
            return record.from_dict(data, str(path))
        except StateError as exc:
            raise StateError(f"{exc}\n(if no process of {self.name} runs any more, remove {self.dir} and start it "
                             "again)") from None

    def _write(self, name: str, data: dict) -> None:
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
    """Names of the state folders with a launch record (folders that cannot be VM names are ignored)."""
    base = root or state_root()
    try:
        return sorted(p.name for p in base.iterdir() if VM_NAME.fullmatch(p.name) and (p / "launch.json").exists())
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
