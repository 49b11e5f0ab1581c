"""One plan for a VM, a host and an engine: the PCI slot, backend and reason of every device, the engine's launch
(acrn-dm argv, or QEMU argv with its helper processes), and every diagnostic.

``validate``, ``plan``, ``render``, ``up``, ``diff``, ``apply`` and ``export`` all go through :func:`make_plan`,
so they cannot disagree: renderers (``acrnmgr.render``) only format a Plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acrnmgr.devices import AnyDevice
from acrnmgr.devices.base import Diagnostics, Helper
from acrnmgr.host import HostProfile
from acrnmgr.model import VmSpec
from acrnmgr.paths import vm_state_dir
from acrnmgr.plan import acrn, qemu
from acrnmgr.plan.acrn import AcrnLaunch
from acrnmgr.plan.qemu import QemuLaunch
from acrnmgr.plan.slots import assign_slots, request_of
from acrnmgr.spec.diagnostics import Diagnostic

ENGINES = ("acrn", "qemu")


@dataclass(frozen=True)
class DevicePlan:
    device: AnyDevice
    slot: int | None
    backend: str | None  # None when no backend can serve it (see the plan's errors)
    reason: str

    @property
    def name(self) -> str:
        return self.device.display_name

    @property
    def kind(self) -> str:
        return self.device.KIND


@dataclass(frozen=True)
class Plan:
    vm: VmSpec
    engine: str  # acrn | qemu
    target_version: str  # acrn-dm grammar: 3.x or 2.7
    devices: list[DevicePlan]
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    acrn: AcrnLaunch | None = None  # engine acrn
    device_args: list[str] = field(default_factory=list)  # engine acrn: each device's acrn-dm config
    qemu: QemuLaunch | None = None  # engine qemu

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def helpers(self) -> list[Helper]:
        return list(self.qemu.helpers) if self.qemu else []

    def devices_dict(self) -> list[dict[str, Any]]:
        out = []
        for p, args in zip(self.devices, self.device_args or [""] * len(self.devices), strict=True):
            item: dict[str, Any] = {"index": p.device.index, "name": p.name, "type": p.kind, "slot": p.slot,
                                    "function": p.device.function, "backend": p.backend, "reason": p.reason}
            if self.engine == "acrn":
                item["emulation"] = acrn.emulation_of(p)
                item["args"] = args
            out.append(item)
        return out


def resolve_engine(choice: str, host: HostProfile) -> str:
    """``auto`` is the acrn engine on an ACRN Service VM and the qemu engine anywhere else."""
    if choice == "auto":
        return host.default_engine
    if choice not in ENGINES:
        raise ValueError(f"unknown engine {choice!r} ({', '.join(ENGINES)} or auto)")
    return choice


def family_of(target_version: str) -> str:
    """The acrn-dm grammar family of a version: '3.x', '3.2', 'v3.0' -> '3'; '2.7', '2.x' -> '2'."""
    match = re.match(r"v?(\d+)", str(target_version))
    if not match or match.group(1) not in ("2", "3"):
        raise ValueError(f"unsupported acrn-dm version {target_version!r}: use 3.x or 2.7")
    return match.group(1)


def make_plan(vm: VmSpec, host: HostProfile, engine: str, target_version: str = "3.x",
              state_dir: Path | None = None, live_host: bool = False) -> Plan:
    """Plan ``vm`` for ``host`` on ``engine``.  ``state_dir`` is where the qemu engine keeps the VM's sockets
    (default: the VM's folder under the state root); ``live_host`` says the host profile is this machine, so
    device probes (evdev nodes, PCI functions) and the CPUs of spec.cpu.affinity are checked here."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} ({', '.join(ENGINES)})")
    family = family_of(target_version)
    diags = Diagnostics(vm.locate)
    devices: list[AnyDevice] = list(vm.devices)  # type: ignore[arg-type]
    slots, problems = assign_slots([request_of(d) for d in devices])
    for problem in problems:
        if problem.severity == "error":  # (the spec's checks already warned about the rest)
            diags.error((*devices[problem.index].where, problem.field), problem.message, problem.suggestion)
    if live_host and host.lapic_ids:  # as `up` refuses them: plan on this machine says so too
        shown = ", ".join(map(str, host.lapic_ids[:16])) + (", ..." if len(host.lapic_ids) > 16 else "")
        for i, lapic in enumerate(vm.affinity):
            if lapic not in host.lapic_ids:
                diags.error(("spec", "cpu", "affinity", i), f"LAPIC ID {lapic} is not a CPU of this host",
                            f"the host's LAPIC IDs are {shown}")

    plans: list[DevicePlan] = []
    for device, slot in zip(devices, slots, strict=True):
        choice = device.choose(host, engine, family)
        if choice.error:
            diags.error(device.where, choice.error, choice.suggestion)
        elif engine == "qemu" and live_host and (missing := device.missing_on_host()):
            diags.error(device.where, missing)
        plans.append(DevicePlan(device, slot, choice.backend, choice.reason or choice.error or ""))

    launch_acrn = None
    launch_qemu = None
    args: list[str] = []
    if engine == "acrn":
        args = acrn.device_args(vm, plans, diags, family)
        launch_acrn = acrn.build(vm, host, plans, args, diags, family)
    else:
        launch_qemu = qemu.build(vm, host, plans, diags, state_dir or vm_state_dir(vm.name))
    return Plan(vm, engine, "3.x" if family == "3" else "2.7", plans, diags.errors, diags.warnings, launch_acrn,
                args, launch_qemu)
