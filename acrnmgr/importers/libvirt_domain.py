"""libvirt domain XML -> an acrnmgr spec.

Reads the standard elements (memory, vcpus and pinning, kernel/loader, disks, interfaces, serials,
consoles/channels, rng, vsock, hostdevs, input, video, watchdog, shmem), merges the acrnmgr metadata that
acrnmgr.render.libvirt writes when present, and lists everything it could not map."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from acrnmgr.devices import KINDS
from acrnmgr.devices.base import LibvirtIn, xml_int, xml_memory_bytes
from acrnmgr.importers.common import ImportedSpec, ImportError_, ImportResult, xml_root
from acrnmgr.plan.slots import assign_slots, requests_of
from acrnmgr.render.libvirt import ACRN_NS, ACRNMGR_NS
from acrnmgr.spec.units import format_size

_KINDS_BY_TAG: dict[str, list[Any]] = {}
for _kind in KINDS.values():
    for _tag in _kind.LIBVIRT_TAGS:
        _KINDS_BY_TAG.setdefault(_tag, []).append(_kind)


def _alias_name(el) -> str | None:
    a = el.find("alias")
    if a is not None and (a.get("name") or "").startswith("ua-"):
        return a.get("name")[3:]
    return None


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
    count = xml_int(vcpu.text.strip() if vcpu is not None and vcpu.text else None, 1)
    if aff_el is not None and aff_el.get("value"):
        affinity = _cpuset(aff_el.get("value"))
    else:
        pins = sorted((xml_int(p.get("vcpu"), 0), _cpuset(p.get("cpuset", "")))
                      for p in root.findall("cputune/vcpupin"))
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
    spec["memory"] = format_size(xml_memory_bytes(mem_el) & ~0x3FF)  # whole KiB, the finest unit of a spec

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

    imp = LibvirtIn(name, spec, add, warnings)
    for el in list(devs) if devs is not None else []:
        tag = el.tag
        if tag in ("emulator", "memballoon"):
            continue
        if tag == "serial":
            _serial(el, lpc, warnings)
            continue
        # Each device kind reads its own elements (acrnmgr/devices/<kind>.py, from_libvirt).
        if any(kind.from_libvirt(el, imp) for kind in _KINDS_BY_TAG.get(tag, ())):
            continue
        if tag == "disk":
            target, src = el.find("target"), el.find("source")
            bus = target.get("bus") if target is not None else None
            path = (src.get("file") or src.get("dev")) if src is not None else None
            warnings.append(f"<disk bus='{bus}'> {path}: only virtio and sata disks map to acrn-dm; skipped")
        elif tag == "controller":
            if el.get("type") not in ("pci", "usb", "ide", "sata"):
                warnings.append(f"<controller type='{el.get('type')}'>: not mapped")
        elif tag in ("graphics", "audio", "sound"):
            warnings.append(f"<{tag}>: acrn-dm has no equivalent; skipped")
        else:
            warnings.append(f"<{tag}>: not mapped")
    consoles = imp.consoles

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
    for d, s in zip(devices, slots, strict=False):
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
    if meta.get("consoleReady"):
        spec.setdefault("console", {})["ready"] = meta["consoleReady"]
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


def _serial(el: ET.Element, lpc: list[dict], warnings: list[str]) -> None:
    """An ISA serial port: an acrn-dm LPC COM port."""
    target = el.find("target")
    port = xml_int(target.get("port") if target is not None else None, 0) or 0
    com = f"com{port + 1}"
    t = el.get("type")
    source = el.find("source")
    if t == "stdio":
        lpc.append({"port": com, "backend": "stdio"})
    elif t == "dev" and source is not None:
        lpc.append({"port": com, "backend": "tty", "path": source.get("path")})
    elif t == "tcp" and source is not None and xml_int(source.get("service")) is not None:
        lpc.append({"port": com, "backend": "tcp", "tcpPort": xml_int(source.get("service"))})
    elif t == "pty":
        lpc.append({"port": com, "backend": "tty", "path": "/dev/pts/0"})
        warnings.append(f"<serial type='pty'> {com}: acrn-dm takes a tty path; set to /dev/pts/0 (adjust it)")
    else:
        warnings.append(f"<serial type='{t}'> {com}: no acrn-dm LPC backend for it; skipped")


def import_domain_xml(text: str, source: str) -> ImportResult:
    return ImportResult(source, "libvirt", [spec_from_domain(text, source)])
