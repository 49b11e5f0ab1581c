"""The qemu engine: the same spec under QEMU (KVM or TCG), with embedded device models as
vhost-user helpers; controlled over QMP."""

from __future__ import annotations

import dataclasses
import shutil
import signal

from acrnmgr.host import HostProfile, probe_qemu_version
from acrnmgr.lifecycle.accel import with_usable_kvm
from acrnmgr.lifecycle.acrn import prepare_taps
from acrnmgr.lifecycle.engine import LaunchPlan, Running, send_signal
from acrnmgr.lifecycle.errors import PlanError
from acrnmgr.lifecycle.manager import SupervisedEngine
from acrnmgr.lifecycle.qemu_argv import qemu_launch
from acrnmgr.lifecycle.qmp import Qmp, QmpError
from acrnmgr.lifecycle.state import ProcessSpec, VmState
from acrnmgr.model import VmSpec
from acrnmgr.plan import make_plan


def with_qemu_version(host: HostProfile) -> HostProfile:
    """``host`` with the version of the QEMU the engine runs, probed here when a profile file does not say it
    (what a device's QEMU front-end offers the guest depends on it)."""
    qemu = host.qemu or shutil.which("qemu-system-x86_64")
    if host.qemu_version is not None or qemu is None:
        return host
    return dataclasses.replace(host, qemu_version=probe_qemu_version(qemu))


class QemuEngine(SupervisedEngine):
    name = "qemu"

    def plan(self, vm: VmSpec, host: HostProfile, state: VmState) -> LaunchPlan:
        host, fallback = with_usable_kvm(with_qemu_version(host), state.dir.parent)
        q = qemu_launch(make_plan(vm, host, "qemu", state_dir=state.dir, live_host=True))
        if fallback:
            q.warnings.insert(0, fallback)
        if q.errors:
            raise PlanError(f"{vm.name} cannot run on the qemu engine:\n" + "\n".join(f"  {e}" for e in q.errors))
        return LaunchPlan(
            "qemu",
            [*q.helpers, ProcessSpec("qemu", q.argv, role="main")],
            cleanup=q.sockets + [dst for _, dst in q.copies],
            info={"vm": vm.name, "qmp": q.sockets[0], "consoles": q.consoles, "devices": q.devices,
                  "copies": q.copies, "warnings": q.warnings},
        )

    def prepare(self, vm: VmSpec, host: HostProfile, plan: LaunchPlan, progress) -> None:
        for warning in plan.info["warnings"]:
            progress(f"warning: {warning}")
        for src, dst in plan.info["copies"]:
            shutil.copyfile(src, dst)
        # Taps are made and bridged exactly as for acrn-dm, so a spec behaves the same on both.
        prepare_taps(vm, plan, progress)

    def _qmp(self, vm: Running, command: str, arguments: dict | None = None):
        try:
            with Qmp(vm.info["qmp"], timeout=5) as q:
                return q.execute(command, arguments)
        except (OSError, ValueError, ConnectionError, QmpError):
            return None

    def query(self, vm: Running) -> str | None:
        reply = self._qmp(vm, "query-status")
        return reply.get("status") if isinstance(reply, dict) else None

    def graceful_actions(self, vm: Running):
        def powerdown(vm: Running) -> str | None:
            if self._qmp(vm, "system_powerdown") is None:
                return None
            return "sent system_powerdown (ACPI power button)"

        return [powerdown]

    def force_actions(self, vm: Running):
        def quit_(vm: Running) -> str | None:
            return "sent quit over QMP" if self._qmp(vm, "quit") is not None else None

        return [quit_, send_signal(signal.SIGTERM)]
