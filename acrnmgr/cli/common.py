"""What the command modules share: the `--output` choice, failing with a message, and the host profile.

Only typer is imported at module load; acrnmgr.host loads when a command asks for a profile."""

from __future__ import annotations

import enum
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
