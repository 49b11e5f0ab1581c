"""Semantic checks: the rules the schema cannot express (slots, stdio, unique IDs, host limits,
acrn-dm's device modes and backends, missing images, obsolete acrn-dm options).

Each check reports at the most specific node. Checks assume schema-valid data; when the schema
already failed they are still run so the user sees everything at once, but a check that trips
over malformed data is skipped instead of guessing."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from acrnmgr.devices import KINDS
from acrnmgr.spec.diagnostics import Diagnostic, format_path
from acrnmgr.spec.loader import Document
from acrnmgr.spec.units import format_size, parse_size

MIN_MEMORY = 128 << 20
MAX_MEMORY = 16 << 40  # the schema's maximum for an integer size (MiB), for sizes with a unit too

# acrn-dm v3.x: options that are gone or ignored, with what to do instead.
OBSOLETE_OPTIONS: dict[str, tuple[str, str]] = {
    "--mac_seed": ("is obsolete in acrn-dm v3.x (ignored; the seed moved into the virtio-net options)",
                   "set `macSeed` on the virtio-net device instead"),
    "-U": ("was removed in acrn-dm v2.7 (acrn-dm exits with a usage error)",
           "drop it: the VM name (metadata.name) identifies the VM"),
    "--uuid": ("was removed in acrn-dm v2.7 (acrn-dm exits with a usage error)",
               "drop it: the VM name (metadata.name) identifies the VM"),
    "-W": ("was removed in acrn-dm v3.0", "drop it; use `settings.virtioMsi: true` to force MSI for virtio devices"),
    "--virtio_msix": ("was removed in acrn-dm v3.0",
                      "drop it; use `settings.virtioMsi: true` to force MSI for virtio devices"),
    "-p": ("was removed by acrn-dm v2.0", "drop it; pin vCPUs with `spec.cpu.affinity`"),
    "-A": ("is obsolete in acrn-dm v3.x (ignored; ACPI tables are always built)", "drop it"),
    "-Y": ("is obsolete in acrn-dm v3.x (ignored; the MP table is no longer built)", "drop it"),
    "-i": ("is obsolete in acrn-dm v3.x (ignored; the IOC mediator is gone)",
           "drop it; for power-button notification use `settings.pmNotifyChannel`"),
    "-G": ("is obsolete in acrn-dm v3.x (ignored; GVT-g is gone)",
           "drop it; use a `passthru` device with `gpu: true` or a `virtio-gpu` device"),
    "--vsbl": ("is obsolete in acrn-dm v3.x (ignored; vSBL boot is gone)",
               "drop it; boot with `boot.ovmf` or `boot.kernel`"),
    "--part_info": ("is obsolete in acrn-dm v3.x (ignored; it belonged to vSBL boot)", "drop it"),
    "--pm_by_vuart": ("is obsolete in acrn-dm v3.x (ignored)",
                      "drop it: in v3 the guest's Lifecycle Manager talks over the hypervisor's S5 vUART, which "
                      "`acrnmgr down` uses (settings.pmNotifyChannel: uart is for acrn-dm 2.7)"),
    "--lapic_pt": ("is ignored by acrn-dm on its own (only --rtvm enables LAPIC passthrough)",
                   "set `spec.vmType: rtvm`"),
}
# Options the spec models: passing them raw duplicates (or contradicts) what we generate.
MODELLED_OPTIONS: dict[str, str] = {
    "-m": "spec.memory", "--memsize": "spec.memory", "-s": "spec.devices", "--pci_slot": "spec.devices",
    "-l": "spec.console.lpc", "--lpc": "spec.console.lpc", "-k": "spec.boot.kernel.path",
    "-r": "spec.boot.kernel.initrd", "-B": "spec.boot.kernel.cmdline", "-E": "spec.boot.elf.path",
    "--elf_file": "spec.boot.elf.path", "--ovmf": "spec.boot.ovmf", "--cpu_affinity": "spec.cpu.affinity",
    "--rtvm": "spec.vmType: rtvm", "--virtio_poll": "spec.settings.virtioPoll", "--ssram": "spec.settings.ssram",
    "--acpidev_pt": "spec.settings.acpiDevPt", "--mmiodev_pt": "spec.settings.mmioDevPt",
    "--vtpm2": "spec.settings.vtpm2", "--intr_monitor": "spec.settings.intrMonitor",
    "--cmd_monitor": "spec.settings.cmdMonitor", "--logger_setting": "spec.settings.logger",
    "--windows": "spec.settings.windows", "--virtio_msi": "spec.settings.virtioMsi",
    "--pm_notify_channel": "spec.settings.pmNotifyChannel", "--enable_trusty": "spec.settings.enableTrusty",
    "--debugexit": "spec.settings.debugexit", "--iasl": "spec.settings.iasl",
}
# Short options whose argument may be glued on (-Uxxxx, -i5).
_SHORT_WITH_ARG = ("-U", "-G", "-i", "-p", "-m", "-s", "-l", "-k", "-r", "-B", "-E")


class _Ctx:
    def __init__(self, doc: Document):
        self.doc = doc
        self.out: list[Diagnostic] = []

    def error(self, path, message: str, hint: str | None = None, *, key: bool = False) -> None:
        self.out.append(self.doc.diag(path, message, hint, key=key))

    def warn(self, path, message: str, hint: str | None = None) -> None:
        self.out.append(self.doc.diag(path, message, hint, severity="warning"))

    def where(self, path) -> str:
        """'line N' of a path, for messages that point back at an earlier node."""
        line, _ = self.doc.positions.locate(tuple(path))
        return f"line {line}"


def _devices(spec: dict) -> list[tuple[tuple, dict]]:
    devs = spec.get("devices")
    if not isinstance(devs, list):  # a schema error already; the cross-file checks still run
        return []
    return [(("spec", "devices", i), d) for i, d in enumerate(devs) if isinstance(d, dict)]


def run_checks(doc: Document, host=None, check_paths: bool = True, schema_ok: bool = True) -> list[Diagnostic]:
    data = doc.data
    spec = data.get("spec") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        return []
    checks: list[Callable[[_Ctx, dict], None]] = [
        _check_memory, _check_names, _check_slots, _check_stdio, _check_lpc, _check_extra_args,
    ]
    # Each device kind checks its own devices (acrnmgr/devices/<kind>.py).
    by_kind: dict[str, list[tuple[tuple, dict]]] = {}
    for path, dev in _devices(spec):
        if isinstance(dev.get("type"), str) and dev["type"] in KINDS:
            by_kind.setdefault(dev["type"], []).append((path, dev))
    for kind, items in by_kind.items():
        checks.append(functools.partial(_check_kind, KINDS[kind], items))
    if host is not None:
        checks.append(lambda ctx, spec: _check_host(ctx, spec, host))
    if check_paths:
        checks.append(_check_paths)
    out: list[Diagnostic] = []
    for check in checks:
        ctx = _Ctx(doc)
        try:
            check(ctx, spec)
        except (TypeError, KeyError, AttributeError, ValueError, IndexError):
            if schema_ok:
                raise
            continue  # malformed data already reported by the schema
        out.extend(ctx.out)
    return out


# ---------------------------------------------------------------------------------------------


def _check_kind(kind, items: list[tuple[tuple, dict]], ctx: _Ctx, spec: dict) -> None:
    kind.check_spec(ctx, spec, items)


def _check_memory(ctx: _Ctx, spec: dict) -> None:
    if "memory" not in spec:
        return
    try:
        size = parse_size(spec["memory"])
    except ValueError:
        return  # schema reports it
    if size < MIN_MEMORY:
        ctx.error(("spec", "memory"), f"memory {format_size(size) if size else 0} is below acrn-dm's minimum of 128M",
                  "give the VM at least 128M")
    elif size > MAX_MEMORY:
        ctx.error(("spec", "memory"), f"memory {format_size(size)} is above the maximum of 16T", "give the VM less")


def _check_names(ctx: _Ctx, spec: dict) -> None:
    seen: dict[str, tuple] = {}
    for path, dev in _devices(spec):
        name = dev.get("name")
        if not isinstance(name, str):
            continue
        if name in seen:
            ctx.error(path + ("name",), f"device name `{name}` is already used by {format_path(seen[name])} "
                                        f"({ctx.where(seen[name] + ('name',))})", "device names must be unique")
        else:
            seen[name] = path


def _check_slots(ctx: _Ctx, spec: dict) -> None:
    """The slot rules of acrnmgr.plan.slots (which the planner applies too), located in the spec file."""
    taken: dict[tuple[int, int], tuple] = {}  # (slot, function) -> device path
    gpu_paths = []
    auto = []
    for path, dev in _devices(spec):
        gpu = dev.get("type") == "passthru" and dev.get("gpu") is True
        if gpu:
            gpu_paths.append(path)
        slot = dev.get("slot")
        func = dev.get("function", 0)
        if not isinstance(func, int) or isinstance(func, bool) or not 0 <= func <= 7:  # schema reports those
            func = 0
        if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot <= 31:  # schema reports those
            if func and slot is None:
                ctx.error(path + ("function",), f"function {func} needs an explicit `slot`",
                          "add `slot` (3..29), or remove `function`")
            elif not gpu:
                auto.append(path)
            continue
        spath = path + ("slot",)
        if gpu and slot != 2:
            ctx.error(spath, f"GPU passthrough must be on slot 2, not {slot}", "remove `slot` (slot 2 is implied)")
        elif gpu and func:
            ctx.error(path + ("function",), "GPU passthrough sits on function 0 of slot 2", "remove `function`")
        elif not gpu and slot == 2:
            ctx.error(spath, "slot 2 is reserved for GPU passthrough", "use a slot from 3 to 29, or remove `slot`")
        elif slot == 0:
            ctx.error(spath, "slot 0 is reserved for the host bridge", "use a slot from 3 to 29, or remove `slot`")
        elif slot == 1:
            ctx.error(spath, "slot 1 is reserved for the LPC bridge", "use a slot from 3 to 29, or remove `slot`")
        elif slot == 31:
            ctx.error(spath, "slot 31 is reserved for igd-lpc (added with Intel GPU passthrough)",
                      "use a slot from 3 to 29, or remove `slot`")
        elif not 3 <= slot <= 29 and slot != 2:
            ctx.error(spath, f"slot {slot} is outside the slots acrn-dm's config tools hand out (3..29)",
                      "use a slot from 3 to 29, or remove `slot`")
        if (slot, func) in taken:
            other = taken[(slot, func)]
            where = f"{slot}:{func}" if func else str(slot)
            ctx.error(path + ("function",) if func else spath,
                      f"slot {where} is already used by {format_path(other)} ({ctx.where(other + ('slot',))})",
                      "each device needs its own slot (or function of a slot); remove `slot` to have one assigned")
        else:
            taken[(slot, func)] = path
    slots = {slot for slot, _func in taken}
    for slot in sorted(slots):
        if (slot, 0) not in taken:
            first = min((p for (s, _f), p in taken.items() if s == slot), key=lambda p: p[-1])
            ctx.warn(first + ("function",), f"slot {slot} has no device at function 0, so the guest does not find "
                     "its other functions (PCI enumeration starts at function 0)",
                     f"put one of the slot's devices at `function: 0` (slot {slot})")
    free = [s for s in range(3, 30) if s not in slots]
    for path in auto[len(free):]:
        ctx.error(path, "no PCI slot left for this device (slots 3..29 are all taken)",
                  "a VM has at most 27 devices besides GPU passthrough")


def _check_stdio(ctx: _Ctx, spec: dict) -> None:
    users: list[tuple] = []
    console = spec.get("console") or {}
    for i, port in enumerate(console.get("lpc") or []):
        if isinstance(port, dict) and port.get("backend") == "stdio" and port.get("port") != "com5":
            users.append(("spec", "console", "lpc", i, "backend"))
    for path, dev in _devices(spec):
        if dev.get("type") != "virtio-console":
            continue
        for j, port in enumerate(dev.get("ports") or []):
            if isinstance(port, dict) and port.get("kind") == "stdio":
                users.append(path + ("ports", j, "kind"))
    for path in users[1:]:
        first = users[0]
        ctx.error(path, f"stdio is already taken by {format_path(first[:-1])} ({ctx.where(first)}); "
                        "acrn-dm lets only one device use stdio",
                  "use `pty` or `socket` for this one (or `tty`/`tcp` for an LPC port)")


def _check_lpc(ctx: _Ctx, spec: dict) -> None:
    seen: dict[str, tuple] = {}
    for i, port in enumerate((spec.get("console") or {}).get("lpc") or []):
        if not isinstance(port, dict) or not isinstance(port.get("port"), str):
            continue
        path = ("spec", "console", "lpc", i, "port")
        name = port["port"]
        if name in seen:
            ctx.error(path, f"{name} is already configured at {format_path(seen[name][:-1])} ({ctx.where(seen[name])})",
                      "each COM port can be given once")
        else:
            seen[name] = path


def _option_of(token: str) -> str | None:
    """The acrn-dm option a raw argument names, if it is one we know about."""
    if token.startswith("--"):
        name = token.split("=", 1)[0]
        return name if name in OBSOLETE_OPTIONS or name in MODELLED_OPTIONS else None
    if token.startswith("-") and len(token) >= 2:
        short = token[:2]
        if len(token) == 2 or short in _SHORT_WITH_ARG:
            return short if short in OBSOLETE_OPTIONS or short in MODELLED_OPTIONS else None
    return None


def _check_extra_args(ctx: _Ctx, spec: dict) -> None:
    for i, arg in enumerate(spec.get("extraArgs") or []):
        if not isinstance(arg, str) or not arg.strip():
            continue
        option = _option_of(arg.split()[0])
        if option is None:
            continue
        path = ("spec", "extraArgs", i)
        if option in OBSOLETE_OPTIONS:
            why, instead = OBSOLETE_OPTIONS[option]
            ctx.error(path, f"`{option}` {why}", instead)
        else:
            ctx.warn(path, f"`{option}` is generated from the spec; passing it raw duplicates or contradicts it",
                     f"use {MODELLED_OPTIONS[option]} instead")


def _check_host(ctx: _Ctx, spec: dict, host) -> None:
    lapic_ids = list(getattr(host, "lapic_ids", None) or [])
    affinity = (spec.get("cpu") or {}).get("affinity") or []
    if lapic_ids:
        shown = ", ".join(map(str, lapic_ids[:16])) + (", ..." if len(lapic_ids) > 16 else "")
        for i, lapic in enumerate(affinity):
            if isinstance(lapic, int) and lapic not in lapic_ids:
                ctx.error(("spec", "cpu", "affinity", i), f"LAPIC ID {lapic} is not a CPU of this host",
                          f"the host's LAPIC IDs are {shown}")
        if spec.get("vmType") == "rtvm" and lapic_ids[0] in affinity:
            ctx.error(("spec", "cpu", "affinity", affinity.index(lapic_ids[0])),
                      f"an RTVM cannot take LAPIC ID {lapic_ids[0]}: it is the boot CPU, which the Service VM keeps",
                      "pick other CPUs for the RTVM")


_IMAGE_FIELDS = {
    "virtio-blk": ("path",),
    "ahci": ("hd", "cd"),
}


def _check_paths(ctx: _Ctx, spec: dict) -> None:
    wanted: list[tuple[tuple, str]] = []
    size_caps: dict[tuple, tuple[int, str]] = {}  # files that must not be larger than a device holds
    boot = spec.get("boot") or {}
    for section, fields in (("ovmf", ("code", "vars", "image")), ("kernel", ("path", "initrd")), ("elf", ("path",))):
        part = boot.get(section)
        if isinstance(part, dict):
            for f in fields:
                if isinstance(part.get(f), str):
                    wanted.append((("spec", "boot", section, f), part[f]))
    for path, dev in _devices(spec):
        for f in _IMAGE_FIELDS.get(dev.get("type", ""), ()):
            if isinstance(dev.get(f), str):
                wanted.append((path + (f,), dev[f]))
        if dev.get("type") == "virtio-i2c" and isinstance(dev.get("devices"), list):
            for k, client in enumerate(dev["devices"]):
                if isinstance(client, dict) and isinstance(client.get("file"), str):
                    wanted.append((path + ("devices", k, "file"), client["file"]))
                    size_caps[path + ("devices", k, "file")] = (256, "a 24c02 EEPROM holds 256 bytes")
        if dev.get("type") == "passthru":
            opts = dev.get("options") or {}
            for f in ("romfile", "dsdt"):
                if isinstance(opts.get(f), str):
                    wanted.append((path + ("options", f), opts[f]))

    base = ctx.doc.base_dir
    for path, value in wanted:
        p = Path(value).expanduser()
        full = p if p.is_absolute() else base / p
        try:
            if full.is_dir():
                ctx.error(path, f"`{value}` is a directory, not an image file", "point at the image file itself")
            elif not full.exists():
                where = f" (looked for {full})" if not p.is_absolute() else ""
                ctx.error(path, f"`{value}` does not exist{where}",
                          "fix the path (relative paths start at the spec's folder), or use --no-check-paths "
                          "when planning for another host")
            elif path in size_caps and full.stat().st_size > size_caps[path][0]:
                ctx.error(path, f"`{value}` is {full.stat().st_size} bytes; {size_caps[path][1]}",
                          f"use a file of at most {size_caps[path][0]} bytes")
        except (OSError, ValueError):  # e.g. a name too long for the file system, or a NUL
            ctx.error(path, f"`{value}` is not a usable path")


# ---------------------------------------------------------------------------------------------
# Across files: several VMs that run on one host.


def cross_file_checks(docs: list[Document]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    seen: dict[tuple, tuple[Document, tuple]] = {}
    cpus: dict[int, list[tuple[Document, tuple, bool]]] = {}

    def claim(doc: Document, kind: str, value, path: tuple, what: str, hint: str) -> None:
        key = (kind, value)
        if key in seen:
            other_doc, other_path = seen[key]
            if other_doc is doc:
                return  # reported by the per-file checks
            line, _ = other_doc.positions.locate(other_path)
            out.append(doc.diag(path, f"{what} is also used by VM `{_vm_name(other_doc)}` "
                                f"({other_doc.filename}:{line})", hint))
        else:
            seen[key] = (doc, path)

    for doc in docs:
        data = doc.data if isinstance(doc.data, dict) else {}
        name = (data.get("metadata") or {}).get("name") if isinstance(data.get("metadata"), dict) else None
        if isinstance(name, str):
            claim(doc, "name", name, ("metadata", "name"), f"VM name `{name}`", "VM names must be unique on a host")
        spec = data["spec"] if isinstance(data.get("spec"), dict) else {}
        for path, dev in _devices(spec):
            t = dev.get("type")
            if t == "vhost-vsock" and isinstance(dev.get("cid"), int):
                claim(doc, "cid", dev["cid"], path + ("cid",), f"vsock CID {dev['cid']}", "each VM needs its own CID")
            if t == "virtio-net":
                if isinstance(dev.get("mac"), str):
                    claim(doc, "mac", dev["mac"].lower(), path + ("mac",), f"MAC `{dev['mac']}`",
                          "every NIC needs its own MAC")
                for f in ("tap", "macvtap"):
                    if isinstance(dev.get(f), str):
                        claim(doc, "tap", dev[f], path + (f,), f"interface `{dev[f]}`",
                              "each virtio-net needs its own tap")
        settings = spec["settings"] if isinstance(spec.get("settings"), dict) else {}
        if isinstance(settings.get("cmdMonitor"), str):
            claim(doc, "cmd", settings["cmdMonitor"], ("spec", "settings", "cmdMonitor"),
                  f"command monitor socket `{settings['cmdMonitor']}`", "each VM needs its own socket")
        affinity = (spec.get("cpu") or {}).get("affinity") if isinstance(spec.get("cpu"), dict) else None
        if isinstance(affinity, list):
            rtvm = spec.get("vmType") == "rtvm"
            for i, lapic in enumerate(affinity):
                if isinstance(lapic, int):
                    cpus.setdefault(lapic, []).append((doc, ("spec", "cpu", "affinity", i), rtvm))
    # An RTVM owns its CPUs: nobody else may share them. Reported at every later file.
    for lapic, users in cpus.items():
        if not any(rt for _, _, rt in users):
            continue
        fdoc, fpath, _ = users[0]
        line, _ = fdoc.positions.locate(fpath)
        for doc, path, _ in users[1:]:
            if doc is not fdoc:
                out.append(doc.diag(path, f"LAPIC ID {lapic} is also used by VM `{_vm_name(fdoc)}` "
                                          f"({fdoc.filename}:{line}); an RTVM needs its CPUs to itself",
                                    "give the RTVM CPUs no other VM uses"))
    return out


def _vm_name(doc: Document) -> str:
    try:
        return str(doc.data["metadata"]["name"])
    except (TypeError, KeyError):
        return doc.filename
