"""Engines: what runs a VM. One protocol for all of them, and a registry by name.

- acrn and qemu are supervised engines (acrnmgr.lifecycle.manager.SupervisedEngine): a detached
  supervisor runs the VM's processes (acrn-dm or QEMU, and embedded device models) from a state
  folder; an engine turns a spec into a LaunchPlan, prepares the host, queries the VM over its
  control channel and provides the graceful and forced stop actions `down` tries in order.
- libvirt (acrnmgr.libvirt.engine.LibvirtEngine): libvirt runs the domain; its option `uri` is the
  connection URI (the CLI's --connect). The device models of a QEMU domain with embedded devices run
  under the supervisor, in a state folder whose launch record names the libvirt engine.

An engine's options are recorded in the launch record of a state folder, so `engine_of(name)` finds
the engine (with its options) of a VM that runs."""

from __future__ import annotations

import builtins
import enum
import inspect
import signal
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from acrnmgr.lifecycle.errors import LifecycleError, StateError
from acrnmgr.lifecycle.state import LaunchRecord, ProcessIdentity, ProcessSpec, RunRecord, VmState, all_vms

if TYPE_CHECKING:  # annotations only: the CLI imports this module at start-up
    from acrnmgr.host import HostProfile
    from acrnmgr.model import VmSpec

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Console:
    """A console `acrnmgr console` can attach to."""

    name: str
    kind: str  # "socket" (a Unix socket), "pty" or "tty" (a terminal device path)
    path: str


class Engine(Protocol):
    """What the CLI, gitops and the engines themselves need from an engine. Results are JSON-able
    dicts; failures raise LifecycleError (or SpecError) with a message for the user."""

    name: str
    options: dict[str, Any]  # what the engine was made with (get_engine(name, **options))
    spec_host_checks: bool  # specs for it are validated against the local host profile

    def up(self, vm: VmSpec, host: HostProfile, *, wait_ready: bool = False, progress: Progress = quiet) -> dict:
        """Start the VM (the typed model of a loaded spec); unchanged when it already runs with this spec,
        LifecycleError when it runs with another."""

    def down(self, name: str, *, timeout: float = 30.0, force: bool = False, progress: Progress = quiet) -> dict:
        """Stop a VM: graceful first (unless force), then forced."""

    def status(self, name: str) -> dict:
        """name, engine, state (running, degraded, stopped, crashed, ...), spec_hash, pid, ..."""

    def list(self) -> list[str]:
        """Names of the VMs this engine knows."""

    def active(self, name: str) -> bool:
        """Something of the VM may still run."""

    def launch_lines(self, name: str) -> builtins.list[str]:
        """What runs now, one option per line (for diffs)."""

    def planned_lines(self, vm: VmSpec, host: HostProfile) -> builtins.list[str]:
        """What `up` of this spec would run, one option per line."""

    def log_files(self, name: str) -> builtins.list[Path]:
        """The VM's logs, most interesting first."""

    def console(self, name: str, port: str | None = None) -> Console:
        """The console to attach to; LifecycleError when there is none."""


ENGINES = {
    "acrn": "acrnmgr.lifecycle.acrn:AcrnEngine",
    "qemu": "acrnmgr.lifecycle.qemu:QemuEngine",
    "libvirt": "acrnmgr.libvirt.engine:LibvirtEngine",
}
# The CLI's --engine choice (typer needs an Enum): auto, then every registered engine.
# mypy wants literal members; these are computed from ENGINES on purpose.
EngineChoice = enum.Enum("EngineChoice", {n: n for n in ("auto", *ENGINES)}, type=str)  # type: ignore[misc]


def get_engine(choice: str, host=None, **options: Any) -> Engine:
    """The engine named `choice` made with `options` (None values are left out). "auto": libvirt
    when a uri is given, else acrn on an ACRN Service VM (or with /dev/acrn_hsm), else qemu."""
    options = {k: v for k, v in options.items() if v is not None}
    if choice == "auto":
        if "uri" in options:
            choice = "libvirt"
        else:
            from acrnmgr.host import HostProfile  # the CLI imports this module at start-up: detect lazily

            choice = (host if host is not None else HostProfile.detect()).default_engine
    if choice not in ENGINES:
        raise LifecycleError(f"unknown engine {choice!r} (expected {', '.join(['auto', *ENGINES])})")
    module, _, cls_name = ENGINES[choice].partition(":")
    cls = getattr(import_module(module), cls_name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError:
        given = ", ".join(sorted(options))
        raise LifecycleError(f"the {choice} engine does not take {given} "
                             "(--connect is for the libvirt engine)") from None
    return cls(**options)


def engine_of(name: str, host=None, **options: Any) -> Engine:
    """The engine of an existing VM: the libvirt one when given a uri, else the engine recorded in
    the VM's state folder, with the options it was started with."""
    if any(v is not None for v in options.values()):
        return get_engine("auto", host, **options)
    launch = VmState(name).read_launch()
    if launch is None:
        raise LifecycleError(f"no VM named {name} (known: {', '.join(all_vms()) or 'none'})")
    return get_engine(launch.engine, host, **launch.engine_options)


@dataclass(frozen=True)
class KnownVm:
    name: str
    engine: Engine | None
    error: str | None = None  # why its engine is not known (e.g. a corrupt state folder)


def known_vms(engine: Engine | None = None) -> list[KnownVm]:
    """Every VM with a state folder (on its recorded engine), and the VMs `engine` knows."""
    found: dict[str, KnownVm] = {}
    for name in all_vms():
        try:
            found[name] = KnownVm(name, engine_of(name))
        except StateError as exc:
            found[name] = KnownVm(name, None, str(exc))
    if engine is not None:
        for name in engine.list():
            found[name] = KnownVm(name, engine)
    return [found[n] for n in sorted(found)]


def argv_lines(argv) -> list[str]:
    """One option (with its value) per line, so a diff shows which option changed."""
    lines: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            lines.append(f"{argv[i]} {argv[i + 1]}")
            i += 2
        else:
            lines.append(argv[i])
            i += 1
    return lines


# The supervised engines' plan -------------------------------------------------------------------

@dataclass
class LaunchPlan:
    """What a supervised engine wants run; `prepare` may still append post_stop commands."""

    engine: str
    processes: list[ProcessSpec]
    cleanup: list[str] = field(default_factory=list)  # paths removed after stop; "{pid}" = main pid
    post_stop: list[list[str]] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # engine data for query/stop (sockets, channels)

    @property
    def main(self) -> ProcessSpec:
        return self.processes[-1]


@dataclass(frozen=True)
class Running:
    """What `down`/`status` know about a launched VM: its records."""

    state: VmState
    launch: LaunchRecord
    run: RunRecord | None  # None until the supervisor wrote it

    @property
    def info(self) -> dict:
        return self.launch.info

    def identity(self, name: str | None = None) -> ProcessIdentity | None:
        """The identity of a process (default: the main one) that has not exited."""
        entry = self.run.process(name or self.launch.main.name) if self.run else None
        return entry.identity if entry and not entry.exited else None

    @property
    def main(self) -> ProcessIdentity | None:
        return self.identity()


StopAction = Callable[[Running], "str | None"]  # returns what it did, or None if not applicable


def send_signal(sig: int) -> StopAction:
    def action(vm: Running) -> str | None:
        ident = vm.main
        if ident and ident.signal(sig):
            return f"sent {signal.Signals(sig).name} to pid {ident.pid}"
        return None

    return action
