"""The engine interface: what `up`/`down`/`status` need from acrn-dm or QEMU.

An engine turns a spec into a LaunchPlan (processes the supervisor runs, sockets to clean up,
commands to run after the VM stops), prepares the host, queries the running VM over its control
channel, and provides the graceful and forced stop actions in the order `down` tries them."""

from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass, field
from typing import Callable

from acrnmgr.lifecycle.state import ProcessIdentity, VmState


class LifecycleError(RuntimeError):
    """An operation that cannot be done; the message is shown to the user as is."""


class PlanError(LifecycleError):
    """The spec cannot run on this engine (device it cannot provide, missing binary...)."""


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    role: str = "helper"  # "helper" (started first) or "main" (the VM itself, last)
    wait_socket: str | None = None  # a helper is ready once this path exists
    device: str | None = None  # the spec device a helper serves
    env: dict = field(default_factory=dict)


@dataclass
class LaunchPlan:
    engine: str
    processes: list[ProcessSpec]
    cleanup: list[str] = field(default_factory=list)  # paths removed after stop; "{pid}" = main pid
    post_stop: list[list[str]] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # engine data for query/stop (sockets, channels)

    @property
    def main(self) -> ProcessSpec:
        return self.processes[-1]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Running:
    """What `down`/`status` know about a launched VM."""

    state: VmState
    launch: dict
    run: dict

    @property
    def info(self) -> dict:
        return self.launch.get("info", {})

    def identity(self, name: str | None = None) -> ProcessIdentity | None:
        name = name or self.launch["processes"][-1]["name"]
        entry = self.run.get("processes", {}).get(name)
        if not entry or entry.get("exit_code") is not None:
            return None
        return ProcessIdentity.from_dict(entry["identity"])

    @property
    def main(self) -> ProcessIdentity | None:
        return self.identity()


StopAction = Callable[[Running], "str | None"]  # returns what it did, or None if not applicable


class Engine:
    name = "base"

    def plan(self, spec, host, state: VmState) -> LaunchPlan:
        raise NotImplementedError

    def prepare(self, spec, host, plan: LaunchPlan, progress: Callable[[str], None]) -> None:
        """Set up the host (taps, CPUs...). May append post_stop commands to `plan`."""

    def query(self, vm: Running) -> str | None:
        """The VM's state according to its control channel ("running", ...), None if unreachable."""
        raise NotImplementedError

    def graceful_actions(self, vm: Running) -> list[StopAction]:
        """Tried in order until one applies; then `down` waits up to --timeout."""
        raise NotImplementedError

    def force_actions(self, vm: Running) -> list[StopAction]:
        """Each applicable one is followed by a short wait; SIGKILL comes after all of them."""
        raise NotImplementedError


def send_signal(sig: int) -> StopAction:
    def action(vm: Running) -> str | None:
        ident = vm.main
        if ident and ident.signal(sig):
            return f"sent {signal.Signals(sig).name} to pid {ident.pid}"
        return None

    return action


def select_engine(choice: str, host) -> Engine:
    if choice == "auto":
        choice = "acrn" if (host.is_service_vm or os.path.exists("/dev/acrn_hsm")) else "qemu"
    if choice == "acrn":
        from acrnmgr.lifecycle.acrn import AcrnEngine

        return AcrnEngine()
    if choice == "qemu":
        from acrnmgr.lifecycle.qemu import QemuEngine

        return QemuEngine()
    if choice == "libvirt":  # the device models of a libvirt domain (acrnmgr.libvirt.engine)
        from acrnmgr.libvirt.engine import DevmodelEngine

        return DevmodelEngine()
    raise LifecycleError(f"unknown engine {choice!r} (expected acrn, qemu or auto)")

