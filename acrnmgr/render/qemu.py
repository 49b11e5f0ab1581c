"""The qemu engine's output of a Plan as data: the QEMU argv, its helper processes and devices."""

from __future__ import annotations

from typing import Any

from acrnmgr.plan import Plan


def render_qemu(plan: Plan) -> dict[str, Any]:
    launch = plan.qemu
    if launch is None:
        raise ValueError(f"the plan of {plan.name} is for the {plan.engine} engine, not qemu")
    return {
        "name": plan.name, "engine": plan.engine, "argv": list(launch.argv),
        "helpers": [{"name": h.name, "argv": list(h.argv), "socket": h.socket, "device": h.device}
                    for h in launch.helpers],
        "devices": plan.devices_dict(),
        "errors": [d.to_dict() for d in plan.errors], "warnings": [d.to_dict() for d in plan.warnings],
        "specHash": plan.vm.hash,
    }
