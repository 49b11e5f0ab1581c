"""The qemu engine's launch of a Plan: the QEMU argv, its helper processes (embedded device models), and the
sockets, consoles and firmware copies around it, in the shape the lifecycle runs (``QemuPlan``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acrnmgr.devices import vm_from_spec
from acrnmgr.devices.base import esc
from acrnmgr.host import HostProfile
from acrnmgr.lifecycle.engine import ProcessSpec
from acrnmgr.plan import Plan, make_plan
from acrnmgr.spec.loader import Spec

__all__ = ["QemuPlan", "compile_qemu", "esc", "qemu_launch"]


@dataclass
class QemuPlan:
    argv: list[str]
    helpers: list[ProcessSpec] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)  # every unix socket to remove after stop
    consoles: list[dict[str, Any]] = field(default_factory=list)  # {"name", "kind": socket|pty|tty, "path"}
    devices: list[dict[str, Any]] = field(default_factory=list)  # {"name", "type", "slot", "backend", "reason"}
    copies: list[tuple[str, str]] = field(default_factory=list)  # (source, per-run copy) made before start
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def qemu_launch(plan: Plan) -> QemuPlan:
    """A qemu-engine Plan in the lifecycle's terms."""
    launch = plan.qemu
    if launch is None:
        raise ValueError(f"the plan of {plan.name} is for the {plan.engine} engine, not qemu")
    return QemuPlan(
        argv=list(launch.argv),
        helpers=[ProcessSpec(h.name, h.argv, wait_socket=h.socket, device=h.device) for h in launch.helpers],
        sockets=list(launch.sockets),
        consoles=[dict(c) for c in launch.consoles],
        devices=[{"name": p.name, "type": p.kind, "slot": p.slot, "backend": p.backend, "reason": p.reason}
                 for p in plan.devices if p.backend is not None and p.slot is not None],
        copies=list(launch.copies),
        warnings=[d.message for d in plan.warnings],
        errors=[str(d) for d in plan.errors],
    )


def compile_qemu(spec: Spec, host: HostProfile, state_dir: Path) -> QemuPlan:
    """Plan a loaded spec for the qemu engine on this machine (its sockets in ``state_dir``)."""
    return qemu_launch(make_plan(vm_from_spec(spec), host, "qemu", state_dir=state_dir, live_host=True))
