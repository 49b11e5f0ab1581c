"""The qemu engine's launch: the same VM under QEMU, with the PCI layout the acrn engine gives it.

- KVM when the host profile says KVM works, TCG otherwise; spec.machine (i440fx "pc" by default, or "q35"): slot N
  is addr=N on the root bus (pci.0, or q35's pcie.0, whose built-in ICH9 functions sit on slot 31, which the
  planner never gives a device: ACRN keeps it for igd-lpc).
- Guest RAM is a shared memfd (memory-backend-memfd,share=on + -numa node,memdev=mem) so vhost-user device
  models can map it.
- backend vbs-u -> QEMU's own device; vhost -> vhost=on; embedded -> a vhost-user device whose backend is an
  ``acrnmgr devmodel serve`` helper process (started before QEMU by the supervisor).
- stdio consoles become unix sockets in the state folder (for ``acrnmgr console``), logged to console.log; QMP
  listens on qmp.sock there too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acrnmgr.devices.base import MAX_SOCKET_PATH, Diagnostics, Helper, QemuArgs, esc
from acrnmgr.host import HostProfile, qemu_version_tuple
from acrnmgr.model import ElfBoot, KernelBoot, OvmfBoot, VmSpec
from acrnmgr.plan.slots import multifunction_slots

if TYPE_CHECKING:
    from acrnmgr.plan import DevicePlan

_COM_INDEX = {"com1": 0, "com2": 1, "com3": 2, "com4": 3}


@dataclass(frozen=True)
class QemuLaunch:
    state_dir: Path  # the VM's sockets, console log and firmware copies
    argv: list[str]
    helpers: list[Helper] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)  # every unix socket to remove after stop; QMP's first
    consoles: list[dict[str, Any]] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)  # (source, per-run copy) made before start


def build(vm: VmSpec, host: HostProfile, plans: list[DevicePlan], diags: Diagnostics, state_dir: Path) -> QemuLaunch:
    qemu = host.qemu or shutil.which("qemu-system-x86_64")
    if not qemu:
        diags.error(("spec",), "qemu-system-x86_64 not found: install QEMU (Debian: qemu-system-x86)")
        qemu = "qemu-system-x86_64"
    mib = -(-vm.memory // (1 << 20))
    qmp = state_dir / "qmp.sock"
    ctx = QemuArgs(vm.name, state_dir, diags, qemu_version=qemu_version_tuple(host.qemu_version))
    ctx.argv += [
        qemu,
        "-name", f"guest={vm.name},debug-threads=on",
        "-machine", f"{vm.machine},accel={'kvm' if host.kvm else 'tcg'}",
        "-cpu", "host" if host.kvm else "max",
        "-smp", str(max(1, len(vm.affinity))),
        "-m", f"{mib}M",
        "-object", f"memory-backend-memfd,id=mem,size={mib}M,share=on",
        "-numa", "node,memdev=mem",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-chardev", f"socket,id=qmp,path={esc(qmp)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]
    ctx.sockets.append(str(qmp))
    if vm.uuid:
        ctx.argv += ["-uuid", vm.uuid]
    _boot(vm, ctx)
    _lpc(vm, ctx)
    ctx.multifunction = multifunction_slots([p.slot for p in plans], [p.device.function for p in plans])
    for p in plans:
        if p.slot is not None and p.backend is not None:
            ctx.function = p.device.function
            p.device.qemu(ctx, p.slot, p.backend)
    for sock in ctx.sockets:
        if len(sock) > MAX_SOCKET_PATH:
            diags.error(("spec",), f"socket path too long for AF_UNIX ({len(sock)} > {MAX_SOCKET_PATH}): {sock}")
    if vm.settings.hostbridge != "intel":
        diags.warn(("spec", "settings", "hostbridge"), f"hostbridge: {vm.settings.hostbridge} applies to acrn-dm; "
                   "QEMU's pc machine has its own (i440FX) host bridge")
    if vm.extra_args:
        diags.warn(("spec", "extraArgs"), "spec.extraArgs are acrn-dm arguments; the qemu engine ignores them")
    return QemuLaunch(state_dir, ctx.argv, ctx.helpers, ctx.sockets, ctx.consoles, ctx.copies)


def _boot(vm: VmSpec, ctx: QemuArgs) -> None:
    boot = vm.boot
    if isinstance(boot, KernelBoot):
        ctx.argv += ["-kernel", boot.path]
        if boot.initrd:
            ctx.argv += ["-initrd", boot.initrd]
        if boot.cmdline:
            ctx.argv += ["-append", boot.cmdline]
    elif isinstance(boot, ElfBoot):
        ctx.argv += ["-kernel", boot.path]  # multiboot ELF
    elif isinstance(boot, OvmfBoot):
        if boot.image:
            image = _vars_copy(Path(boot.image), boot.writeback, ctx)
            ctx.argv += ["-drive", f"if=pflash,format=raw,unit=0,file={esc(image)}"]
        else:
            nvram = _vars_copy(Path(boot.vars or ""), boot.writeback, ctx)
            ctx.argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={esc(boot.code)}"]
            ctx.argv += ["-drive", f"if=pflash,format=raw,unit=1,file={esc(nvram)}"]


def _vars_copy(path: Path, writeback: bool, ctx: QemuArgs) -> Path:
    """Without writeback the guest's NV variable changes must not reach the original file (acrn-dm's default),
    so QEMU gets a per-run copy in the state folder."""
    if writeback:
        return path
    copy = ctx.state_dir / f"{path.name}.run"
    ctx.copies.append((str(path), str(copy)))
    return copy


def _lpc(vm: VmSpec, ctx: QemuArgs) -> None:
    for port in vm.lpc:
        name = port.port
        if name not in _COM_INDEX:
            ctx.diags.error(port.where, f"the ACRN S5 UART ({name}) has no QEMU equivalent",
                            "drop com5 for the qemu engine")
            continue
        if port.backend == "stdio":
            chardev = ctx.stdio_socket(name)
        elif port.backend == "tty":
            chardev = f"tty,id={name},path={esc(port.path)}"
            ctx.consoles.append({"name": name, "kind": "tty", "path": port.path})
        else:
            chardev = f"socket,id={name},host=127.0.0.1,port={port.tcp_port},server=on,wait=off,telnet=off"
        ctx.argv += ["-chardev", chardev, "-device", f"isa-serial,chardev={name},index={_COM_INDEX[name]}"]
