"""libvirt domain XML -> an acrnmgr spec.

Reads the standard elements (memory, vcpus and pinning, kernel/loader, disks, interfaces, serials,
consoles/channels, rng, vsock, hostdevs, input, video, watchdog, shmem), merges the acrnmgr metadata that
acrnmgr.render.libvirt writes when present, and lists everything it could not map."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from acrnmgr.devices.base import LIBVIRT_MODEL
from acrnmgr.importers.common import ImportedSpec, ImportError_, ImportResult, xml_root
from acrnmgr.plan.slots import assign_slots, requests_of
from acrnmgr.render.libvirt import ACRN_NS, ACRNMGR_NS
from acrnmgr.spec.units import format_size

_MODE_OF_MODEL = {v: k for k, v in LIBVIRT_MODEL.items()}


def _int(text: str | None, default: int | None = None) -> int | None:
    if text is None:
        return default
    try:
        return int(text, 0)
    except ValueError:
        return default


def _slot_of(el) -> int | None:
    addr = el.find("address")
    if addr is not None and addr.get("type") == "pci":
        return _int(addr.get("slot"))
    return None


def _alias_name(el) -> str | None:
    a = el.find("alias")
    if a is not None and (a.get("name") or "").startswith("ua-"):
        return a.get("name")[3:]
    return None


def _memory_bytes(el) -> int:
    units = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
             "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40}
    unit = (el.get("unit") or "KiB").lower()
    return int(el.text.strip()) * units.get(unit, 1 << 10)


def _cpuset(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part or part.startswith("^"):
            continue
        if "-" in part:
            a, b = part.split("-")
            out += range(int(a), int(b) + 1)
        else:
            out.append(int(part))
    return out


def spec_from_domain(xml_text: str, source: str = "<domain>") -> ImportedSpec:
    root = xml_root(xml_text, source, "domain")
    warnings: list[str] = []
    name = (root.findtext("name") or "").strip()
    if not name:
        raise ImportError_(f"{source}: the domain has no <name>")
    meta: dict = {}
    mel = root.find(f"metadata/{{{ACRNMGR_NS}}}vm")
    if mel is not None and mel.text:
        try:
            meta = json.loads(mel.text)
        except ValueError:
            warnings.append("the acrnmgr metadata is not valid JSON; ignored")
    spec: dict = {}
    for key in ("vmType", "osType", "loadOrder"):
        if meta.get(key):
            spec[key] = meta[key]
    acrn_cfg = root.find(f"{{{ACRN_NS}}}config")
    if acrn_cfg is not None and acrn_cfg.find(f"{{{ACRN_NS}}}rtvm") is not None:
        spec["vmType"] = "rtvm"

    # CPUs: acrn:cpu_affinity, else vcpupin, else the vcpu cpuset, else 0..n-1
    affinity: list[int] = []
    aff_el = acrn_cfg.find(f"{{{ACRN_NS}}}cpu_affinity") if acrn_cfg is not None else None
    vcpu = root.find("vcpu")
    count = _int(vcpu.text.strip() if vcpu is not None and vcpu.text else None, 1)
    if aff_el is not None and aff_el.get("value"):
        affinity = _cpuset(aff_el.get("value"))
    else:
        pins = sorted(((_int(p.get("vcpu"), 0), _cpuset(p.get("cpuset", ""))) for p in root.findall("cputune/vcpupin")))
        if pins and all(len(c) == 1 for _, c in pins) and len(pins) == count:
            affinity = [c[0] for _, c in pins]
        elif vcpu is not None and vcpu.get("cpuset") and len(_cpuset(vcpu.get("cpuset"))) == count:
            affinity = _cpuset(vcpu.get("cpuset"))
        else:
            affinity = list(range(count))
            warnings.append(f"no one-to-one vCPU pinning in the domain; cpu.affinity set to {affinity} "
                            "(acrn-dm needs the exact CPUs: check it)")
    spec["cpu"] = {"affinity": affinity}
    mem_el = root.find("memory")
    if mem_el is None or not (mem_el.text or "").strip():
        raise ImportError_(f"{source}: the domain has no <memory>")
    spec["memory"] = format_size(_memory_bytes(mem_el) & ~0x3FF)  # whole KiB, the finest unit of a spec

    os_el = root.find("os")
    boot: dict = {}
    if os_el is not None and os_el.findtext("kernel"):
        if meta.get("elf"):
            boot = {"elf": {"path": os_el.findtext("kernel")}}
        else:
            k = {"path": os_el.findtext("kernel")}
            if os_el.findtext("initrd"):
                k["initrd"] = os_el.findtext("initrd")
            if os_el.findtext("cmdline"):
                k["cmdline"] = os_el.findtext("cmdline")
            boot = {"kernel": k}
    elif os_el is not None and os_el.findtext("loader"):
        loader = os_el.findtext("loader").strip()
        nvram = (os_el.findtext("nvram") or "").strip()
        o = {"code": loader, "vars": nvram} if nvram else {"image": loader}
        if meta.get("ovmfWriteback"):
            o["writeback"] = True
        boot = {"ovmf": o}
    elif os_el is not None and os_el.get("firmware") == "efi":
        boot = {"ovmf": {"image": "/usr/share/acrn/bios/OVMF.fd"}}
        warnings.append("<os firmware='efi'>: firmware auto-selection has no acrn-dm form; "
                        "boot.ovmf set to ACRN's /usr/share/acrn/bios/OVMF.fd")
    else:
        raise ImportError_(f"{source}: no <kernel> or <loader> in <os>: acrn-dm needs a kernel, ELF or OVMF to boot")
    spec["boot"] = boot

    devs = root.find("devices")
    found: list[tuple[int | None, int, dict]] = []  # (slot, document order, device)
    extras = meta.get("deviceExtras", {})
    lpc = []
    consoles: dict[int, dict] = {}
    order = 0

    def add(slot, device, el=None):
        nonlocal order
        alias = _alias_name(el) if el is not None else None
        if alias:
            device["name"] = alias
        if meta:
            # Exported by acrnmgr: the backend the spec asked for is in the metadata; the one the
            # XML shows (vhost-user, vhost) is what the compiler chose on that host.
            device.pop("backend", None)
        if alias and alias in extras:
            device.update(extras[alias])
        found.append((slot, order, device))
        order += 1

    for el in list(devs) if devs is not None else []:
        tag = el.tag
        if tag in ("emulator", "memballoon"):
            continue
        if tag == "serial":
            port = _int((el.find("target") or ET.Element("t")).get("port"), 0)
            com = f"com{port + 1}"
            t = el.get("type")
            if t == "stdio":
                lpc.append({"port": com, "backend": "stdio"})
            elif t == "dev":
                lpc.append({"port": com, "backend": "tty", "path": el.find("source").get("path")})
            elif t == "tcp" and el.find("source") is not None:
                lpc.append({"port": com, "backend": "tcp", "tcpPort": int(el.find("source").get("service"))})
            elif t == "pty":
                lpc.append({"port": com, "backend": "tty", "path": "/dev/pts/0"})
                warnings.append(f"<serial type='pty'> {com}: acrn-dm takes a tty path; set to /dev/pts/0 (adjust it)")
            else:
                warnings.append(f"<serial type='{t}'> {com}: no acrn-dm LPC backend for it; skipped")
            continue
        if tag == "disk":
            dev_kind = el.get("device", "disk")
            bus = (el.find("target") if el.find("target") is not None else ET.Element("t")).get("bus")
            src = el.find("source")
            path = src.get("file") or src.get("dev") if src is not None else None
            if bus == "sata" and path:
                add(_slot_of(el), {"type": "ahci", ("cd" if dev_kind == "cdrom" else "hd"): path}, el)
                continue
            if bus != "virtio":
                warnings.append(f"<disk bus='{bus}'> {path}: only virtio and sata disks map to acrn-dm; skipped")
                continue
            d: dict = {"type": "virtio-blk"}
            if el.get("type") == "vhostuser":
                d["backend"] = "embedded"
            elif path:
                d["path"] = path
            drv = el.find("driver")
            if drv is not None:
                cache = {"writethrough": "writethru", "writeback": "writeback", "none": "nocache",
                         "directsync": "nocache"}.get(drv.get("cache", ""))
                if cache and cache != "writethru":
                    d["cache"] = cache
                if drv.get("discard") == "unmap":
                    d["discard"] = True
                if drv.get("io") in ("io_uring", "threads"):
                    d["aio"] = drv.get("io")
                if drv.get("queues"):
                    d["mq"] = int(drv.get("queues"))
                if drv.get("type") not in (None, "raw"):
                    warnings.append(f"disk {path}: format {drv.get('type')}; acrn-dm reads raw images only")
            if el.find("readonly") is not None:
                d["readOnly"] = True
            if el.find("boot") is not None:
                d["boot"] = True
            if el.get("model") in _MODE_OF_MODEL:
                d["mode"] = _MODE_OF_MODEL[el.get("model")]
            add(_slot_of(el), d, el)
            if "path" not in d:
                warnings.append("vhost-user disk without acrnmgr metadata: the image behind the socket is unknown")
            continue
        if tag == "interface":
            t = el.get("type")
            d = {"type": "virtio-net"}
            target = el.find("target")
            mac = el.find("mac")
            if mac is not None:
                d["mac"] = mac.get("address").lower()
            model = el.find("model")
            mtype = model.get("type") if model is not None else None
            if mtype not in ("virtio", *_MODE_OF_MODEL):
                warnings.append(f"<interface> model {mtype!r}: imported as virtio-net")
            elif mtype in _MODE_OF_MODEL:
                d["mode"] = _MODE_OF_MODEL[mtype]
            drv = el.find("driver")
            if t == "vhostuser":
                d["backend"] = "embedded"
            elif drv is not None and drv.get("name") == "vhost":
                d["backend"] = "vhost"
            if target is not None and target.get("dev"):
                d["tap"] = target.get("dev")
            elif t in ("bridge", "network", "ethernet"):
                warnings.append(f"<interface type='{t}'> without <target dev>: tap name set to "
                                f"tap_{name[:11]}; libvirt would have picked one")
                d["tap"] = f"tap_{name[:11]}"
                if t == "bridge" and el.find("source") is not None:
                    spec.setdefault("network", {})["bridge"] = el.find("source").get("bridge")
            elif t != "vhostuser":
                warnings.append(f"<interface type='{t}'>: no acrn-dm equivalent; skipped")
                continue
            add(_slot_of(el), d, el)
            if d.get("macvtap") is True:
                d["macvtap"] = d.pop("tap")
            continue
        if tag == "controller":
            if el.get("type") == "virtio-serial":
                d = {"type": "virtio-console", "ports": []}
                if el.get("model") in _MODE_OF_MODEL:
                    d["mode"] = _MODE_OF_MODEL[el.get("model")]
                consoles[_int(el.get("index"), 0)] = d
                add(_slot_of(el), d, el)
            elif el.get("type") == "usb" and el.get("model") in ("qemu-xhci", "nec-xhci"):
                add(_slot_of(el), {"type": "xhci"}, el)
            elif el.get("type") not in ("pci", "usb", "ide", "sata"):
                warnings.append(f"<controller type='{el.get('type')}'>: not mapped")
            continue
        if tag in ("console", "channel"):
            target = el.find("target")
            if target is None or target.get("type") != "virtio":
                if tag == "console" and target is not None and target.get("type") == "serial":
                    continue  # the console view of <serial>, already imported
                warnings.append(f"<{tag}> with target {target.get('type') if target is not None else None}: not mapped")
                continue
            addr = el.find("address")
            ctrl = _int(addr.get("controller"), 0) if addr is not None else 0
            if ctrl not in consoles:
                consoles[ctrl] = {"type": "virtio-console", "ports": []}
                add(None, consoles[ctrl])
            kind = {"pty": "pty", "unix": "socket", "stdio": "stdio", "dev": "tty", "file": "file"}.get(el.get("type"))
            if kind is None:
                warnings.append(f"<{tag} type='{el.get('type')}'>: no acrn-dm console backend; skipped")
                continue
            port: dict = {"kind": kind, "name": target.get("name") or f"port{len(consoles[ctrl]['ports'])}"}
            if tag == "console":
                port["console"] = True
            src = el.find("source")
            if src is not None and src.get("path"):
                port["path"] = src.get("path")
            if kind == "socket" and src is not None and src.get("mode") == "connect":
                port["socketMode"] = "client"  # server is the default
            pos = _int(addr.get("port"), None) if addr is not None else None
            port["_pos"] = pos if pos is not None else 1000 + len(consoles[ctrl]["ports"])
            consoles[ctrl]["ports"].append(port)
            continue
        if tag == "rng":
            d = {"type": "virtio-rnd"}
            if el.get("model") in _MODE_OF_MODEL:
                d["mode"] = _MODE_OF_MODEL[el.get("model")]
            add(_slot_of(el), d, el)
            continue
        if tag == "vsock":
            cid = el.find("cid")
            if cid is None or cid.get("auto") == "yes" or not cid.get("address"):
                warnings.append("<vsock> with an automatic CID: acrn-dm needs a fixed cid; set to 3")
                add(_slot_of(el), {"type": "vhost-vsock", "cid": 3}, el)
            else:
                add(_slot_of(el), {"type": "vhost-vsock", "cid": int(cid.get("address"))}, el)
            continue
        if tag == "hostdev":
            if el.get("type") != "pci":
                warnings.append(f"<hostdev type='{el.get('type')}'>: only PCI passthrough maps to acrn-dm; skipped")
                continue
            a = el.find("source/address")
            d = {"type": "passthru", "bdf": f"{_int(a.get('bus')):02x}:{_int(a.get('slot')):02x}.{_int(a.get('function'))}"}
            rom = el.find("rom")
            add(_slot_of(el), d, el)
            if rom is not None and rom.get("file"):
                d.setdefault("options", {})["romfile"] = rom.get("file")
            if _slot_of(el) == 2:
                d["gpu"] = True
            continue
        if tag == "input":
            if el.get("type") == "evdev" and el.find("source") is not None:
                add(None, {"type": "virtio-input", "device": el.find("source").get("dev")}, el)
            elif el.get("type") not in ("mouse", "keyboard"):
                warnings.append(f"<input type='{el.get('type')}'>: not mapped")
            continue
        if tag == "video":
            model = el.find("model")
            if model is not None and model.get("type") == "virtio":
                add(_slot_of(el), {"type": "virtio-gpu"}, el)
            else:
                warnings.append(f"<video> model {model.get('type') if model is not None else None}: only virtio "
                                "maps (to virtio-gpu); skipped")
            continue
        if tag == "watchdog":
            if el.get("model") == "i6300esb":
                add(_slot_of(el), {"type": "wdt"}, el)
            else:
                warnings.append(f"<watchdog model='{el.get('model')}'>: only i6300esb maps; skipped")
            continue
        if tag == "shmem":
            size = el.find("size")
            mb = _memory_bytes(size) >> 20 if size is not None else 2
            add(_slot_of(el), {"type": "ivshmem", "region": f"dm:/{el.get('name')}", "size": f"{mb}M"}, el)
            continue
        if tag in ("graphics", "audio", "sound"):
            warnings.append(f"<{tag}>: acrn-dm has no equivalent; skipped")
            continue
        warnings.append(f"<{tag}>: not mapped")

    for d in consoles.values():
        d["ports"].sort(key=lambda p: p["_pos"])
        name_of_console = d.pop("consolePort", None)
        for p in d["ports"]:
            del p["_pos"]
            if p.get("console") and name_of_console:
                p["name"] = name_of_console
    for _, _, d in found:
        if d.pop("autoMac", False):
            d.pop("mac", None)
    for d in meta.get("devices", []):
        d = dict(d)
        d.pop("index", None)
        found.append((d.pop("_slot", None), order, d))
        order += 1
    # Device order: by PCI slot where known (the export assigned slots in device order), then as found.
    found.sort(key=lambda t: (t[0] if t[0] is not None else 1000, t[1]))
    devices = [d for _, _, d in found]
    slots = [s for s, _, _ in found]
    for d, s in zip(devices, slots):
        if s is not None:
            d["slot"] = s
    # Keep only the slots the automatic assignment would not give anyway.
    for d in devices:
        if "slot" in d:
            trial = [x if x is not d else {k: v for k, v in d.items() if k != "slot"} for x in devices]
            assigned, problems = assign_slots(requests_of(trial))
            if not problems and assigned[devices.index(d)] == d["slot"]:
                del d["slot"]
    if lpc or meta.get("lpc"):
        spec["console"] = {"lpc": sorted(lpc + meta.get("lpc", []), key=lambda p: p["port"])}
    if meta.get("network"):
        spec["network"] = meta["network"]
    if devices:
        spec["devices"] = devices
    if meta.get("settings"):
        spec["settings"] = meta["settings"]
    if meta.get("extraArgs"):
        spec["extraArgs"] = meta["extraArgs"]
    cl = root.find(f"{{{ACRN_NS}}}commandline")
    if cl is not None and not meta:
        args = [a.get("value") for a in cl.findall(f"{{{ACRN_NS}}}arg")]
        if args:
            spec["extraArgs"] = args
            warnings.append(f"<acrn:commandline> kept verbatim in extraArgs: {' '.join(args)}")
    data = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": {"name": name}, "spec": spec}
    if meta.get("labels"):
        data["metadata"]["labels"] = meta["labels"]
    known = {"name", "uuid", "metadata", "memory", "currentMemory", "vcpu", "cputune", "os", "features", "clock",
             "on_poweroff", "on_reboot", "on_crash", "devices", "memoryBacking", "cpu", "pm", "resource", "seclabel",
             "title", "description", "genid", "sysinfo", "idmap", f"{{{ACRN_NS}}}config", f"{{{ACRN_NS}}}commandline"}
    for child in root:
        if child.tag not in known:
            warnings.append(f"<{child.tag}>: not mapped")
    return ImportedSpec(name, data, warnings)


def import_domain_xml(text: str, source: str) -> ImportResult:
    return ImportResult(source, "libvirt", [spec_from_domain(text, source)])
