"""The acrn engine's output of a Plan: the acrn-dm argv with everything the launch script needs, as a
:class:`Compiled` record (what ``render`` prints as argv, script or JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from acrnmgr.devices import vm_from_spec
from acrnmgr.host import HostProfile
from acrnmgr.plan import Plan, make_plan
from acrnmgr.spec.diagnostics import Diagnostic
from acrnmgr.spec.loader import Spec


@dataclass(frozen=True)
class DeviceRow:
    """One device of a rendered acrn-dm plan, as `render --format json` and `plan --output json` show it."""

    index: int  # position in spec.devices
    name: str
    type: str
    slot: int | None
    backend: str | None
    reason: str
    emulation: str = ""
    args: str = ""  # the config after "emulation," ('' when none)
    function: int = 0  # the PCI function on `slot`

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "type": self.type, "slot": self.slot,
                "function": self.function, "backend": self.backend, "reason": self.reason,
                "emulation": self.emulation, "args": self.args}


@dataclass
class Compiled:
    name: str
    engine: str
    target_version: str
    argv: list[str]
    devices: list[DeviceRow]
    taps: list[str]  # tap interfaces to create and attach to `bridge`
    bridge: str
    cpus: list[int]  # LAPIC IDs (v3.x) the launch script offlines (an RTVM's: plan.acrn.offline_cpus)
    passthru: list[str]  # host BDFs ("00:1f.3") to unbind from their drivers
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    spec_hash: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "engine": self.engine, "targetVersion": self.target_version,
            "argv": list(self.argv), "devices": [d.to_dict() for d in self.devices], "taps": list(self.taps),
            "bridge": self.bridge, "cpus": list(self.cpus), "passthru": list(self.passthru),
            "errors": [d.to_dict() for d in self.errors], "warnings": [d.to_dict() for d in self.warnings],
            "specHash": self.spec_hash,
        }


def render_acrndm(plan: Plan) -> Compiled:
    """The acrn-dm side of a plan (for another engine: the device table only, with an empty argv)."""
    rows = [DeviceRow(**d) for d in plan.devices_dict()]
    launch = plan.acrn
    vm = plan.vm
    if launch is None:
        return Compiled(vm.name, plan.engine, plan.target_version, [], rows, [], vm.bridge, list(vm.affinity), [],
                        list(plan.errors), list(plan.warnings), vm.hash)
    return Compiled(vm.name, plan.engine, plan.target_version, list(launch.argv), rows, list(launch.taps),
                    launch.bridge, list(launch.cpus), list(launch.passthru), list(plan.errors), list(plan.warnings),
                    vm.hash)


def compile_spec(spec: Spec, host: HostProfile | None = None, target_version: str = "3.x",
                 engine: str = "acrn") -> Compiled:
    """Plan a loaded spec and render its acrn-dm side (no host: this machine's profile)."""
    live = host is None
    host = host if host is not None else HostProfile.detect()
    return render_acrndm(make_plan(vm_from_spec(spec), host, engine, target_version, live_host=live))
