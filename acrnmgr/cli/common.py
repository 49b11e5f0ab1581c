"""What the command modules share: the `--output` choice, failing with a message, the host profile, and finding
a running VM's embedded device control socket.

Only typer is imported at module load; acrnmgr.host loads when a command asks for a profile."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional, Union

import typer

if TYPE_CHECKING:
    from acrnmgr.host import HostProfile


class OutputFormat(str, enum.Enum):
    text = "text"
    json = "json"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (1: invalid input or failed operation)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


MAX_SECONDS = 86400.0


def seconds(value: float) -> float:
    """A --timeout: finite, 0 to a day (nan, inf and 1e400 are usage errors, not a traceback later)."""
    import math

    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise typer.BadParameter(f"{value} is not a number of seconds from 0 to {MAX_SECONDS:g}")
    return value


def load_host(path: Optional[Union[str, Path]]) -> "HostProfile":
    """The profile in `path` (--host FILE), or the live machine's when no file is given.
    A bad profile file is a clean exit 1."""
    from acrnmgr.host import HostProfile, HostProfileError

    if path is None:
        return HostProfile.detect()
    try:
        return HostProfile.from_file(path)
    except HostProfileError as exc:
        fail(str(exc))


def planning_host(profile: Optional["HostProfile"], engine: str) -> tuple["HostProfile", str, bool]:
    """(host, engine, live) to plan with: an explicit profile as given, else this machine's; `auto` resolved as
    `up` resolves it; on this machine, the qemu engine probes KVM as `up` does (/dev/kvm may open and still not
    run a vCPU under a nested hypervisor; QEMU then runs TCG, and a warning says so)."""
    from acrnmgr.host import HostProfile
    from acrnmgr.plan import resolve_engine

    live = profile is None
    host = profile if profile is not None else HostProfile.detect()
    engine = resolve_engine(engine, host)
    if live and engine == "qemu":
        from acrnmgr.lifecycle.accel import with_usable_kvm
        from acrnmgr.paths import state_root

        host, fallback = with_usable_kvm(host, state_root())
        if fallback:
            typer.echo(f"warning: {fallback}", err=True)
    return host, engine, live


RUNNING_STATES = ("running", "degraded", "starting")


def _running_state_dir(vm: str, wrong_engine: Callable[[str | None], str]) -> Path | None:
    """VM `vm`'s state folder, after checking it exists, runs, and runs on the qemu engine (the one whose embedded
    devices have control sockets); `wrong_engine(engine)` says why another engine has none."""
    from acrnmgr.lifecycle.engine import engine_of
    from acrnmgr.lifecycle.errors import LifecycleError
    from acrnmgr.lifecycle.state import StateError, check_name

    try:
        check_name(vm)
        status = engine_of(vm).status(vm)
    except (LifecycleError, StateError) as exc:
        fail(str(exc))
    if status.get("state") not in RUNNING_STATES:
        fail(f"{vm} is not running ({status.get('state', 'unknown')}); start it with `acrnmgr up`")
    if status.get("engine") != "qemu":
        fail(wrong_engine(status.get("engine")))
    return Path(status["state_dir"]) if status.get("state_dir") else None


def device_control_socket(vm: str, *, kind: str, suffix: str, missing: str, device: str | None = None,
                          option: str = "--device",
                          wrong_engine: Callable[[str | None], str] | None = None) -> Path:
    """The control socket `<device><suffix>` in VM `vm`'s state folder of its embedded `kind` device (e.g.
    "virtio-i2c adapter"); a clear failure when there is none to reach: `missing` when the VM has none, exit 2 when
    it has several and `device` (given with `option`) does not choose one.  With `wrong_engine`, the VM is first
    checked to exist and to run on the qemu engine (exit 1 otherwise); without, an invalid name exits 2."""
    from acrnmgr.lifecycle.errors import StateError
    from acrnmgr.lifecycle.state import check_name
    from acrnmgr.paths import vm_state_dir

    folder: Path | None
    if wrong_engine is not None:
        folder = _running_state_dir(vm, wrong_engine)
    else:
        try:
            folder = vm_state_dir(check_name(vm))
        except StateError as exc:
            fail(str(exc), 2)
    found = sorted(folder.glob("*" + suffix)) if folder is not None and folder.is_dir() else []
    names = [p.name[:-len(suffix)] for p in found]
    if device is not None:
        if folder is None or device not in names:
            known = f" (it has: {', '.join(names)})" if names else ""
            fail(f"VM {vm} has no running {kind} named {device!r}{known}")
        return folder / (device + suffix)
    if not found:
        fail(missing)
    if len(found) > 1:
        fail(f"VM {vm} has several {kind}s ({', '.join(names)}): choose one with {option}", 2)
    return found[0]
