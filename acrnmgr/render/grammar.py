"""The acrn-dm command-line grammar: the options of acrn-dm's main.c and the -s config of each PCI emulation.

`parse_argv(argv, version)` parses an acrn-dm argv the way acrn-dm's getopt_long loop and
its per-emulation parsers would, and returns a structured `DmCommand`. Anything acrn-dm
would reject raises `GrammarError` with the offending argument named; things acrn-dm
accepts but ignores (obsolete options) are reported in `DmCommand.warnings`.

Used by the compiler's tests (rendered argv parse back to the same devices), by the
lifecycle tests' stand-in acrn-dm, and for importing existing ACRN launch scripts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from acrnmgr.devices import (
    ahci,
    ivshmem,
    passthru,
    uart,
    vhost_vsock,
    virtio_blk,
    virtio_console,
    virtio_gpio,
    virtio_gpu,
    virtio_i2c,
    virtio_input,
    virtio_net,
    virtio_rnd,
    xhci,
)
from acrnmgr.devices.base import GrammarError, SlotDevice, acrn_int
from acrnmgr.plan import family_of
from acrnmgr.spec.checks import MIN_MEMORY

MAX_VM_NAME_LEN = 15


@dataclass(frozen=True)
class Option:
    long: str
    short: str | None = None
    has_arg: bool = True
    obsolete: str | None = None  # warning text: accepted and ignored


def _opts(*options: Option) -> dict[str, Option]:
    return {o.long: o for o in options}


_COMMON = (
    Option("elf_file", "E"),
    Option("lpc", "l"),
    Option("pci_slot", "s"),
    Option("memsize", "m"),
    Option("kernel", "k"),
    Option("ramdisk", "r"),
    Option("bootargs", "B"),
    Option("version", "v", has_arg=False),
    Option("help", "h", has_arg=False),
    Option("ovmf"),
    Option("cpu_affinity"),
    Option("enable_trusty", has_arg=False),
    Option("virtio_poll"),
    Option("debugexit", has_arg=False),
    Option("intr_monitor"),
    Option("acpidev_pt"),
    Option("mmiodev_pt"),
    Option("vtpm2"),
    Option("lapic_pt", has_arg=False),
    Option("rtvm", has_arg=False),
    Option("logger_setting"),
    Option("pm_notify_channel"),
    Option("windows", has_arg=False),
)

# v3.x (devicemodel/core/main.c after v3.0): -U, -W and -p are gone (getopt falls to usage).
OPTIONS_V3 = _opts(
    *_COMMON,
    Option("acpi", "A", has_arg=False, obsolete="-A is obsolete: virtual ACPI tables are always built"),
    Option("ioc_node", "i", obsolete="-i/--ioc_node is obsolete"),
    Option("mptgen", "Y", has_arg=False, obsolete="-Y/--mptgen is obsolete"),
    Option("gvtargs", "G", obsolete="-G/--gvtargs is obsolete"),
    Option("vsbl", obsolete="--vsbl is obsolete"),
    Option("part_info", obsolete="--part_info is obsolete"),
    Option("pm_by_vuart", obsolete="--pm_by_vuart is obsolete"),
    Option("mac_seed", obsolete="--mac_seed is obsolete: use virtio-net,tap=<name>,mac_seed=<seed>"),
    Option("iasl"),
    Option("cmd_monitor"),
    Option("ssram"),
    Option("virtio_msi", has_arg=False),
)

# v2.x (v2.5-v2.7): --mac_seed is live, -W exists, no --iasl/--cmd_monitor/--ssram/--virtio_msi.
OPTIONS_V2 = _opts(
    *_COMMON,
    Option("acpi", "A", has_arg=False),
    Option("ioc_node", "i"),
    Option("mptgen", "Y", has_arg=False),
    Option("gvtargs", "G"),
    Option("vsbl"),
    Option("part_info"),
    Option("pm_by_vuart"),
    Option("mac_seed"),
    Option("virtio_msix", "W", has_arg=False),
)

REMOVED_HINTS = {
    "U": "-U/--uuid was removed in v2.7: VMs are identified by name",
    "uuid": "-U/--uuid was removed in v2.7: VMs are identified by name",
    "W": "-W/--virtio_msix was removed in v3.0 (use --virtio_msi to force MSI)",
    "virtio_msix": "-W/--virtio_msix was removed in v3.0 (use --virtio_msi to force MSI)",
    "p": "-p was removed by v2.0: use --cpu_affinity",
    "c": "-c was removed: the vCPU count follows --cpu_affinity",
    "iasl": "--iasl needs acrn-dm v3.2 or later",
    "cmd_monitor": "--cmd_monitor needs acrn-dm v3.0 or later",
    "ssram": "--ssram with a buffer layout needs acrn-dm v3.x",
    "virtio_msi": "--virtio_msi needs acrn-dm v3.x",
}

EMULATIONS = frozenset({
    "hostbridge", "amd_hostbridge", "lpc", "igd-lpc", "dummy", "passthru", "ivshmem", "uart",
    "wdt-i6300esb", "xhci", "ahci", "ahci-hd", "ahci-cd", "virtio-blk", "virtio-net",
    "virtio-console", "virtio-rnd", "virtio-input", "virtio-gpu", "virtio-i2c", "virtio-gpio",
    "virtio-heci", "virtio-rpmb", "virtio-audio", "virtio-ipu", "virtio-hyper_dmabuf", "vhost-vsock",
})
OBSOLETE_EMULATIONS = frozenset({"pci-gvt", "virtio-hdcp", "npk", "virtio-coreu"})


def version_family(version: str) -> str:
    """'3.x', '3.2', 'v3.0' -> '3'; '2.7', '2.x' -> '2'."""
    try:
        return family_of(version)
    except ValueError as exc:
        raise GrammarError(str(exc)) from None


@dataclass
class DmCommand:
    vm_name: str
    version: str
    options: list[tuple[str, str | None]]  # (long name, value) in argv order, -s excluded
    slots: list[SlotDevice]
    lpc: dict[str, dict]
    warnings: list[str]

    def get(self, name: str) -> str | None:
        """Last value of an option (acrn-dm keeps the last), None if absent or a flag."""
        values = [v for n, v in self.options if n == name]
        return values[-1] if values else None

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.options)

    def all(self, name: str) -> list[str]:
        """Every value of an option that takes an argument, in argv order."""
        return [v for n, v in self.options if n == name and v is not None]

    def slot(self, number: int, bus: int = 0, func: int = 0) -> SlotDevice | None:
        return next((s for s in self.slots if (s.bus, s.slot, s.func) == (bus, number, func)), None)


# ---------------------------------------------------------------------------------------------
# getopt_long


def parse_argv(argv: list[str], version: str = "3.x") -> DmCommand:
    """Parse an acrn-dm argv (with or without the leading program name)."""
    family = version_family(version)
    table = OPTIONS_V3 if family == "3" else OPTIONS_V2
    by_short = {o.short: o for o in table.values() if o.short}
    args = list(argv)
    if args and (args[0] == "acrn-dm" or args[0].endswith("/acrn-dm")):
        args = args[1:]

    options: list[tuple[str, str | None]] = []
    positional: list[str] = []
    opt: Option | None  # a short option may be unknown
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional.extend(args[i:])
            break
        if arg.startswith("--"):
            name, eq, inline = arg[2:].partition("=")
            opt = _match_long(table, name, family)
            if opt.has_arg:
                if eq:
                    value = inline
                elif i < len(args):
                    value, i = args[i], i + 1
                else:
                    raise GrammarError(f"option '--{opt.long}' requires an argument")
            else:
                if eq:
                    raise GrammarError(f"option '--{opt.long}' doesn't allow an argument")
                value = None
            options.append((opt.long, value))
        elif arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                ch = arg[j]
                opt = by_short.get(ch)
                if opt is None:
                    hint = REMOVED_HINTS.get(ch)
                    raise GrammarError(f"invalid option -- '{ch}'" + (f": {hint}" if hint else ""))
                if opt.has_arg:
                    if j + 1 < len(arg):
                        value = arg[j + 1:]
                    elif i < len(args):
                        value, i = args[i], i + 1
                    else:
                        raise GrammarError(f"option requires an argument -- '{ch}'")
                    options.append((opt.long, value))
                    break
                options.append((opt.long, None))
                j += 1
        else:
            positional.append(arg)  # GNU getopt permutes: operands may come anywhere

    warnings: list[str] = []
    slots: list[SlotDevice] = []
    lpc: dict[str, dict] = {}
    kept: list[tuple[str, str | None]] = []
    for name, value in options:
        opt = table[name]
        if opt.obsolete:
            warnings.append(opt.obsolete)  # acrn-dm warns and ignores it
            continue
        if name == "pci_slot":
            assert value is not None  # -s takes an argument
            device = parse_slot(value, family)
            if device is None:
                warnings.append(f"-s {value}: obsolete emulation ignored")
                continue
            if any((s.bus, s.slot, s.func) == (device.bus, device.slot, device.func) for s in slots):
                raise GrammarError(f"-s {value}: pci slot {device.bdf} already occupied")
            slots.append(device)
            continue
        if name in ("help", "version"):
            raise GrammarError(f"--{name} prints and exits: not a VM launch")
        _check_option(name, value, family, lpc, warnings)
        kept.append((name, value))

    if len(positional) != 1:
        raise GrammarError(
            "you must provide the name of the VM (exactly one operand)"
            + (f"; got {positional!r}" if positional else "")
        )
    vm_name = positional[0]
    if not vm_name or len(vm_name) > MAX_VM_NAME_LEN:
        raise GrammarError(f"VM name {vm_name!r} exceeds the maximum length {MAX_VM_NAME_LEN}")

    cmd = DmCommand(vm_name, family + ".x", kept, slots, lpc, warnings)
    _check_whole(cmd)
    return cmd


def _match_long(table: dict[str, Option], name: str, family: str) -> Option:
    if name in table:
        return table[name]
    candidates = [o for o in table.values() if o.long.startswith(name)] if name else []
    if len(candidates) == 1:  # getopt_long accepts unambiguous prefixes
        return candidates[0]
    if len(candidates) > 1:
        raise GrammarError(f"option '--{name}' is ambiguous: {', '.join('--' + c.long for c in candidates)}")
    hint = REMOVED_HINTS.get(name)
    raise GrammarError(f"unrecognized option '--{name}'" + (f" for acrn-dm v{family}.x: {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------
# global options

_MEM_RE = re.compile(r"^(\d+)([KkMmGg]?)\Z")
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_memsize(value: str) -> int:
    match = _MEM_RE.match(value)
    if not match:
        raise GrammarError(f"invalid memsize '{value}': use <n>K, <n>M or <n>G")
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size < MIN_MEMORY:
        raise GrammarError(f"invalid memsize '{value}': at least 128M is needed")
    return size


def parse_cpu_affinity(value: str, family: str = "3") -> list[int]:
    cpus: list[int] = []
    for part in value.split(","):
        if family == "2" and "-" in part:
            lo, _, hi = part.partition("-")
            a, b = acrn_int(lo, "--cpu_affinity", 0), acrn_int(hi, "--cpu_affinity", 0)
            if a > b:
                raise GrammarError(f"invalid pcpu param {value}: range {part} is reversed")
            cpus.extend(range(a, b + 1))
        else:
            if not part.isdigit():
                hint = " (v3.x takes LAPIC IDs, no ranges)" if "-" in part else ""
                raise GrammarError(f"invalid pcpu param {value}{hint}")
            cpus.append(int(part))
    if len(set(cpus)) != len(cpus):
        raise GrammarError(f"invalid pcpu param {value}: duplicate CPU")
    return cpus


def parse_lpc(value: str) -> tuple[str, dict]:
    name, _, rest = value.partition(",")
    lname = name.lower()
    if lname == "com5":
        parts = rest.split(",")
        if len(parts) != 3 or not parts[0]:
            raise GrammarError(f"invalid lpc device configuration '{value}': com5,<path>,<port>,<irq>")
        return lname, {"backend": "s5", "path": parts[0], "port": acrn_int(parts[1], "com5 port", 0, 65535),
                       "irq": acrn_int(parts[2], "com5 irq", 0, 255)}
    if lname not in ("com1", "com2", "com3", "com4"):
        raise GrammarError(f"invalid lpc device configuration '{value}': unknown device {name!r}")
    if not rest:
        raise GrammarError(f"invalid lpc device configuration '{value}': missing backend")
    if rest == "stdio":
        return lname, {"backend": "stdio"}
    if rest.startswith("tcp:"):
        return lname, {"backend": "tcp", "port": acrn_int(rest[4:], f"{lname} tcp port", 1, 65535)}
    return lname, {"backend": "tty", "path": rest}


def parse_ovmf(value: str) -> dict:
    parts = value.split(",")
    writeback = parts[0] == "w"
    if writeback:
        parts = parts[1:]
    if not parts or not parts[0]:
        raise GrammarError(f"invalid ovmf param {value}")
    if parts[0].startswith("code="):
        if len(parts) != 2 or not parts[1].startswith("vars=") or not parts[0][5:] or not parts[1][5:]:
            raise GrammarError(f"invalid ovmf param {value}: use [w,]code=<file>,vars=<file>")
        return {"writeback": writeback, "code": parts[0][5:], "vars": parts[1][5:]}
    if len(parts) != 1:
        raise GrammarError(f"invalid ovmf param {value}")
    return {"writeback": writeback, "image": parts[0]}


_LOGGERS = ("console", "kmsg", "disk")


def _check_option(name: str, value: str | None, family: str, lpc: dict, warnings: list[str]) -> None:
    if value is None:
        return  # a flag: every option checked below takes an argument
    if name == "memsize":
        parse_memsize(value)
    elif name == "lpc":
        port, conf = parse_lpc(value)
        if port in lpc:
            raise GrammarError(f"invalid lpc device configuration '{value}': {port} given twice")
        lpc[port] = conf
    elif name == "cpu_affinity":
        parse_cpu_affinity(value, family)
    elif name == "virtio_poll":
        acrn_int(value, "invalid virtio poll interval", 1, 10_000_000)
    elif name == "bootargs":
        if len(value) > 1023:
            raise GrammarError(f"-B bootargs is {len(value)} characters; the maximum is 1023")
    elif name == "ovmf":
        parse_ovmf(value)
    elif name == "intr_monitor":
        parts = value.split(",")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise GrammarError(f"invalid intr-monitor params {value}: threshold/s,period,delay_ms,duration_ms")
    elif name == "logger_setting":
        for item in value.split(";"):
            match = re.fullmatch(r"(\w+),level=(\d+)", item)
            if not match or match.group(1) not in _LOGGERS or int(match.group(2)) > 7:
                raise GrammarError(f"invalid logger setting params {value}")
    elif name == "pm_notify_channel":
        if value not in ("ioc", "power_button", "uart", "uart,allow_trigger_s5"):
            raise GrammarError(f"invalid pm_notify_channel: {value}")
        if family == "3":
            warnings.append('The "--pm_notify_channel" parameter is obsolete (acrn-dm v3 warns, and still acts on it)')
            if value.startswith("uart"):
                warnings.append(f"--pm_notify_channel {value}: acrn-dm v3 ignores --pm_by_vuart, so it has no vUART "
                                "node for it and fails to set up the VM")
    elif name == "acpidev_pt":
        hid, _, uid = value.partition(",")
        if not re.fullmatch(r"[A-Z0-9]{7,8}", hid):
            raise GrammarError(f"invalid pt acpi dev param {value}: HID[,UID]")
    elif name == "mmiodev_pt":
        parts = value.split(",")
        if len(parts) != 2 or not all(re.fullmatch(r"0[xX][0-9a-fA-F]+", p) for p in parts):
            raise GrammarError(f"invalid pt mmio dev param {value}: <base>,<length> in hex")
    elif name == "vtpm2":
        if not value.startswith("sock_path=") or len(value) == len("sock_path="):
            raise GrammarError(f"invalid vtpm2 param {value}: sock_path=<swtpm socket>")
    elif name in ("cmd_monitor", "iasl", "ssram", "kernel", "ramdisk", "elf_file", "mac_seed"):
        if not value:
            raise GrammarError(f"--{name} needs a non-empty argument")


def _check_whole(cmd: DmCommand) -> None:
    if cmd.has("vtpm2") and any(v.split(",")[0] == "MSFT0101" for v in cmd.all("acpidev_pt")):
        raise GrammarError("--vtpm2 and TPM passthrough (--acpidev_pt MSFT0101) exclude each other")
    if cmd.has("lapic_pt") and not cmd.has("rtvm"):
        cmd.warnings.append("--lapic_pt without --rtvm is ignored: only an RTVM can pass the local APIC through")
    stdio = [f"-l {port}" for port, conf in cmd.lpc.items() if conf["backend"] == "stdio"]
    for dev in cmd.slots:
        if dev.emul == "virtio-console":
            stdio += [f"-s {dev.bdf} virtio-console" for p in dev.params["ports"] if p["kind"] == "stdio"]
    if len(stdio) > 1:
        raise GrammarError(f"stdio used by more than one device: {', '.join(stdio)}")
    seen_cids: dict[int, str] = {}
    for dev in cmd.slots:
        if dev.emul == "vhost-vsock":
            cid = dev.params["cid"]
            if cid in seen_cids:
                raise GrammarError(f"vhost-vsock cid={cid} used twice ({seen_cids[cid]} and {dev.bdf})")
            seen_cids[cid] = dev.bdf


# ---------------------------------------------------------------------------------------------
# -s slots and emulation configs


def parse_slot(value: str, family: str = "3") -> SlotDevice | None:
    """Parse `[bus:]slot[:func],emul[,config]`; None for obsolete (silently ignored) emulations."""
    where, _, rest = value.partition(",")
    emul, _, config = rest.partition(",")
    numbers = where.split(":")
    if not rest or not emul or len(numbers) > 3 or not all(n.isdigit() for n in numbers):
        raise GrammarError(f"invalid -s {value!r}: use [bus:]slot[:func],emul[,config]")
    nums = [int(n) for n in numbers]
    bus, slot, func = (0, nums[0], 0) if len(nums) == 1 else ((0, *nums) if len(nums) == 2 else tuple(nums))
    if bus > 255 or slot > 31 or func > 7:
        raise GrammarError(f"invalid -s {value!r}: bus 0-255, slot 0-31, func 0-7")
    if emul in OBSOLETE_EMULATIONS:
        return None
    if emul not in EMULATIONS:
        raise GrammarError(f"invalid -s {value!r}: unknown emulation {emul!r}")
    boot = config == "b" or config.startswith("b,")
    body = config[2:] if boot else config
    params = _EMUL_PARSERS.get(emul, _no_config)(emul, body, family)
    return SlotDevice(bus, slot, func, emul, config, boot, params)


def _no_config(emul: str, body: str, family: str) -> dict:
    if body:
        raise GrammarError(f"{emul} takes no config, got {body!r}")
    return {}


def _raw(emul: str, body: str, family: str) -> dict:
    return {"args": body}


def _parse_heci(emul: str, body: str, family: str) -> dict:
    if not re.fullmatch(r"[0-9a-fA-F]+:[0-9a-fA-F]+:[0-7],d[0-8]", body):
        raise GrammarError(f"virtio-heci: {body!r}: use <b>:<d>:<f>,d<0-8>")
    return {"args": body}


def _parse_rpmb(emul: str, body: str, family: str) -> dict:
    if body not in ("", "physical_rpmb"):
        raise GrammarError(f"virtio-rpmb: unknown config {body!r}")
    return {"physical": body == "physical_rpmb"}


_EMUL_PARSERS = {
    "virtio-blk": virtio_blk.parse_acrn,
    "virtio-net": virtio_net.parse_acrn,
    "virtio-console": virtio_console.parse_acrn,
    "passthru": passthru.parse_acrn,
    "ivshmem": ivshmem.parse_acrn,
    "vhost-vsock": vhost_vsock.parse_acrn,
    "virtio-gpu": virtio_gpu.parse_acrn,
    "virtio-input": virtio_input.parse_acrn,
    "virtio-rnd": virtio_rnd.parse_acrn,
    "xhci": xhci.parse_acrn,
    "uart": uart.parse_acrn,
    "ahci": ahci.parse_acrn,
    "ahci-hd": ahci.parse_acrn,
    "ahci-cd": ahci.parse_acrn,
    "virtio-heci": _parse_heci,
    "virtio-rpmb": _parse_rpmb,
    "virtio-i2c": virtio_i2c.parse_acrn,
    "virtio-gpio": virtio_gpio.parse_acrn,
    "virtio-audio": _raw,
    "virtio-ipu": _raw,
    "virtio-hyper_dmabuf": _raw,
}
