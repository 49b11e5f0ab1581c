"""Compile a validated Spec into the acrn-dm argv and a per-device plan.

The argv is a list (never a command string) in a fixed option order, so renders are
byte-for-byte reproducible. `target_version="2.7"` emits the v2.x grammar where it differs:
--cpu_affinity takes pCPU IDs (ranges allowed) instead of LAPIC IDs, virtio-net takes the bare
tap name, and a MAC seed is the global --mac_seed instead of a virtio-net option."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from acrnmgr.compiler import backends, slots
from acrnmgr.compiler.grammar import version_family
from acrnmgr.host import HostProfile
from acrnmgr.spec.checks import VIRTIO_TYPES
from acrnmgr.spec.diagnostics import Diagnostic, format_path
from acrnmgr.spec.units import parse_size

DEFAULT_BRIDGE = "acrn-br0"
RTVM_VIRTIO_POLL = 1_000_000
PASSTHRU_INTR_MONITOR = "10000,10,1,100"

EMULATION = {"wdt": "wdt-i6300esb"}  # spec type -> acrn-dm emulation name where they differ


@dataclass(frozen=True)
class DevicePlan:
    index: int  # position in spec.devices
    name: str
    type: str
    slot: int | None
    backend: str | None
    reason: str
    emulation: str
    args: str  # the config after "emulation," ('' when none)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Compiled:
    name: str
    engine: str
    target_version: str
    argv: list[str]
    devices: list[DevicePlan]
    taps: list[str]  # tap interfaces to create and attach to `bridge`
    bridge: str
    cpus: list[int]  # LAPIC IDs (v3.x) the VM runs on; the launch script offlines them
    passthru: list[str]  # host BDFs ("00:1f.3") to unbind from their drivers
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    spec_hash: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "name": self.name, "engine": self.engine, "targetVersion": self.target_version,
            "argv": list(self.argv), "devices": [d.to_dict() for d in self.devices], "taps": list(self.taps),
            "bridge": self.bridge, "cpus": list(self.cpus), "passthru": list(self.passthru),
            "errors": [d.to_dict() for d in self.errors], "warnings": [d.to_dict() for d in self.warnings],
            "specHash": self.spec_hash,
        }


class _Ctx:
    """Collects diagnostics pinned to the spec's file:line:col."""

    def __init__(self, spec, host: HostProfile, family: str):
        self.spec, self.host, self.family = spec, host, family
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def _diag(self, path: tuple, message: str, suggestion: str | None, severity: str) -> Diagnostic:
        file, line, col = self.spec.locate(path)
        return Diagnostic(file, line, col, format_path(path), message, suggestion, severity)

    def error(self, path: tuple, message: str, suggestion: str | None = None) -> None:
        self.errors.append(self._diag(path, message, suggestion, "error"))

    def warn(self, path: tuple, message: str, suggestion: str | None = None) -> None:
        self.warnings.append(self._diag(path, message, suggestion, "warning"))

    def path(self, value: str, where: tuple, separators: str = ",") -> str:
        """An absolute path for acrn-dm; acrn-dm splits its option strings on `separators`,
        so a path containing one cannot be expressed."""
        resolved = os.path.normpath(str(self.spec.resolve_path(value)))
        bad = [c for c in separators if c in resolved]
        if bad:
            self.error(where, f"path {resolved!r} contains {bad[0]!r}, which acrn-dm uses to split this option",
                       "rename or symlink the file to a path without it")
        return resolved


def compile_spec(spec, host: HostProfile | None = None, target_version: str = "3.x",
                 engine: str = "acrn") -> Compiled:
    """Plan every device (slot, backend, reason) and, for the acrn engine, build the argv.

    Plan errors go to `.errors` (the argv is still built as far as possible, for display)."""
    host = host if host is not None else HostProfile.detect()
    family = version_family(target_version)
    ctx = _Ctx(spec, host, family)
    s = spec.spec
    devices = spec.devices
    rtvm = s.get("vmType", "standard") == "rtvm"

    assigned, problems = slots.assign_slots(devices)
    for p in problems:
        ctx.error(("spec", "devices", p.index, p.field), p.message, p.suggestion)

    plans: list[DevicePlan] = []
    for i, device in enumerate(devices):
        choice = backends.choose(device, host, engine, family)
        if choice.error:
            ctx.error(("spec", "devices", i), choice.error, choice.suggestion)
        emulation = EMULATION.get(device["type"], device["type"])
        args = _device_args(ctx, i, device, choice.backend)
        plans.append(DevicePlan(i, device.get("name") or f"{device['type']}{i}", device["type"], assigned[i],
                                choice.backend, choice.reason or choice.error or "", emulation, args))

    bridge = s.get("network", {}).get("bridge", DEFAULT_BRIDGE)
    taps = sorted({d["tap"] for d in devices if d["type"] == "virtio-net" and d.get("tap")})
    cpus = list(s["cpu"]["affinity"])
    passthru = [_bdf(d["bdf"]) for d in devices if d["type"] == "passthru"]

    argv: list[str] = []
    if engine == "acrn":
        argv = _argv(ctx, spec, plans, rtvm)
    compiled = Compiled(spec.name, engine, f"{family}.x" if family == "3" else "2.7", argv, plans, taps, bridge,
                        cpus, passthru, ctx.errors, ctx.warnings, spec.hash)
    return compiled


# ---------------------------------------------------------------------------------------------
# global options


def _argv(ctx: _Ctx, spec, plans: list[DevicePlan], rtvm: bool) -> list[str]:
    s = spec.spec
    settings = s.get("settings", {})
    devices = spec.devices
    argv = ["acrn-dm"]
    if rtvm:
        argv.append("--rtvm")  # implies --lapic_pt
    argv += ["-m", _memory(s["memory"])]
    argv += ["--cpu_affinity", _cpu_affinity(ctx, s["cpu"]["affinity"])]

    poll = settings.get("virtioPoll")
    if poll is None and rtvm and any(p.type in VIRTIO_TYPES for p in plans):
        poll = RTVM_VIRTIO_POLL  # as ACRN's generator does for an RTVM with virtio devices
    if poll is not None:
        argv += ["--virtio_poll", str(poll)]

    argv += _boot(ctx, s["boot"])
    if settings.get("iasl"):
        _needs_v3(ctx, ("spec", "settings", "iasl"), "--iasl", "3.2")
        argv += ["--iasl", ctx.path(settings["iasl"], ("spec", "settings", "iasl"), "")]
    # A Windows guest's virtio drivers want the subsystem vendor --windows sets (ACRN's generator
    # adds it for Windows VMs); `windows: false` turns that off.
    windows = settings.get("windows", s.get("osType") == "windows")
    for key, flag in (("enableTrusty", "--enable_trusty"), ("windows", "--windows"),
                      ("debugexit", "--debugexit"), ("virtioMsi", "--virtio_msi")):
        if windows if key == "windows" else settings.get(key):
            if key == "virtioMsi":
                _needs_v3(ctx, ("spec", "settings", key), flag, "3.0")
            argv.append(flag)
    if settings.get("ssram"):
        _needs_v3(ctx, ("spec", "settings", "ssram"), "--ssram", "3.0")
        argv += ["--ssram", settings["ssram"]]
    for item in settings.get("acpiDevPt", []):
        argv += ["--acpidev_pt", item["hid"] + (f",{item['uid']}" if item.get("uid") else "")]
    for item in settings.get("mmioDevPt", []):
        argv += ["--mmiodev_pt", f"{item['base']},{item['length']}"]
    if settings.get("vtpm2"):
        argv += ["--vtpm2", "sock_path=" + ctx.path(settings["vtpm2"]["sockPath"], ("spec", "settings", "vtpm2"))]

    monitor = settings.get("intrMonitor")
    if monitor:
        argv += ["--intr_monitor", f"{monitor['threshold']},{monitor['period']},{monitor['delayMs']},{monitor['durationMs']}"]
    elif any(d["type"] == "passthru" and not d.get("gpu") for d in devices):
        argv += ["--intr_monitor", PASSTHRU_INTR_MONITOR]  # ACRN's default with non-GPU passthrough

    logger = settings.get("logger")
    if logger:
        argv += ["--logger_setting", ";".join(f"{k},level={logger[k]}" for k in ("console", "kmsg", "disk") if k in logger)]
    if settings.get("pmNotifyChannel"):
        value = settings["pmNotifyChannel"]
        if settings.get("allowTriggerS5"):
            if value != "uart":
                ctx.error(("spec", "settings", "allowTriggerS5"), "allowTriggerS5 only works with pmNotifyChannel: uart")
            value += ",allow_trigger_s5"
        argv += ["--pm_notify_channel", value]
    if settings.get("cmdMonitor"):
        _needs_v3(ctx, ("spec", "settings", "cmdMonitor"), "--cmd_monitor", "3.0")
        argv += ["--cmd_monitor", ctx.path(settings["cmdMonitor"], ("spec", "settings", "cmdMonitor"), "")]

    seeds = sorted({d["macSeed"] for d in devices if d["type"] == "virtio-net" and d.get("macSeed")})
    if ctx.family == "2" and seeds:
        if len(seeds) > 1:
            ctx.error(("spec", "devices"), "acrn-dm v2.x has one global --mac_seed; the devices give "
                      f"{len(seeds)} different seeds", "use one macSeed, or `mac:` on the others")
        argv += ["--mac_seed", seeds[0]]

    lpc = s.get("console", {}).get("lpc", [])
    if rtvm and lpc:
        ctx.warn(("spec", "console", "lpc"), "an RTVM gets no LPC bridge (slot 1), so its COM ports are not emulated",
                 "use the hypervisor vUART or a virtio-console")
    for n, port in enumerate(lpc):
        argv += ["-l", _lpc(ctx, n, port)]

    for slot, emulation in slots.fixed_slots(rtvm):
        argv += ["-s", f"{slot}:0,{emulation}"]
    for plan in sorted((p for p in plans if p.slot is not None), key=lambda p: p.slot):
        argv += ["-s", f"{plan.slot}:0,{plan.emulation}" + (f",{plan.args}" if plan.args else "")]

    argv += list(s.get("extraArgs", []))
    argv.append(spec.name)
    return argv


def _needs_v3(ctx: _Ctx, where: tuple, option: str, since: str) -> None:
    if ctx.family == "2":
        ctx.error(where, f"{option} needs acrn-dm v{since} or later; the target is v2.7",
                  "remove the setting or target 3.x")


def _memory(value) -> str:
    size = parse_size(value)
    return f"{size >> 20}M" if size % (1 << 20) == 0 else f"{size >> 10}K"


def _cpu_affinity(ctx: _Ctx, lapic_ids: list[int]) -> str:
    if ctx.family == "3":
        return ",".join(str(c) for c in lapic_ids)
    # v2.x takes pCPU IDs: the index of each LAPIC ID in the host's CPU list.
    known = ctx.host.lapic_ids
    pcpus = []
    for n, lapic in enumerate(lapic_ids):
        if known and lapic not in known:
            ctx.error(("spec", "cpu", "affinity", n), f"LAPIC ID {lapic} is not a CPU of the host profile "
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


def _boot(ctx: _Ctx, boot: dict) -> list[str]:
    where = ("spec", "boot")
    if "ovmf" in boot:
        ovmf = boot["ovmf"]
        prefix = "w," if ovmf.get("writeback") else ""
        if "image" in ovmf:
            return ["--ovmf", prefix + ctx.path(ovmf["image"], (*where, "ovmf", "image"))]
        code = ctx.path(ovmf["code"], (*where, "ovmf", "code"), ",=")
        var = ctx.path(ovmf["vars"], (*where, "ovmf", "vars"), ",=")
        return ["--ovmf", f"{prefix}code={code},vars={var}"]
    if "kernel" in boot:
        kernel = boot["kernel"]
        argv = ["-k", ctx.path(kernel["path"], (*where, "kernel", "path"), "")]
        if kernel.get("initrd"):
            argv += ["-r", ctx.path(kernel["initrd"], (*where, "kernel", "initrd"), "")]
        if kernel.get("cmdline"):
            argv += ["-B", kernel["cmdline"]]
        return argv
    return ["-E", ctx.path(boot["elf"]["path"], (*where, "elf", "path"), "")]


def _lpc(ctx: _Ctx, n: int, port: dict) -> str:
    where = ("spec", "console", "lpc", n)
    name = port["port"]
    if name == "com5":
        path = ctx.path(port["path"], (*where, "path")) if port.get("path") else ""
        if not path or "tcpPort" not in port or "irq" not in port:
            ctx.error(where, "com5 (the S5 UART) needs path, tcpPort and irq", "com5: {path, tcpPort, irq}")
        return f"com5,{path},{port.get('tcpPort', '')},{port.get('irq', '')}"
    backend = port.get("backend", "stdio")
    if backend == "stdio":
        return f"{name},stdio"
    if backend == "tcp":
        if "tcpPort" not in port:
            ctx.error(where, f"{name} with backend tcp needs tcpPort")
        return f"{name},tcp:{port.get('tcpPort', '')}"
    if not port.get("path"):
        ctx.error(where, f"{name} with backend tty needs path", "path: /dev/pts/N")
        return f"{name},"
    return f"{name},{ctx.path(port['path'], (*where, 'path'))}"


def _bdf(text: str) -> str:
    """'00:1f.3' or '00/1f/3' -> '00:1f.3' (lowercase, zero-padded)."""
    norm = text.replace("/", ":", 1).replace("/", ".", 1)
    bus, rest = norm.split(":", 1)
    dev, func = rest.split(".", 1)
    return f"{int(bus, 16):02x}:{int(dev, 16):02x}.{int(func)}"


# ---------------------------------------------------------------------------------------------
# per-device configs


def _device_args(ctx: _Ctx, i: int, d: dict, backend: str | None) -> str:
    kind = d["type"]
    where = ("spec", "devices", i)
    if kind == "virtio-blk":
        return _blk(ctx, where, d)
    if kind == "virtio-net":
        return _net(ctx, where, d, backend)
    if kind == "virtio-console":
        ports = []
        for n, port in enumerate(d["ports"]):
            item = ("@" if port.get("console") else "") + f"{port['kind']}:{port['name']}"
            if port.get("path"):
                item += "=" + ctx.path(port["path"], (*where, "ports", n, "path"), ",:")
            elif port["kind"] in ("tty", "file", "socket"):
                ctx.error((*where, "ports", n), f"a {port['kind']} console port needs `path`")
            if port["kind"] == "socket":
                item += ":" + port.get("socketMode", "server")
            ports.append(item)
        return ",".join(ports)
    if kind == "virtio-rnd":
        return ""
    if kind == "virtio-input":
        return ctx.path(d["device"], (*where, "device")) + (f",{d['serial']}" if d.get("serial") else "")
    if kind == "virtio-gpu":
        out = []
        for display in d.get("displays", []):
            if display.get("fullscreen"):
                out.append("geometry=fullscreen" + (f":{display['monitor']}" if "monitor" in display else ""))
            elif display.get("geometry"):
                out.append(f"geometry={display['geometry']}")
        return ",".join(out)
    if kind in ("virtio-i2c", "virtio-gpio"):
        return d.get("args", "")
    if kind == "vhost-vsock":
        return f"cid={d['cid']}"
    if kind == "passthru":
        return _passthru(ctx, where, d)
    if kind == "ivshmem":
        return _ivshmem(ctx, where, d)
    if kind == "xhci":
        out = [":".join(d["ports"])] if d.get("ports") else []
        if d.get("tablet"):
            out.append("tablet")
        if d.get("log"):
            out.append("log=" + d["log"])
        if d.get("cap"):
            out.append("cap=" + d["cap"])
        return ",".join(out)
    if kind == "ahci":
        out = [f"{k}:{ctx.path(d[k], (*where, k))}" for k in ("hd", "cd") if d.get(k)]
        if not out:
            ctx.error(where, "ahci needs `hd` or `cd`")
        return ",".join(out)
    if kind == "uart":
        return f"vuart_idx:{d.get('vuartIdx', 0)}"
    return ""  # wdt


def _blk(ctx: _Ctx, where: tuple, d: dict) -> str:
    out = ["b"] if d.get("boot") else []
    iothread = d.get("iothread")
    if iothread is True:
        out.append("iothread")
    elif isinstance(iothread, dict):
        text = f"iothread={iothread['count']}"
        if iothread.get("cpus"):
            text += "@" + "/".join(":".join(str(c) for c in group) for group in iothread["cpus"])
        out.append(text)
    if d.get("mq"):
        out.append(f"mq={d['mq']}")
    out.append(ctx.path(d["path"], (*where, "path")))
    cache = d.get("cache", "writethru")
    if cache != "writethru":
        out.append(cache)
    if d.get("readOnly"):
        out.append("ro")
    discard = d.get("discard")
    if discard is True:
        out.append("discard")
    elif isinstance(discard, dict):
        out.append(f"discard={discard['maxSectors']}:{discard['maxSegments']}:{discard['alignment']}")
    if d.get("sectorSize"):
        ss = d["sectorSize"]
        out.append(f"sectorsize={ss['logical']}" + (f"/{ss['physical']}" if ss.get("physical") else ""))
    if d.get("range"):
        out.append(f"range={d['range']['startLba']}/{d['range']['size']}")
    if d.get("aio"):
        out.append(f"aio={d['aio']}")
    return ",".join(out)


def _net(ctx: _Ctx, where: tuple, d: dict, backend: str | None) -> str:
    name = d.get("tap") or d.get("macvtap")
    if not name:
        ctx.error(where, "virtio-net needs `tap` or `macvtap`")
        name = ""
    vhost = backend == "vhost"
    if ctx.family == "3":
        out = [f"tap={name}"]
        if d.get("macSeed"):
            return f"tap={name},mac_seed={d['macSeed']}"  # mac_seed must come last: it takes the rest
    else:
        if not ("tap" in name or name.startswith("vmnet")):
            ctx.error((*where, "tap" if d.get("tap") else "macvtap"),
                      f"acrn-dm v2.x only accepts interface names containing 'tap' or starting with 'vmnet', "
                      f"not {name!r}", f"rename it, e.g. tap_{name}"[:60])
        out = [name]
    if vhost:
        out.append("vhost")
    if d.get("mac"):
        out.append(f"mac={d['mac'].lower()}")
    return ",".join(out)


_PT_FLAGS = (("keepGsi", "keep_gsi"), ("noReset", "no_reset"), ("d3hotReset", "d3hot_reset"))


def _passthru(ctx: _Ctx, where: tuple, d: dict) -> str:
    bdf = _bdf(d["bdf"])
    bus, rest = bdf.split(":")
    dev, func = rest.split(".")
    out = [f"{bus}/{dev}/{func}"]
    opts = d.get("options", {})
    out += [flag for key, flag in _PT_FLAGS if opts.get(key)]
    if "vmsixOnMsi" in opts:
        out += ["vmsix_on_msi", str(opts["vmsixOnMsi"])]
    if opts.get("enablePtm"):
        out.append("enable_ptm")
    if opts.get("romfile"):
        if not d.get("gpu"):
            ctx.warn((*where, "options", "romfile"), "romfile is meant for GPU passthrough")
        out.append("romfile=" + ctx.path(opts["romfile"], (*where, "options", "romfile")))
    if "irq" in opts:
        out.append(f"irq={opts['irq']}")
    if opts.get("dsdt"):
        out.append("dsdt=" + ctx.path(opts["dsdt"], (*where, "options", "dsdt")))
    return ",".join(out)


def _ivshmem(ctx: _Ctx, where: tuple, d: dict) -> str:
    size = parse_size(d["size"])
    mb = size >> 20
    if size % (1 << 20) or mb < 2 or mb >= 1024 or mb & (mb - 1):
        ctx.error((*where, "size"), f"ivshmem size {d['size']} must be a power of two from 2M to 512M")
    out = [d["region"], str(mb)]
    if "regionId" in d:
        out.append(str(d["regionId"]))
    return ",".join(out)
