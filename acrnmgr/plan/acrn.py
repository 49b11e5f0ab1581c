"""The acrn engine's launch: the acrn-dm argv (v3.x, or v2.7 where its grammar differs) and what the launch
script does around it (taps, passthrough unbinding, CPUs).

The argv is a list (never a command string) in a fixed option order, so renders are byte-for-byte reproducible.
v2.7 differs: --cpu_affinity takes pCPU IDs (ranges allowed) instead of LAPIC IDs, virtio-net takes the bare tap
name, and a MAC seed is the global --mac_seed instead of a virtio-net option."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from acrnmgr.devices.base import AcrnArgs, Diagnostics
from acrnmgr.devices.passthru import Passthru
from acrnmgr.devices.virtio_net import VirtioNet
from acrnmgr.host import HostProfile
from acrnmgr.model import ElfBoot, KernelBoot, LpcPort, OvmfBoot, VmSpec
from acrnmgr.plan import slots

if TYPE_CHECKING:
    from acrnmgr.plan import DevicePlan

RTVM_VIRTIO_POLL = 1_000_000
PASSTHRU_INTR_MONITOR = "10000,10,1,100"


@dataclass(frozen=True)
class AcrnLaunch:
    argv: list[str]
    taps: list[str]  # tap interfaces to create and attach to `bridge`
    bridge: str
    cpus: list[int]  # LAPIC IDs to offline before acrn-dm runs (offline_cpus)
    passthru: list[str]  # host BDFs ("00:1f.3") to unbind from their drivers


def emulation_of(plan: DevicePlan) -> str:
    return getattr(plan.device, "EMULATION", plan.device.KIND)


def device_args(vm: VmSpec, plans: list[DevicePlan], diags: Diagnostics, family: str) -> list[str]:
    """The config after ``emulation,`` of each device ('' when none), in device order."""
    ctx = AcrnArgs(diags, family)
    return [p.device.acrn_args(ctx, p.backend) for p in plans]


def build(vm: VmSpec, host: HostProfile, plans: list[DevicePlan], args: list[str], diags: Diagnostics,
          family: str) -> AcrnLaunch:
    ctx = AcrnArgs(diags, family)
    s = vm.settings
    rtvm = vm.rtvm
    argv = ["acrn-dm"]
    if rtvm:
        argv.append("--rtvm")  # implies --lapic_pt
    argv += ["-m", _memory(vm.memory)]
    argv += ["--cpu_affinity", _cpu_affinity(vm, host, diags, family)]

    poll = s.virtio_poll
    if poll is None and rtvm and any(p.device.VIRTIO for p in plans):
        poll = RTVM_VIRTIO_POLL  # as ACRN's generator does for an RTVM with virtio devices
    if poll is not None:
        argv += ["--virtio_poll", str(poll)]

    argv += _boot(ctx, vm)
    if vm.uuid:
        diags.warn(("spec", "uuid"), "acrn-dm has had no --uuid since v2.7 (it names VMs only), so under the acrn "
                   "engine the guest does not see this UUID; the qemu and libvirt engines give it")
    if vm.machine != "pc":
        diags.warn(("spec", "machine"), f"acrn-dm emulates one chipset of its own; machine {vm.machine} applies to "
                   "the qemu and libvirt engines")
    where = ("spec", "settings")
    if s.iasl:
        _needs_v3(diags, family, (*where, "iasl"), "--iasl", "3.2")
        argv += ["--iasl", ctx.path(s.iasl, (*where, "iasl"), "")]
    # A Windows guest's virtio drivers want the subsystem vendor --windows sets (ACRN's generator
    # adds it for Windows VMs); `windows: false` turns that off.
    windows = s.windows if s.windows is not None else vm.os_type == "windows"
    for key, on, flag in (("enableTrusty", s.enable_trusty, "--enable_trusty"), ("windows", windows, "--windows"),
                          ("debugexit", s.debugexit, "--debugexit"), ("virtioMsi", s.virtio_msi, "--virtio_msi")):
        if on:
            if key == "virtioMsi":
                _needs_v3(diags, family, (*where, key), flag, "3.0")
            argv.append(flag)
    if s.ssram:
        _needs_v3(diags, family, (*where, "ssram"), "--ssram", "3.0")
        argv += ["--ssram", s.ssram]
    for hid, uid in s.acpi_dev_pt:
        argv += ["--acpidev_pt", hid + (f",{uid}" if uid else "")]
    for base, length in s.mmio_dev_pt:
        argv += ["--mmiodev_pt", f"{base},{length}"]
    if s.vtpm2_sock:
        argv += ["--vtpm2", "sock_path=" + ctx.path(s.vtpm2_sock, (*where, "vtpm2"))]

    passthru = vm.devices_of(Passthru)
    if s.intr_monitor:
        m = s.intr_monitor
        argv += ["--intr_monitor", f"{m.threshold},{m.period},{m.delay_ms},{m.duration_ms}"]
    elif any(not d.gpu for d in passthru):
        argv += ["--intr_monitor", PASSTHRU_INTR_MONITOR]  # ACRN's default with non-GPU passthrough

    if s.logger:
        argv += ["--logger_setting", ";".join(f"{k},level={level}" for k, level in s.logger)]
    if s.pm_notify_channel:
        argv += _pm_notify_channel(s.pm_notify_channel, s.allow_trigger_s5, diags, family)
    if s.cmd_monitor:
        _needs_v3(diags, family, (*where, "cmdMonitor"), "--cmd_monitor", "3.0")
        argv += ["--cmd_monitor", ctx.path(s.cmd_monitor, (*where, "cmdMonitor"), "")]

    nics = vm.devices_of(VirtioNet)
    seeds = sorted({d.mac_seed for d in nics if d.mac_seed})
    if family == "2" and seeds:
        if len(seeds) > 1:
            diags.error(("spec", "devices"), "acrn-dm v2.x has one global --mac_seed; the devices give "
                        f"{len(seeds)} different seeds", "use one macSeed, or `mac:` on the others")
        argv += ["--mac_seed", seeds[0]]

    if rtvm and vm.lpc:
        diags.warn(("spec", "console", "lpc"), "an RTVM gets no LPC bridge (slot 1), so its COM ports are not "
                   "emulated", "use the hypervisor vUART or a virtio-console")
    for port in vm.lpc:
        argv += ["-l", _lpc(ctx, port)]

    for slot, emulation in slots.fixed_slots(rtvm, s.hostbridge):
        argv += ["-s", f"{slot}:0,{emulation}"]
    for plan, config in sorted(((p, a) for p, a in zip(plans, args, strict=True) if p.slot is not None),
                               key=lambda pa: (pa[0].slot or 0, pa[0].device.function)):
        argv += ["-s", f"{plan.slot}:{plan.device.function},{emulation_of(plan)}" + (f",{config}" if config else "")]

    argv += list(vm.extra_args)
    argv.append(vm.name)
    taps = sorted({d.tap for d in nics if d.tap})
    return AcrnLaunch(argv, taps, vm.bridge, offline_cpus(vm), [d.host_bdf for d in passthru])


def offline_cpus(vm: VmSpec) -> list[int]:
    """The CPUs (LAPIC IDs) to take from the Service VM before acrn-dm runs, as ACRN's launch script
    template decides: an RTVM's, and those of a VM that owns its pCPUs (own_pcpu, or the SCHED_NOOP
    scheduler: the spec's cpu.ownPcpu). A shared VM's CPUs stay online in the Service VM; processor 0
    is never offlined (HSM refuses it), which the script and the engine skip with a warning."""
    return list(vm.affinity) if vm.rtvm or vm.own_pcpu else []


# acrn-dm v3's devicemodel/core/main.c marks --pm_notify_channel obsolete (it warns) yet still acts on it:
# `power_button` registers the ACPI power button, which DM_STOP presses (the only graceful stop acrn-dm's
# monitor has). `uart` opens the vUART node that --pm_by_vuart named, but v3 ignores --pm_by_vuart, so
# pm_by_vuart_init (core/pm_vuart.c) finds no node and acrn-dm fails to set the VM up. v3's S5 goes
# through the Lifecycle Manager over the hypervisor's S5 vUART instead, with nothing on acrn-dm's
# command line (`acrnmgr down` sends it user_vm_shutdown). `ioc` needs the IOC mediator (-i), which v3
# ignores as obsolete.
PM_V3_UART = ("acrn-dm v3 cannot use pmNotifyChannel: uart: --pm_by_vuart is obsolete and ignored, so "
              "pm_by_vuart_init finds no vUART node and acrn-dm fails to set up the VM. In v3 the guest's "
              "Lifecycle Manager (life_mngr) talks to the Service VM's over the hypervisor's S5 vUART, with "
              "nothing on acrn-dm's command line (`acrnmgr down` asks it for user_vm_shutdown), so no "
              "--pm_notify_channel is written")


def _pm_notify_channel(channel: str, allow_trigger_s5: bool, diags: Diagnostics, family: str) -> list[str]:
    where = ("spec", "settings", "pmNotifyChannel")
    if allow_trigger_s5 and channel != "uart":
        diags.error(("spec", "settings", "allowTriggerS5"), "allowTriggerS5 only works with pmNotifyChannel: uart")
    if family == "2":
        return ["--pm_notify_channel", channel + (",allow_trigger_s5" if allow_trigger_s5 else "")]
    if channel == "uart":
        diags.warn(where, PM_V3_UART, "remove pmNotifyChannel (and allowTriggerS5: a User VM's right to trigger "
                   "system S5 is the Service VM Lifecycle Manager's configuration in v3), or target 2.7")
        return []
    if channel == "ioc":
        diags.error(where, "pmNotifyChannel: ioc needs the IOC mediator (-i), which acrn-dm v3 ignores as obsolete",
                    "use pmNotifyChannel: power_button, or remove it (v3's S5 goes through life_mngr)")
        return []
    return ["--pm_notify_channel", channel]  # power_button: acrn-dm v3 warns that it is obsolete, and acts on it


def _needs_v3(diags: Diagnostics, family: str, where: tuple[str, ...], option: str, since: str) -> None:
    if family == "2":
        diags.error(where, f"{option} needs acrn-dm v{since} or later; the target is v2.7",
                    "remove the setting or target 3.x")


def _memory(size: int) -> str:
    return f"{size >> 20}M" if size % (1 << 20) == 0 else f"{size >> 10}K"


def _cpu_affinity(vm: VmSpec, host: HostProfile, diags: Diagnostics, family: str) -> str:
    if family == "3":
        return ",".join(str(c) for c in vm.affinity)
    # v2.x takes pCPU IDs: the index of each LAPIC ID in the host's CPU list.
    known = host.lapic_ids
    pcpus = []
    for n, lapic in enumerate(vm.affinity):
        if known and lapic not in known:
            diags.error(("spec", "cpu", "affinity", n), f"LAPIC ID {lapic} is not a CPU of the host profile "
                        f"(LAPIC IDs {known}); v2.7 needs the pCPU ID", "pick LAPIC IDs the host has")
            continue
        pcpus.append(known.index(lapic) if known else lapic)
    return _ranges(sorted(pcpus))


def _ranges(values: list[int]) -> str:
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def _boot(ctx: AcrnArgs, vm: VmSpec) -> list[str]:
    boot = vm.boot
    where = ("spec", "boot")
    if isinstance(boot, OvmfBoot):
        prefix = "w," if boot.writeback else ""
        if boot.image:
            return ["--ovmf", prefix + ctx.path(boot.image, (*where, "ovmf", "image"))]
        code = ctx.path(boot.code or "", (*where, "ovmf", "code"), ",=")
        nvram = ctx.path(boot.vars or "", (*where, "ovmf", "vars"), ",=")
        return ["--ovmf", f"{prefix}code={code},vars={nvram}"]
    if isinstance(boot, KernelBoot):
        argv = ["-k", ctx.path(boot.path, (*where, "kernel", "path"), "")]
        if boot.initrd:
            argv += ["-r", ctx.path(boot.initrd, (*where, "kernel", "initrd"), "")]
        if boot.cmdline:
            argv += ["-B", boot.cmdline]
        return argv
    assert isinstance(boot, ElfBoot)
    return ["-E", ctx.path(boot.path, (*where, "elf", "path"), "")]


def _lpc(ctx: AcrnArgs, port: LpcPort) -> str:
    where = port.where
    name = port.port
    if name == "com5":
        path = ctx.path(port.path, (*where, "path")) if port.path else ""
        if not path or port.tcp_port is None or port.irq is None:
            ctx.diags.error(where, "com5 (the S5 UART) needs path, tcpPort and irq", "com5: {path, tcpPort, irq}")
        return f"com5,{path},{'' if port.tcp_port is None else port.tcp_port},{'' if port.irq is None else port.irq}"
    if port.backend == "stdio":
        return f"{name},stdio"
    if port.backend == "tcp":
        if port.tcp_port is None:
            ctx.diags.error(where, f"{name} with backend tcp needs tcpPort")
        return f"{name},tcp:{'' if port.tcp_port is None else port.tcp_port}"
    if not port.path:
        ctx.diags.error(where, f"{name} with backend tty needs path", "path: /dev/pts/N")
        return f"{name},"
    return f"{name},{ctx.path(port.path, (*where, 'path'))}"
