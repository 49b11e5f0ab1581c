"""An acrn-dm argv -> an acrnmgr spec document, through acrnmgr.render.grammar.

The spec renders back (acrnmgr.render.acrndm) to an argv that is *equivalent*: the same
`normalized_argv()`. What normalization covers, explicitly:
- option order: the compiler writes options in a fixed order and `-s` slots sorted by slot;
- `-m` in MiB (`-m 1G` -> `-m 1024M`);
- `--lapic_pt` next to `--rtvm` is dropped (--rtvm implies it);
- `igd-lpc` (acrn-dm adds it itself with a GPU passthrough) is dropped. `-s 0:0,hostbridge`
  and `-s 1:0,lpc` are not in the spec (the compiler always adds them); a source without them
  gets a warning, and its normalized argv differs;
- short/long spellings (`-s`/`--pci_slot`) and `slot` vs `slot:0` are the same thing;
- a device on function N of a slot keeps it (`slot` and `function`); one on a bus other than 0 stays in
  extraArgs;
- virtio-blk's default `writethru` may be written or not;
- options acrn-dm ignores with a warning (an unknown passthru option) are left out.
Devices keep their slots: where the automatic assignment (device order, from slot 3) would
differ, the device gets an explicit `slot`."""

from __future__ import annotations

from typing import Any

from acrnmgr.devices import BY_EMULATION
from acrnmgr.devices.base import SlotDevice
from acrnmgr.importers.common import ImportedSpec
from acrnmgr.plan.acrn import PASSTHRU_INTR_MONITOR, RTVM_VIRTIO_POLL
from acrnmgr.plan.slots import HOSTBRIDGE_SLOT, LPC_SLOT, assign_slots, requests_of
from acrnmgr.render.grammar import (
    DmCommand,
    GrammarError,
    parse_argv,
    parse_cpu_affinity,
    parse_memsize,
    parse_ovmf,
)
from acrnmgr.spec.units import format_size

IMPLIED_EMULATIONS = {"hostbridge": HOSTBRIDGE_SLOT, "amd_hostbridge": HOSTBRIDGE_SLOT, "lpc": LPC_SLOT}


def spec_from_argv(argv: list[str], version: str = "3.x", name: str | None = None,
                   os_type: str | None = None) -> ImportedSpec:
    """Raises GrammarError when acrn-dm itself would refuse the argv."""
    cmd = parse_argv(argv, version)
    warnings = list(cmd.warnings)
    spec: dict = {}
    settings: dict = {}
    extra: list[str] = []

    rtvm = cmd.has("rtvm")
    if rtvm:
        spec["vmType"] = "rtvm"
    elif cmd.has("lapic_pt"):
        warnings.append("--lapic_pt without --rtvm is ignored by acrn-dm (with a warning); not imported")
    if os_type:
        spec["osType"] = os_type
    elif cmd.has("windows"):
        spec["osType"] = "windows"

    affinity = cmd.get("cpu_affinity")
    if affinity is None:
        raise GrammarError("no --cpu_affinity: acrnmgr specs pin every VM to explicit CPUs (LAPIC IDs); "
                           "add --cpu_affinity to the source")

    spec["cpu"] = {"affinity": parse_cpu_affinity(affinity, cmd.version[0])}
    memsize = cmd.get("memsize")
    if memsize is None:
        raise GrammarError("no -m/--memsize: give the VM's memory size")
    spec["memory"] = format_size(parse_memsize(memsize))

    spec["boot"] = _boot(cmd, warnings)
    lpc = []
    for port, conf in cmd.lpc.items():
        if conf["backend"] == "s5":
            lpc.append({"port": port, "path": conf["path"], "tcpPort": conf["port"], "irq": conf["irq"]})
        elif conf["backend"] == "tcp":
            lpc.append({"port": port, "backend": "tcp", "tcpPort": conf["port"]})
        elif conf["backend"] == "tty":
            lpc.append({"port": port, "backend": "tty", "path": conf["path"]})
        else:
            lpc.append({"port": port, "backend": "stdio"})
    if lpc:
        spec["console"] = {"lpc": lpc}

    devices, slots = _devices(cmd, rtvm, warnings, extra)
    if any(s.emul == "amd_hostbridge" and (s.bus, s.slot, s.func) == (0, HOSTBRIDGE_SLOT, 0) for s in cmd.slots):
        settings["hostbridge"] = "amd"
    has_virtio = any(d["type"].startswith("virtio") or d["type"] == "vhost-vsock" for d in devices)
    has_plain_passthru = any(d["type"] == "passthru" and not d.get("gpu") for d in devices)

    # global settings, in the compiler's vocabulary
    poll = cmd.get("virtio_poll")
    if poll is not None and not (rtvm and has_virtio and poll == str(RTVM_VIRTIO_POLL)):
        settings["virtioPoll"] = int(poll)
    elif poll is None and rtvm and has_virtio:
        warnings.append(f"an RTVM with virtio devices gets --virtio_poll {RTVM_VIRTIO_POLL} from acrnmgr (as from "
                        "ACRN's generator); the source had no --virtio_poll")
    if cmd.get("iasl"):
        settings["iasl"] = cmd.get("iasl")
    for option, key in (("enable_trusty", "enableTrusty"), ("windows", "windows"), ("debugexit", "debugexit"),
                        ("virtio_msi", "virtioMsi")):
        if cmd.has(option):
            settings[key] = True
    if cmd.has("ssram"):
        settings["ssram"] = cmd.get("ssram")
    acpi = []
    for value in cmd.all("acpidev_pt"):
        hid, _, uid = value.partition(",")
        acpi.append({"hid": hid, **({"uid": uid} if uid else {})})
    if acpi:
        settings["acpiDevPt"] = acpi
    mmio = []
    for value in cmd.all("mmiodev_pt"):
        base, _, length = value.partition(",")
        mmio.append({"base": base, "length": length})
    if mmio:
        settings["mmioDevPt"] = mmio
    vtpm = cmd.get("vtpm2")
    if vtpm is not None:
        if vtpm.startswith("sock_path="):
            settings["vtpm2"] = {"sockPath": vtpm[len("sock_path="):]}
        else:
            warnings.append(f"--vtpm2 {vtpm}: expected sock_path=<path>; kept in extraArgs")
            extra += ["--vtpm2", vtpm]
    monitor = cmd.get("intr_monitor")
    if monitor is not None and not (monitor == PASSTHRU_INTR_MONITOR and has_plain_passthru):
        t, p, d, u = (int(x) for x in monitor.split(","))
        settings["intrMonitor"] = {"threshold": t, "period": p, "delayMs": d, "durationMs": u}
    elif monitor is None and has_plain_passthru:
        warnings.append("the source has passthrough devices but no --intr_monitor; acrnmgr adds ACRN's default "
                        f"--intr_monitor {PASSTHRU_INTR_MONITOR}")
    logger = cmd.get("logger_setting")
    if logger:
        settings["logger"] = {k: int(v) for k, v in (item.split(",level=") for item in logger.split(";"))}
    pm = cmd.get("pm_notify_channel")
    if pm:
        channel, _, flag = pm.partition(",")
        if cmd.version.startswith("3") and channel != "power_button":
            # what acrn-dm v3 does with it: see acrnmgr.plan.acrn._pm_notify_channel
            warnings.append(f"--pm_notify_channel {pm}: not imported: acrn-dm v3 cannot act on it ("
                            + ("no vUART node: --pm_by_vuart is obsolete; v3's S5 goes through the Lifecycle "
                               "Manager over the hypervisor's S5 vUART" if channel == "uart" else
                               "the IOC mediator is gone") + ")")
        else:
            settings["pmNotifyChannel"] = channel
            if flag == "allow_trigger_s5":
                settings["allowTriggerS5"] = True
    if cmd.get("cmd_monitor"):
        settings["cmdMonitor"] = cmd.get("cmd_monitor")

    if devices:
        spec["devices"] = devices
    if settings:
        spec["settings"] = settings
    if extra:
        spec["extraArgs"] = extra
    data: dict[str, Any] = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": {"name": name or cmd.vm_name},
                            "spec": spec}
    return ImportedSpec(data["metadata"]["name"], data, warnings, source_argv=list(argv))


def _boot(cmd: DmCommand, warnings: list[str]) -> dict:
    kinds = [k for k in ("ovmf", "kernel", "elf_file") if cmd.has(k)]
    if len(kinds) > 1:
        warnings.append(f"more than one boot method ({', '.join('--' + k for k in kinds)}); using --{kinds[0]}")
    if not kinds:
        raise GrammarError("no boot method: give --ovmf, -k (kernel) or -E (ELF)")
    kind = kinds[0]
    if kind == "ovmf":
        value = cmd.get("ovmf")
        assert value is not None  # --ovmf takes an argument
        ovmf = parse_ovmf(value)
        out = {k: ovmf[k] for k in ("image", "code", "vars") if k in ovmf}
        if ovmf["writeback"]:
            out["writeback"] = True
        return {"ovmf": out}
    if kind == "kernel":
        kernel = {"path": cmd.get("kernel")}
        if cmd.get("ramdisk"):
            kernel["initrd"] = cmd.get("ramdisk")
        if cmd.get("bootargs"):
            kernel["cmdline"] = cmd.get("bootargs")
        return {"kernel": kernel}
    if cmd.get("ramdisk") or cmd.get("bootargs"):
        warnings.append("-r/-B only apply to a -k kernel boot; ignored with -E")
    return {"elf": {"path": cmd.get("elf_file")}}


def _devices(cmd: DmCommand, rtvm: bool, warnings: list[str], extra: list[str]) -> tuple[list[dict], list[int]]:
    present = {s.emul for s in cmd.slots}
    if not present & {"hostbridge", "amd_hostbridge"}:
        warnings.append("no -s 0:0,hostbridge in the source; acrnmgr always adds it")
    if not rtvm and "lpc" not in present:
        warnings.append("no -s 1:0,lpc in the source; acrnmgr adds it for every non-RTVM")
    devices: list[dict] = []
    slots: list[int] = []
    for dev in sorted(cmd.slots, key=lambda s: (s.bus, s.slot, s.func)):
        if dev.emul in IMPLIED_EMULATIONS and (dev.bus, dev.slot, dev.func) == (0, IMPLIED_EMULATIONS[dev.emul], 0):
            continue
        if dev.emul == "igd-lpc":
            continue  # acrn-dm adds it itself with an Intel GPU passthrough
        raw = f"{dev.bus}:{dev.slot}:{dev.func},{dev.emul}" + (f",{dev.config}" if dev.config else "")
        if dev.bus:
            # acrn-dm's parser takes buses 0-255, but a spec device sits on bus 0: QEMU's pc machine and
            # libvirt have no second root bus without extra controllers.
            warnings.append(f"-s {raw}: a device on PCI bus {dev.bus} is not modelled (spec devices sit on bus 0); "
                            "kept in extraArgs")
            extra += ["-s", raw]
            continue
        device = _device(dev, warnings)
        if device is None:
            warnings.append(f"-s {raw}: {dev.emul} is not modelled by the spec; kept in extraArgs")
            extra += ["-s", raw]
            continue
        if dev.func:
            device["slot"], device["function"] = dev.slot, dev.func  # a function needs its slot given
        devices.append(device)
        slots.append(dev.slot)

    # Keep every device on its slot: pin a slot only where the automatic assignment differs.
    for _ in range(len(devices) + 1):
        assigned, _problems = assign_slots(requests_of(devices))
        wrong = [i for i, s in enumerate(assigned) if s != slots[i] and "slot" not in devices[i]]
        if not wrong:
            break
        devices[wrong[0]]["slot"] = slots[wrong[0]]
    return devices, slots


def _device(dev: SlotDevice, warnings: list[str]) -> dict | None:
    """The spec form of one -s device: its kind's module reads it back (acrnmgr/devices/<kind>.py)."""
    kind = BY_EMULATION.get(dev.emul)
    return kind.spec_from_acrn(dev, warnings) if kind is not None else None


# ---------------------------------------------------------------------------------------------
# equivalence


def normalized_argv(argv: list[str], version: str = "3.x") -> dict:
    """A canonical form of an acrn-dm argv: equal for argvs that configure the same VM
    (see the module docstring for exactly what is normalized)."""
    cmd = parse_argv(argv, version)
    options = []
    for name, value in cmd.options:
        if name == "lapic_pt" and cmd.has("rtvm"):
            continue
        if name == "memsize":
            assert value is not None  # -m takes an argument
            value = str(parse_memsize(value))
        options.append((name, value))
    slots = []
    for s in cmd.slots:
        if s.emul == "igd-lpc":
            continue
        params = dict(s.params)
        params.pop("ignored", None)  # options acrn-dm ignores (an unknown passthru option)
        if s.emul == "ahci-hd" or s.emul == "ahci-cd":
            params = {"hd": params.get("hd", []), "cd": params.get("cd", [])}
        emul = "ahci" if s.emul.startswith("ahci") else s.emul
        slots.append(((s.bus, s.slot, s.func), emul, s.boot, _freeze(params)))
    return {"name": cmd.vm_name, "options": sorted(options, key=repr), "slots": sorted(slots, key=repr)}


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
