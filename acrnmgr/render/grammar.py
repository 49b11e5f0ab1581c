"""The acrn-dm command-line grammar (see shared/reference/acrn-dm.md, sections 1-2).

`parse_argv(argv, version)` parses an acrn-dm argv the way acrn-dm's getopt_long loop and
its per-emulation parsers would, and returns a structured `DmCommand`. Anything acrn-dm
would reject raises `GrammarError` with the offending argument named; things acrn-dm
accepts but ignores (obsolete options) are reported in `DmCommand.warnings`.

Used by the compiler's tests (rendered argv parse back to the same devices), by the
lifecycle tests' stand-in acrn-dm, and for importing existing ACRN launch scripts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from acrnmgr.plan import family_of

MAX_VM_NAME_LEN = 15
MIN_MEMORY = 128 << 20


class GrammarError(ValueError):
    """An argv acrn-dm would refuse (usage error or a device that fails to parse)."""


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


@dataclass(frozen=True)
class SlotDevice:
    bus: int
    slot: int
    func: int
    emul: str
    config: str  # everything after "emul," (including a leading "b," boot flag)
    boot: bool = False
    params: dict = field(default_factory=dict, compare=False)

    @property
    def bdf(self) -> str:
        return f"{self.bus}:{self.slot}:{self.func}"


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

    def all(self, name: str) -> list[str | None]:
        return [v for n, v in self.options if n == name]

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
        _check_option(name, value, family, lpc)
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

_MEM_RE = re.compile(r"^(\d+)([KkMmGg]?)$")
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_memsize(value: str) -> int:
    match = _MEM_RE.match(value)
    if not match:
        raise GrammarError(f"invalid memsize '{value}': use <n>K, <n>M or <n>G")
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size < MIN_MEMORY:
        raise GrammarError(f"invalid memsize '{value}': at least 128M is needed")
    return size


def _int(text: str, what: str, lo: int | None = None, hi: int | None = None, base: int = 10) -> int:
    try:
        value = int(text, base)
    except (TypeError, ValueError):
        raise GrammarError(f"{what}: {text!r} is not a number") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise GrammarError(f"{what}: {value} out of range {lo}..{hi}")
    return value


def parse_cpu_affinity(value: str, family: str = "3") -> list[int]:
    cpus: list[int] = []
    for part in value.split(","):
        if family == "2" and "-" in part:
            lo, _, hi = part.partition("-")
            a, b = _int(lo, "--cpu_affinity", 0), _int(hi, "--cpu_affinity", 0)
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
        return lname, {"backend": "s5", "path": parts[0], "port": _int(parts[1], "com5 port", 0, 65535),
                       "irq": _int(parts[2], "com5 irq", 0, 255)}
    if lname not in ("com1", "com2", "com3", "com4"):
        raise GrammarError(f"invalid lpc device configuration '{value}': unknown device {name!r}")
    if not rest:
        raise GrammarError(f"invalid lpc device configuration '{value}': missing backend")
    if rest == "stdio":
        return lname, {"backend": "stdio"}
    if rest.startswith("tcp:"):
        return lname, {"backend": "tcp", "port": _int(rest[4:], f"{lname} tcp port", 1, 65535)}
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


def _check_option(name: str, value: str | None, family: str, lpc: dict) -> None:
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
        _int(value, "invalid virtio poll interval", 1, 10_000_000)
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


_SECTOR_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768)


def _parse_virtio_blk(emul: str, body: str, family: str) -> dict:
    tokens = body.split(",") if body else []
    params: dict = {"cache": "writethru", "readOnly": False}
    if tokens and (tokens[0] == "iothread" or tokens[0].startswith("iothread=")):
        tok = tokens.pop(0)
        count, cpus = 1, []
        if "=" in tok:
            spec = tok.split("=", 1)[1]
            num, _, affinity = spec.partition("@")
            count = _int(num, "virtio-blk iothread count", 1, 64)
            if affinity:
                cpus = [[_int(c, "virtio-blk iothread cpu", 0) for c in group.split(":")]
                        for group in affinity.split("/")]
        params["iothread"] = {"count": count, "cpus": cpus}
    if tokens and tokens[0].startswith("mq="):
        params["mq"] = _int(tokens.pop(0)[3:], "virtio-blk mq", 1, 64)
    if not tokens or not tokens[0]:
        raise GrammarError(f"virtio-blk: missing image path in {body!r}")
    path = tokens.pop(0)
    if path.startswith(("iothread", "mq=")):
        raise GrammarError(f"virtio-blk: {path!r} must come before mq= and the path (order: iothread, mq, path)")
    params["path"] = None if path == "nodisk" else path
    for tok in tokens:
        key, eq, val = tok.partition("=")
        if tok in ("writeback", "writethru", "nocache"):
            params["cache"] = tok
        elif tok == "ro":
            params["readOnly"] = True
        elif tok == "no_bst_block":
            params["noBstBlock"] = True
        elif key == "discard":
            if eq:
                parts = val.split(":")
                if len(parts) != 3:
                    raise GrammarError(f"virtio-blk: discard={val}: use discard=max_sect:max_seg:align")
                params["discard"] = {"maxSectors": _int(parts[0], "discard max_sect", 1),
                                     "maxSegments": _int(parts[1], "discard max_seg", 1),
                                     "alignment": _int(parts[2], "discard align", 1)}
            else:
                params["discard"] = True
        elif key == "sectorsize" and eq:
            logical, _, physical = val.partition("/")
            lsz = _int(logical, "sectorsize", 512)
            psz = _int(physical, "sectorsize", 512) if physical else lsz
            if lsz not in _SECTOR_SIZES or psz not in _SECTOR_SIZES or psz < lsz:
                raise GrammarError(f"virtio-blk: invalid sectorsize {val}")
            params["sectorSize"] = {"logical": lsz, "physical": psz}
        elif key == "range" and eq:
            start, sep, size = val.partition("/")
            if not sep:
                raise GrammarError(f"virtio-blk: range={val}: use range=<startlba>/<size>")
            params["range"] = {"startLba": _int(start, "range start", 0), "size": _int(size, "range size", 1)}
        elif key == "aio" and eq:
            if val not in ("threads", "io_uring"):
                raise GrammarError(f"virtio-blk: aio={val}: use threads or io_uring")
            params["aio"] = val
        elif tok.startswith(("iothread", "mq=")):
            raise GrammarError(f"virtio-blk: {tok!r} must come before the path")
        else:
            raise GrammarError(f"virtio-blk: invalid device option {tok!r}")
    return params


_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def check_mac(mac: str) -> str:
    if not _MAC_RE.match(mac):
        raise GrammarError(f"virtio-net: invalid mac {mac!r}")
    first = int(mac[:2], 16)
    if first & 1 or mac.replace(":", "") == "000000000000":
        raise GrammarError(f"virtio-net: mac {mac!r} is multicast or zero")
    return mac.lower()


def _parse_virtio_net(emul: str, body: str, family: str) -> dict:
    if family == "3":
        if not body.startswith("tap="):
            raise GrammarError(f"virtio-net: v3.x needs tap=<name> first, got {body!r}")
        name, _, rest = body[4:].partition(",")
        params: dict = {"tap": name, "vhost": False}
        if rest.startswith("mac_seed="):
            params["macSeed"] = rest[len("mac_seed="):]  # takes the rest of the string
            rest = ""
    else:
        name, _, rest = body.partition(",")
        if not ("tap" in name or name.startswith("vmnet")):
            raise GrammarError(f"virtio-net: v2.x tap name {name!r} must contain 'tap' or start with 'vmnet'")
        params = {"tap": name, "vhost": False}
    if not name or len(name) > 15:
        raise GrammarError(f"virtio-net: invalid tap name {name!r} (1-15 characters)")
    for tok in rest.split(",") if rest else []:
        if tok == "vhost":
            params["vhost"] = True
        elif tok.startswith("mac="):
            params["mac"] = check_mac(tok[4:])
        elif tok.startswith("mac_seed="):
            raise GrammarError("virtio-net: mac_seed= is only recognised right after the tap name")
        else:
            raise GrammarError(f"virtio-net: unknown option {tok!r}")
    return params


_CONSOLE_RE = re.compile(r"^(@?)(stdio|tty|pty|file|socket):([^=:]+)(?:=([^:]*))?(?::(server|client))?$")


def _parse_virtio_console(emul: str, body: str, family: str) -> dict:
    if not body:
        raise GrammarError("virtio-console: at least one port is needed")
    ports, names = [], set()
    for item in body.split(","):
        match = _CONSOLE_RE.match(item)
        if not match:
            raise GrammarError(f"virtio-console: invalid port {item!r}: [@]kind:name[=path][:server|client]")
        at, kind, name, path, mode = match.groups()
        if kind in ("tty", "file", "socket") and not path:
            raise GrammarError(f"virtio-console: {kind} port {name!r} needs =<path>")
        if mode and kind != "socket":
            raise GrammarError(f"virtio-console: :{mode} only applies to socket ports")
        if name in names:
            raise GrammarError(f"virtio-console: port name {name!r} used twice")
        names.add(name)
        port = {"kind": kind, "name": name, "console": bool(at)}
        if path:
            port["path"] = path
        if kind == "socket":
            port["socketMode"] = mode or "server"
        ports.append(port)
    if sum(p["console"] for p in ports) > 1:
        raise GrammarError("virtio-console: only one port can be the console (@)")
    return {"ports": ports}


_BDF_RE = re.compile(r"^([0-9a-fA-F]{1,2})[/:]([0-9a-fA-F]{1,2})[/.]([0-7])$")


def _parse_passthru(emul: str, body: str, family: str) -> dict:
    tokens = body.split(",")
    match = _BDF_RE.match(tokens.pop(0))
    if not match:
        raise GrammarError(f"passthru: invalid BDF in {body!r}: use <bus>/<dev>/<func> in hex")
    bus, dev, func = (int(g, 16) for g in match.groups())
    if dev > 31:
        raise GrammarError(f"passthru: device {dev:#x} > 0x1f")
    params: dict = {"bdf": f"{bus:02x}:{dev:02x}.{func}", "options": {}}
    opts = params["options"]
    while tokens:
        tok = tokens.pop(0)
        key, eq, val = tok.partition("=")
        if tok in ("keep_gsi", "no_reset", "d3hot_reset", "enable_ptm"):
            opts[{"keep_gsi": "keepGsi", "no_reset": "noReset", "d3hot_reset": "d3hotReset",
                  "enable_ptm": "enablePtm"}[tok]] = True
        elif tok == "vmsix_on_msi":
            if not tokens:
                raise GrammarError("passthru: vmsix_on_msi needs a BAR index: vmsix_on_msi,<bar>")
            opts["vmsixOnMsi"] = _int(tokens.pop(0), "passthru vmsix_on_msi bar", 0, 5)
        elif key == "romfile" and val:
            opts["romfile"] = val
        elif key == "irq" and val:
            opts["irq"] = _int(val, "passthru irq", 0, 255)
        elif key == "dsdt" and val:
            opts["dsdt"] = val
        else:
            raise GrammarError(f"passthru: unknown option {tok!r}")
    return params


def _parse_ivshmem(emul: str, body: str, family: str) -> dict:
    parts = body.split(",")
    if len(parts) not in (2, 3) or not re.match(r"^(dm|hv):/[^/]+", parts[0]):
        raise GrammarError(f"ivshmem: {body!r}: use {{dm:/<name>|hv:/<name>}},<size_MB>[,<region_id>]")
    size = _int(parts[1], "ivshmem size (MB)", 2, 1023)
    if size & (size - 1):
        raise GrammarError(f"ivshmem: size {size} MB is not a power of two")
    params = {"region": parts[0], "sizeMb": size}
    if len(parts) == 3:
        params["regionId"] = _int(parts[2], "ivshmem region id", 0)
    return params


def _parse_vsock(emul: str, body: str, family: str) -> dict:
    if not body.startswith("cid="):
        raise GrammarError(f"vhost-vsock: {body!r}: use cid=<N>")
    cid = _int(body[4:], "vhost-vsock cid")
    if not 2 < cid < 0xFFFFFFFF:
        raise GrammarError(f"vhost-vsock: cid {cid} must be > 2 and < 4294967295")
    return {"cid": cid}


def _parse_virtio_gpu(emul: str, body: str, family: str) -> dict:
    displays = []
    for tok in body.split(",") if body else []:
        match = re.fullmatch(r"geometry=(?:(\d+)x(\d+)\+(\d+)\+(\d+)|fullscreen(?::(\d+))?)", tok)
        if not match:
            raise GrammarError(f"virtio-gpu: invalid display {tok!r}: geometry=WxH+X+Y or geometry=fullscreen[:monitor]")
        if match.group(1):
            displays.append({"geometry": f"{match.group(1)}x{match.group(2)}+{match.group(3)}+{match.group(4)}"})
        else:
            display: dict = {"fullscreen": True}
            if match.group(5):
                display["monitor"] = int(match.group(5))
            displays.append(display)
    return {"displays": displays}


def _parse_virtio_input(emul: str, body: str, family: str) -> dict:
    device, _, serial = body.partition(",")
    if not device.startswith("/"):
        raise GrammarError(f"virtio-input: {body!r}: use /dev/input/eventX[,serial]")
    return {"device": device, **({"serial": serial} if serial else {})}


def _parse_virtio_rnd(emul: str, body: str, family: str) -> dict:
    if body not in ("", "kernel=on"):
        raise GrammarError(f"virtio-rnd: unknown config {body!r}")
    return {"kernel": body == "kernel=on"}


def _parse_xhci(emul: str, body: str, family: str) -> dict:
    params: dict = {"ports": []}
    for tok in body.split(",") if body else []:
        if tok == "tablet":
            params["tablet"] = True
        elif tok.startswith("log="):
            params["log"] = tok[4:]
        elif tok.startswith("cap="):
            if tok != "cap=apl":
                raise GrammarError(f"xhci: unknown capability {tok!r} (only cap=apl)")
            params["cap"] = "apl"
        elif re.fullmatch(r"\d+-\d+(\.\d+)*(:\d+-\d+(\.\d+)*)*", tok):
            params["ports"].extend(tok.split(":"))
        else:
            raise GrammarError(f"xhci: unknown option {tok!r}")
    return params


def _parse_uart(emul: str, body: str, family: str) -> dict:
    if not body.startswith("vuart_idx:"):
        raise GrammarError(f"uart: {body!r}: use vuart_idx:<n>")
    return {"vuartIdx": _int(body[len("vuart_idx:"):], "uart vuart_idx", 0)}


def _parse_ahci(emul: str, body: str, family: str) -> dict:
    if emul in ("ahci-hd", "ahci-cd"):
        if not body:
            raise GrammarError(f"{emul}: needs an image path")
        return {"hd" if emul == "ahci-hd" else "cd": [body]}
    params: dict = {"hd": [], "cd": []}
    for tok in body.split(",") if body else []:
        kind, sep, path = tok.partition(":")
        if kind not in ("hd", "cd") or not sep or not path:
            raise GrammarError(f"ahci: {tok!r}: use hd:<path> or cd:<path>")
        params[kind].append(path)
    if not params["hd"] and not params["cd"]:
        raise GrammarError("ahci: needs at least one hd:<path> or cd:<path>")
    return params


def _parse_heci(emul: str, body: str, family: str) -> dict:
    if not re.fullmatch(r"[0-9a-fA-F]+:[0-9a-fA-F]+:[0-7],d[0-8]", body):
        raise GrammarError(f"virtio-heci: {body!r}: use <b>:<d>:<f>,d<0-8>")
    return {"args": body}


def _parse_rpmb(emul: str, body: str, family: str) -> dict:
    if body not in ("", "physical_rpmb"):
        raise GrammarError(f"virtio-rpmb: unknown config {body!r}")
    return {"physical": body == "physical_rpmb"}


_EMUL_PARSERS = {
    "virtio-blk": _parse_virtio_blk,
    "virtio-net": _parse_virtio_net,
    "virtio-console": _parse_virtio_console,
    "passthru": _parse_passthru,
    "ivshmem": _parse_ivshmem,
    "vhost-vsock": _parse_vsock,
    "virtio-gpu": _parse_virtio_gpu,
    "virtio-input": _parse_virtio_input,
    "virtio-rnd": _parse_virtio_rnd,
    "xhci": _parse_xhci,
    "uart": _parse_uart,
    "ahci": _parse_ahci,
    "ahci-hd": _parse_ahci,
    "ahci-cd": _parse_ahci,
    "virtio-heci": _parse_heci,
    "virtio-rpmb": _parse_rpmb,
    "virtio-i2c": _raw,
    "virtio-gpio": _raw,
    "virtio-audio": _raw,
    "virtio-ipu": _raw,
    "virtio-hyper_dmabuf": _raw,
}
