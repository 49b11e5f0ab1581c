"""libvirt domain XML -> an acrnmgr spec.

Reads the standard elements (memory, vcpus and pinning, kernel/loader/nvram, disks, interfaces, serials,
consoles/channels, rng, vsock, hostdevs, input, video, watchdog, shmem), merges the acrnmgr metadata that
acrnmgr.render.libvirt writes when present, and lists everything it could not map: every element and
attribute the spec does not carry is named in the import's warnings (``_unmapped``), nothing is dropped
silently.

What would change what the VM touches is refused, with every reason at once: a disk format acrn-dm would
misread (qcow2, vmdk...), an encrypted or transient disk, a network NVRAM, a non-x86 architecture. A domain
that boots BIOS (SeaBIOS) is refused unless ``bios_as_ovmf`` asks for ACRN's OVMF instead.

A domain acrnmgr did not export (no acrnmgr metadata) is *foreign*: its PCI addresses are libvirt's
(q35 puts devices on buses behind root ports, i440fx puts video on slot 2) and are dropped, so the planner
assigns acrn-dm slots, unless ``keep_addresses``."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from acrnmgr.devices import KINDS
from acrnmgr.devices.base import LibvirtIn, xml_int, xml_memory_bytes
from acrnmgr.devices.virtio_blk import unreachable_disk
from acrnmgr.importers.common import ImportedSpec, ImportError_, ImportResult, xml_root
from acrnmgr.plan.slots import assign_slots, requests_of
from acrnmgr.render.libvirt import ACRN_NS, ACRNMGR_NS
from acrnmgr.spec.units import format_size

_KINDS_BY_TAG: dict[str, list[Any]] = {}
for _kind in KINDS.values():
    for _tag in _kind.LIBVIRT_TAGS:
        _KINDS_BY_TAG.setdefault(_tag, []).append(_kind)

# ACRN's own OVMF (a combined CODE+VARS image acrn-dm loads into guest memory).
ACRN_OVMF = "/usr/share/acrn/bios/OVMF.fd"
LIBVIRT_NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_Q35 = re.compile(r"(pc-)?q35(-[\w.]+)?")
_I440FX = re.compile(r"pc(-i440fx-[\w.]+)?")


def _alias_name(el) -> str | None:
    a = el.find("alias")
    if a is not None and (a.get("name") or "").startswith("ua-"):
        return (a.get("name") or "")[3:]
    return None


def _cpuset(text: str, what: str) -> list[int]:
    """libvirt's cpuset syntax: `0-3,6,^2` (ranges, single CPUs, exclusions); an ImportError_ when malformed."""
    include: list[int] = []
    exclude: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        neg = part.startswith("^")
        body = part[1:].strip() if neg else part
        m = re.fullmatch(r"(\d{1,5})(?:\s*-\s*(\d{1,5}))?", body)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ImportError_(f"{what}: cpuset {text!r} is not a CPU list (like 0-3,6,^2)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        cpus = range(lo, hi + 1)
        if neg:
            exclude.update(cpus)
        else:
            include += [c for c in cpus if c not in include]
    return [c for c in include if c not in exclude]


# -- what the import carries over, element by element ----------------------------------------------------------
# A mapping describes one element: "@attr" -> None (any value carries over) or a tuple of the values that do (the
# others are reported), "#text" -> the text carries over, "child" -> the child's own mapping. Anything not named
# is reported as not mapped.
_ANY = None
_ADDRESS = {"@type": _ANY, "@domain": _ANY, "@bus": _ANY, "@slot": _ANY, "@function": _ANY, "@multifunction": _ANY,
            "@controller": _ANY, "@port": _ANY, "@target": _ANY, "@unit": _ANY}  # (a drive address: libvirt's own)
_DEV = {"alias": {"@name": _ANY}, "address": _ADDRESS}
MAPPED: dict[str, dict[str, Any]] = {
    "disk": {**_DEV, "@type": ("file", "block", "vhostuser"), "@device": ("disk", "cdrom"), "@model": _ANY,
             "driver": {"@name": ("qemu",), "@type": ("raw",), "@cache": _ANY, "@discard": ("unmap",),
                        "@io": _ANY, "@queues": _ANY, "@iothread": _ANY},  # (io and cache: reported by the disk itself)
             "source": {"@file": _ANY, "@dev": _ANY, "@type": ("unix",), "@path": _ANY,
                        "reconnect": {"@enabled": _ANY, "@timeout": _ANY},
                        "slices": {"slice": {"@type": ("storage",), "@offset": _ANY, "@size": _ANY}}},
             "target": {"@dev": _ANY, "@bus": ("virtio", "sata")}, "readonly": {}, "boot": {"@order": _ANY}},
    "interface": {**_DEV, "@type": ("bridge", "network", "ethernet", "vhostuser"),
                  "mac": {"@address": _ANY}, "model": {"@type": _ANY},
                  "source": {"@bridge": _ANY, "@network": _ANY, "@type": ("unix",), "@path": _ANY,
                             "@mode": _ANY, "reconnect": {"@enabled": _ANY, "@timeout": _ANY}},
                  "target": {"@dev": _ANY, "@managed": ("no",)}, "driver": {"@name": ("vhost", "qemu")}},
    "hostdev": {**_DEV, "@mode": ("subsystem",), "@type": ("pci",), "@managed": ("yes",),
                "source": {"address": {"@domain": _ANY, "@bus": _ANY, "@slot": _ANY, "@function": _ANY}},
                "rom": {"@file": _ANY, "@bar": _ANY}},  # (bar='off': reported by the hostdev itself)
    "controller": {**_DEV, "@type": ("virtio-serial", "usb"), "@index": _ANY, "@model": _ANY},
    "console": {**_DEV, "@type": _ANY, "source": {"@path": _ANY, "@mode": _ANY},
                "target": {"@type": ("virtio",), "@name": _ANY, "@port": _ANY}},
    "channel": {**_DEV, "@type": _ANY, "source": {"@path": _ANY, "@mode": _ANY},
                "target": {"@type": ("virtio",), "@name": _ANY}},
    "serial": {"@type": ("stdio", "dev", "tcp", "pty"), "alias": {"@name": _ANY},
               "source": {"@path": _ANY, "@mode": ("bind",), "@host": _ANY, "@service": _ANY},
               "protocol": {"@type": ("raw",)}, "target": {"@port": _ANY, "@type": ("isa-serial",),
                                                           "model": {"@name": ("isa-serial",)}}},
    "rng": {**_DEV, "@model": _ANY, "backend": {"@model": ("random",), "#text": ("/dev/urandom", "/dev/random")}},
    "vsock": {**_DEV, "@model": _ANY, "cid": {"@auto": _ANY, "@address": _ANY}},
    "watchdog": {**_DEV, "@model": ("i6300esb",), "@action": _ANY},
    "shmem": {**_DEV, "@name": _ANY, "model": {"@type": _ANY}, "size": {"@unit": _ANY, "#text": _ANY}},
    "video": {**_DEV, "model": {"@type": _ANY, "@heads": _ANY, "@primary": _ANY}},
    "input": {**_DEV, "@type": _ANY, "@bus": ("virtio",), "source": {"@evdev": _ANY, "@dev": _ANY}},
}


def _label(el: ET.Element) -> str:
    keys = [f"{k}='{v}'" for k, v in el.attrib.items() if k in ("type", "bus", "dev", "model", "name")]
    return f"<{el.tag}{' ' if keys else ''}{' '.join(keys)}>"


def _describe(el: ET.Element) -> str:
    text = _label(el)
    target, mac = el.find("target"), el.find("mac")
    if el.tag == "disk" and target is not None and target.get("dev"):
        text += f" {target.get('dev')}"
    elif el.tag == "interface" and mac is not None and mac.get("address"):
        text += f" {mac.get('address')}"
    return text


def _unmapped(el: ET.Element, mapping: dict[str, Any], where: str, out: list[str]) -> None:
    for attr, value in el.attrib.items():
        allowed = mapping.get(f"@{attr}", "missing")
        if allowed == "missing":
            out.append(f"{where}: {attr}='{value}' not mapped")
        elif allowed is not None and value not in allowed:
            out.append(f"{where}: {attr}='{value}' has no acrn-dm form")
    text = (el.text or "").strip()
    if text and "#text" not in mapping:
        out.append(f"{where}: text {text!r} not mapped")
    elif text and mapping.get("#text") is not None and text not in mapping["#text"]:
        out.append(f"{where}: {text!r} has no acrn-dm form")
    for child in el:
        if not isinstance(child.tag, str):
            continue
        sub = mapping.get(child.tag)
        if not isinstance(sub, dict):
            out.append(f"{where}: {_describe(child)} not mapped")
        else:
            _unmapped(child, sub, f"{where}/<{child.tag}>", out)


# Top-level elements whose values carry over, or which say what acrnmgr's own export says (so a round trip
# reports nothing): anything else, or another value, is listed.
_FEATURES_OK = {"acpi", "apic", "pae", "vmport", "smm"}
_ON_OK = {"on_poweroff": ("destroy",), "on_reboot": ("restart",), "on_crash": ("destroy",)}


def _top_level(root: ET.Element, warnings: list[str], spec: dict[str, Any], ours: bool) -> None:
    for child in root:
        tag = child.tag
        if not isinstance(tag, str) or tag in ("name", "metadata", "memory", "vcpu", "os", "devices",
                                               f"{{{ACRN_NS}}}config", f"{{{ACRN_NS}}}commandline"):
            continue
        if tag in _ON_OK:
            if (child.text or "").strip() not in _ON_OK[tag]:
                warnings.append(f"<{tag}>{(child.text or '').strip()}</{tag}>: acrn-dm powers off, restarts "
                                "and stops on a crash; not mapped")
        elif tag == "features":
            for f in child:
                if isinstance(f.tag, str) and f.tag not in _FEATURES_OK:
                    warnings.append(f"<features><{f.tag}>: not mapped")
        elif tag == "cputune":
            for c in child:
                if isinstance(c.tag, str) and c.tag != "vcpupin":
                    warnings.append(f"<cputune><{c.tag}>: not mapped")
        elif tag == "seclabel" and child.get("model") == "dac" and child.findtext("label") == "+0:+0":
            continue  # acrnmgr's own: QEMU as root without relabelling, as acrn-dm runs
        elif tag == "seclabel":
            warnings.append(f"<seclabel model='{child.get('model')}' type='{child.get('type')}'>: not mapped "
                            "(acrn-dm runs as root without a security label)")
        elif tag == "memoryBacking":
            for c in child:
                if not isinstance(c.tag, str):
                    continue
                if c.tag == "source" and c.get("type") == "memfd" or c.tag == "access" and c.get("mode") == "shared":
                    continue  # what acrnmgr's export writes for vhost-user
                warnings.append(f"<memoryBacking><{c.tag}{''.join(f' {k}={v!r}' for k, v in c.attrib.items())}>: "
                                "not mapped (acrn-dm backs guest memory itself; hugepages are the host's setting)")
        elif tag == "currentMemory":
            warnings.append("<currentMemory>: acrn-dm has no balloon target; the VM gets all of <memory>")
        elif tag == "uuid":
            text = (child.text or "").strip()
            if ours:
                continue  # spec.uuid, when the spec has one, is in the metadata; libvirt invents the others
            if _UUID_RE.fullmatch(text):
                spec["uuid"] = text.lower()  # the acrn engine's plan warns that acrn-dm cannot give it
            else:
                warnings.append(f"<uuid>{text}</uuid>: not a UUID; not mapped")
        elif tag in _TOP_REASONS and not (ours and tag == "iothreads"):
            warnings.append(f"{_describe(child)}: {_TOP_REASONS[tag]}")
        elif tag != "iothreads":  # (acrnmgr's export: the count of the disks' own iothreads)
            warnings.append(f"{_describe(child)}: not mapped")


_TOP_REASONS = {
    "genid": "a VM generation ID (QEMU's vmgenid device) has no acrn-dm form and the spec has none; not mapped",
    "sysinfo": "SMBIOS tables: the spec has none (acrn-dm passes none of yours to the guest); not mapped, the guest "
               "sees the engine's own (spec.uuid carries the system UUID)",
    "iothreads": "a pool of iothreads: the spec gives each virtio-blk disk an iothread of its own (`iothread`), "
                 "taken from <driver iothread>; the pool is not kept",
    "iothreadids": "the ids of the iothread pool: not kept (each disk gets an iothread of its own)",
    "numatune": "NUMA placement of guest memory: acrn-dm has none; not mapped",
    "cpu": "the guest CPU model, topology and NUMA cells: acrn-dm gives the guest the host's CPU; not mapped",
}


def _os(root: ET.Element, name: str, meta: dict, ours: bool, warnings: list[str], bios_as_ovmf: bool) -> dict:
    os_el = root.find("os")
    if os_el is None:
        os_el = ET.Element("os")
    type_el = os_el.find("type")
    arch = type_el.get("arch") if type_el is not None else None
    if arch is not None and arch not in ("x86_64", "i686"):
        raise ImportError_(f"<os><type arch='{arch}'>: ACRN runs x86 guests only (x86_64)")
    if type_el is not None and (type_el.text or "hvm").strip() != "hvm":
        raise ImportError_(f"<os><type>{(type_el.text or '').strip()}</type>: acrn-dm runs full (hvm) guests only")
    for c in os_el:
        if isinstance(c.tag, str) and c.tag not in ("type", "kernel", "initrd", "cmdline", "loader", "nvram"):
            warnings.append(f"<os>{_describe(c)}: not mapped")
    kernel = (os_el.findtext("kernel") or "").strip()
    if kernel:
        if meta.get("elf"):
            return {"elf": {"path": kernel}}
        k = {"path": kernel}
        if (os_el.findtext("initrd") or "").strip():
            k["initrd"] = (os_el.findtext("initrd") or "").strip()
        if os_el.findtext("cmdline"):
            k["cmdline"] = os_el.findtext("cmdline") or ""
        if os_el.find("loader") is not None:
            warnings.append("<os><loader> with a <kernel>: acrn-dm boots the kernel directly; the loader is not used")
        return {"kernel": k}
    loader = os_el.find("loader")
    path = (loader.text or "").strip() if loader is not None else ""
    bios_msg = ("acrn-dm boots only UEFI (OVMF) or a kernel; import it with `--bios-as-ovmf` to boot ACRN's OVMF "
                f"({ACRN_OVMF}) instead, which starts the guest only if its disk has an EFI system partition")
    if path and _is_bios(path):
        if not bios_as_ovmf:
            raise ImportError_(f"<os><loader>{path}</loader> is a BIOS (SeaBIOS): {bios_msg}")
        warnings.append(f"<os><loader>{path}</loader> (BIOS) replaced by ACRN's OVMF {ACRN_OVMF} (--bios-as-ovmf): "
                        "the guest boots only if its disk has an EFI system partition")
        return {"ovmf": {"image": ACRN_OVMF}}
    if path and loader is not None:
        if meta.get("ovmf"):
            return {"ovmf": dict(meta["ovmf"])}  # acrnmgr's own export: the spec's form, exactly
        return {"ovmf": _ovmf(os_el, loader, path, name, warnings if not ours else [])}
    if os_el.get("firmware") == "efi":
        o: dict[str, Any] = {"image": ACRN_OVMF}
        if any(f.get("name") == "secure-boot" and f.get("enabled") == "yes" for f in os_el.iter("feature")):
            o["secure"] = True
        warnings.append(f"<os firmware='efi'>: firmware auto-selection has no acrn-dm form; boot.ovmf set to ACRN's "
                        f"{ACRN_OVMF}, loaded read-only (UEFI variables are not kept across boots)")
        return {"ovmf": o}
    if not bios_as_ovmf:
        raise ImportError_(f"no <kernel> or <loader> in <os>: the domain boots BIOS; {bios_msg}")
    warnings.append(f"no <kernel> or <loader>: a BIOS-booted domain, given ACRN's OVMF {ACRN_OVMF} (--bios-as-ovmf): "
                    "the guest boots only if its disk has an EFI system partition")
    return {"ovmf": {"image": ACRN_OVMF}}


def _is_bios(path: str) -> bool:
    low = path.lower()
    base = low.rsplit("/", 1)[-1]
    if any(k in low for k in ("ovmf", "edk2", "uefi", "efi")):
        return False
    return "bios" in base or "seabios" in low


def _ovmf(os_el: ET.Element, loader: ET.Element, path: str, name: str, warnings: list[str]) -> dict[str, Any]:
    """<loader>/<nvram> as boot.ovmf, keeping what the VM can write exactly as libvirt has it: the code stays
    read-only, the variables are the VM's own file."""
    ltype = loader.get("type") or "rom"
    readonly = loader.get("readonly") == "yes" or ltype == "rom"
    nvram = os_el.find("nvram")
    for el, attrs in ((loader, ("format",)), (nvram, ("format", "templateFormat"))):
        for attr in attrs:
            fmt = el.get(attr) if el is not None else None
            if el is not None and fmt not in (None, "raw"):
                raise ImportError_(f"<{el.tag} {attr}='{fmt}'>: acrn-dm loads raw firmware and variables only; "
                                   f"convert it (qemu-img convert -O raw) and point the domain at the raw file")
    _unmapped(loader, {"@readonly": _ANY, "@type": _ANY, "@secure": _ANY, "@format": _ANY, "#text": _ANY},
              "<os><loader>", warnings)
    if nvram is not None:
        _unmapped(nvram, {"@template": _ANY, "@format": _ANY, "@templateFormat": _ANY, "@type": _ANY,
                          "#text": _ANY}, "<os><nvram>", warnings)
    o: dict[str, Any]
    if nvram is not None:
        if nvram.get("type") not in (None, "file") or nvram.find("source") is not None:
            raise ImportError_(f"<nvram type='{nvram.get('type')}'>: a network or block NVRAM has no acrn-dm form "
                               "(acrn-dm reads the UEFI variables from a local file)")
        vars_path = (nvram.text or "").strip()
        if not vars_path:
            vars_path = f"{LIBVIRT_NVRAM_DIR}/{name}_VARS.fd"
            warnings.append(f"<nvram> without a path: set to libvirt's default {vars_path} (acrn-dm needs the file "
                            "to exist: copy the template there)")
        o = {"code": path, "vars": vars_path, "writeback": True}
        if nvram.get("template"):
            o["varsTemplate"] = nvram.get("template")
        if not readonly:
            warnings.append(f"<loader readonly='no'> {path} with <nvram>: acrn-dm never writes the code; "
                            "only the variables are written")
    elif ltype == "pflash" and readonly:
        if "code" in path.rsplit("/", 1)[-1].lower():
            vars_path = f"{LIBVIRT_NVRAM_DIR}/{name}_VARS.fd"
            template = re.sub("code", "vars", path.rsplit("/", 1)[-1], flags=re.I)
            o = {"code": path, "vars": vars_path, "writeback": True,
                 "varsTemplate": path.rsplit("/", 1)[0] + "/" + template if "/" in path else template}
            warnings.append(f"read-only <loader> {path} without <nvram>: libvirt keeps the variables per VM; set to "
                            f"{vars_path} from the template {o['varsTemplate']} (check both)")
        else:
            o = {"image": path}  # a stateless firmware image: loaded, never written
    elif readonly:
        o = {"image": path}
    else:
        o = {"image": path, "writeback": True}  # a writable firmware image, as libvirt has it
        warnings.append(f"<loader readonly='no'> {path}: the guest writes its UEFI variables into this file "
                        "(writeback), as under libvirt; make sure it is the VM's own copy")
    if loader.get("secure") == "yes":
        o["secure"] = True
    return o


def spec_from_domain(xml_text: str, source: str = "<domain>", *, bios_as_ovmf: bool = False,
                     keep_addresses: bool = False) -> ImportedSpec:
    """The spec of one domain; an ImportError_ (never another exception) when it cannot be imported safely."""
    try:
        return _spec_from_domain(xml_text, source, bios_as_ovmf, keep_addresses)
    except ImportError_ as exc:
        text = str(exc)
        raise ImportError_(text if text.startswith(source) else f"{source}: {text}") from None
    except RecursionError:
        raise ImportError_(f"{source}: the XML is nested too deeply") from None


def _pci_function(el: ET.Element) -> int:
    """The PCI function of a device element's <address type='pci'> (0 when absent or not 0-7)."""
    addr = el.find("address")
    if addr is None or addr.get("type") != "pci":
        return 0
    function = xml_int(addr.get("function"), 0) or 0
    return function if 0 <= function <= 7 else 0


def _spec_from_domain(xml_text: str, source: str, bios_as_ovmf: bool, keep_addresses: bool) -> ImportedSpec:
    root = xml_root(xml_text, source, "domain")
    warnings: list[str] = []
    name = (root.findtext("name") or "").strip()
    if not name:
        raise ImportError_("the domain has no <name>")
    meta: dict = {}
    mel = root.find(f"metadata/{{{ACRNMGR_NS}}}vm")
    if mel is not None and mel.text:
        try:
            meta = json.loads(mel.text)
        except ValueError:
            warnings.append("the acrnmgr metadata is not valid JSON; ignored")
        if not isinstance(meta, dict):
            meta = {}
            warnings.append("the acrnmgr metadata is not a JSON object; ignored")
    ours = mel is not None  # exported by acrnmgr (its metadata may be an empty object)
    md = root.find("metadata")
    if md is not None:
        for c in md:
            if isinstance(c.tag, str) and c.tag != f"{{{ACRNMGR_NS}}}vm":
                warnings.append(f"<metadata> {c.tag}: not mapped")
    spec_name = name
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,15}", name):
        spec_name = "".join(c if _NAME_RE.fullmatch(c) else "-" for c in name)[:15].strip("-") or "vm"
        warnings.append(f"<name>{name}</name>: an acrnmgr VM name is 1-15 of [A-Za-z0-9_-] (acrn-dm's limit); "
                        f"set to {spec_name}")
    spec: dict = {}
    for key in ("vmType", "osType", "loadOrder", "uuid", "machine"):
        if meta.get(key):
            spec[key] = meta[key]
    acrn_cfg = root.find(f"{{{ACRN_NS}}}config")
    if acrn_cfg is not None and acrn_cfg.find(f"{{{ACRN_NS}}}rtvm") is not None:
        spec["vmType"] = "rtvm"

    # CPUs: acrn:cpu_affinity, else vcpupin, else the vcpu cpuset, else 0..n-1
    aff_el = acrn_cfg.find(f"{{{ACRN_NS}}}cpu_affinity") if acrn_cfg is not None else None
    vcpu = root.find("vcpu")
    vtext = (vcpu.text or "").strip() if vcpu is not None else "1"
    if not vtext.isdigit() or not 1 <= int(vtext) <= 1024:
        raise ImportError_(f"<vcpu>{vtext}</vcpu>: not a number of vCPUs")
    count = int(vtext)
    if vcpu is not None and vcpu.get("current") is not None and vcpu.get("current") != vtext:
        warnings.append(f"<vcpu current='{vcpu.get('current')}'>{count}: acrn-dm starts every vCPU; the VM gets "
                        f"{count}")
    if aff_el is not None and aff_el.get("value"):
        affinity = _cpuset(aff_el.get("value") or "", "<acrn:cpu_affinity>")
    else:
        pins = sorted((xml_int(p.get("vcpu"), 0) or 0, _cpuset(p.get("cpuset") or "", f"<vcpupin vcpu="
                                                             f"'{p.get('vcpu')}'>"))
                      for p in root.findall("cputune/vcpupin"))
        vset = _cpuset(vcpu.get("cpuset") or "", "<vcpu>") if vcpu is not None and vcpu.get("cpuset") else None
        if pins and all(len(c) == 1 for _, c in pins) and [v for v, _ in pins] == list(range(count)):
            affinity = [c[0] for _, c in pins]
        elif vset is not None and len(vset) == count:
            affinity = vset
            if pins:
                warnings.append("<vcpupin> is not one CPU per vCPU; cpu.affinity taken from <vcpu cpuset>")
        elif vset is not None and len(vset) > count:
            # the VM may run on these CPUs only: acrn-dm pins each vCPU to one of them, never to another CPU
            affinity = vset[:count]
            cpuset = vcpu.get("cpuset") if vcpu is not None else ""
            warnings.append(f"<vcpu cpuset='{cpuset}'> allows {len(vset)} CPUs for {count} vCPU(s); acrn-dm gives "
                            f"each vCPU one CPU: cpu.affinity set to the first {count}, {affinity}")
        else:
            affinity = list(range(count))
            warnings.append(f"no one-to-one vCPU pinning in the domain; cpu.affinity set to {affinity} "
                            "(acrn-dm needs the exact CPUs: check it)")
    if len(set(affinity)) != len(affinity) or not affinity:
        raise ImportError_(f"vCPU pinning {affinity}: acrn-dm gives each vCPU a CPU of its own")
    spec["cpu"] = {"affinity": affinity}
    mem_el = root.find("memory")
    if mem_el is None or not (mem_el.text or "").strip():
        raise ImportError_("the domain has no <memory>")
    try:
        mem = xml_memory_bytes(mem_el)
    except ValueError as exc:
        raise ImportError_(str(exc)) from None
    if mem < 1 << 20 or mem > 1 << 50:
        raise ImportError_(f"<memory>: {mem} bytes is not a VM's memory size")
    spec["memory"] = format_size(mem & ~0x3FF)  # whole KiB, the finest unit of a spec
    spec["boot"] = _os(root, name, meta, ours, warnings, bios_as_ovmf)
    machine = (root.find("os/type").get("machine") or "") if root.find("os/type") is not None else ""
    if machine and not ours:
        if _Q35.fullmatch(machine):
            spec["machine"] = "q35"
        elif not _I440FX.fullmatch(machine):
            warnings.append(f"<os><type machine='{machine}'>: the qemu and libvirt engines run pc (i440fx) or q35; "
                            "not mapped (pc is used)")

    devs = root.find("devices")
    found: list[tuple[int | None, int, dict]] = []  # (slot, document order, device)
    extras = meta.get("deviceExtras", {}) if isinstance(meta.get("deviceExtras"), dict) else {}
    lpc: list[dict[str, Any]] = []
    order = 0
    imported: list[ET.Element] = []

    def add(slot, device, el=None):
        nonlocal order
        alias = _alias_name(el) if el is not None else None
        if alias and alias.startswith("_acrnmgr"):
            key = "#" + alias[len("_acrnmgr"):]  # an unnamed device of acrnmgr's export, by its position
            alias = None
        else:
            key = alias
        if alias:
            device["name"] = alias
        if ours:
            # Exported by acrnmgr: the backend the spec asked for is in the metadata; the one the
            # XML shows (vhost-user, vhost) is what the compiler chose on that host.
            device.pop("backend", None)
        if key and isinstance(extras.get(key), dict):
            device.update(extras[key])
            if "deviceName" in extras[key]:
                device.pop("device", None)  # a virtio-input by name: the node the export found is not the spec
        if el is not None:
            imported.append(el)
            device["_origin"] = _origin(el, devs)
            function = _pci_function(el) if slot is not None else 0
            if function:
                device["function"] = function
        found.append((slot, order, device))
        order += 1

    imp = LibvirtIn(spec_name, spec, add, warnings, foreign=not ours, keep_addresses=keep_addresses,
                    serials=len(devs.findall("serial")) if devs is not None else 0)
    for el in list(devs) if devs is not None else []:
        tag = el.tag
        if not isinstance(tag, str) or tag == "emulator":
            continue
        if tag == "memballoon":
            if el.get("model") not in ("none", None):
                warnings.append(f"<memballoon model='{el.get('model')}'>: acrn-dm has no balloon; not mapped")
            continue
        if tag == "serial":
            before = len(lpc)
            _serial(el, lpc, warnings, not ours)
            if len(lpc) > before:
                lpc[-1]["_origin"] = _origin(el, devs)
            continue
        # Each device kind reads its own elements (acrnmgr/devices/<kind>.py, from_libvirt).
        if any(kind.from_libvirt(el, imp) for kind in _KINDS_BY_TAG.get(tag, ())):
            if tag in ("console", "channel") and el.find("target") is not None \
                    and el.find("target").get("type") == "virtio":  # type: ignore[union-attr]
                imported.append(el)
            continue
        if tag == "disk":
            target, src = el.find("target"), el.find("source")
            bus = target.get("bus") if target is not None else None
            path = (src.get("file") or src.get("dev")) if src is not None else None
            dtype = el.get("type") or "file"
            if dtype not in ("file", "block") or not path:
                warnings.append(unreachable_disk(el, dtype, target.get("dev") if target is not None else None))
            else:
                warnings.append(f"<disk type='{dtype}'> {path} on bus='{bus}': only virtio and sata disks map to "
                                "acrn-dm; skipped (attach it as bus='virtio')")
        elif tag == "controller":
            if el.get("type") not in ("pci", "usb", "ide", "sata", "virtio-serial"):
                warnings.append(f"<controller type='{el.get('type')}'>: not mapped")
        elif tag in ("graphics", "audio", "sound"):
            warnings.append(f"<{tag}>: acrn-dm has no equivalent; skipped")
        else:
            warnings.append(f"{_describe(el)}: not mapped")
    if imp.errors:
        raise ImportError_("cannot import this domain without changing what the VM touches:\n  - "
                           + "\n  - ".join(imp.errors))
    for el in imported:
        if el.tag in MAPPED:
            _unmapped(el, MAPPED[el.tag], _describe(el), warnings)
    _top_level(root, warnings, spec, ours)

    for ctrl, d in list(imp.consoles.items()):
        d["ports"].sort(key=lambda p: p["_pos"])
        name_of_console = d.pop("consolePort", None)
        for p in d["ports"]:
            del p["_pos"]
            if p.get("console") and name_of_console:
                p["name"] = name_of_console
        if not d["ports"]:
            warnings.append(f"<controller type='virtio-serial' index='{ctrl}'> has no ports: not imported")
            found[:] = [t for t in found if t[2] is not d]
    for _, _, d in found:
        if d.pop("autoMac", False):
            d.pop("mac", None)
    for d in meta.get("devices", []) if isinstance(meta.get("devices"), list) else []:
        d = dict(d)
        d.pop("index", None)
        found.append((d.pop("_slot", None), order, d))
        order += 1
    # Device order: by PCI slot and function where known (the export assigned slots in device order), then as
    # found.
    found.sort(key=lambda t: (t[0] if t[0] is not None else 1000, t[2].get("function", 0), t[1]))
    devices = [d for _, _, d in found]
    slots = [s for s, _, _ in found]
    for d, s in zip(devices, slots, strict=True):
        if s is not None:
            d["slot"] = s
    # Keep only the slots the automatic assignment would not give anyway.
    for d in devices:
        if "slot" in d and not d.get("function"):
            trial = [x if x is not d else {k: v for k, v in d.items() if k != "slot"} for x in devices]
            try:
                assigned, problems = assign_slots(requests_of(trial))
            except (KeyError, TypeError, ValueError):
                continue
            if not problems and assigned[devices.index(d)] == d["slot"]:
                del d["slot"]
    origins: dict[str, str] = {}
    for n, d in enumerate(devices):
        where = d.pop("_origin", None)
        if where:
            origins[f"spec.devices[{n}]"] = where
    if lpc or meta.get("lpc"):
        ports = sorted(lpc + list(meta.get("lpc", [])), key=lambda p: str(p.get("port")))
        for n, p in enumerate(ports):
            if isinstance(p, dict) and "_origin" in p:
                origins[f"spec.console.lpc[{n}]"] = p.pop("_origin")
        spec["console"] = {"lpc": ports}
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
    if cl is not None and not ours:
        args = [a.get("value") for a in cl.findall(f"{{{ACRN_NS}}}arg") if a.get("value") is not None]
        if args:
            spec["extraArgs"] = args
            warnings.append(f"<acrn:commandline> kept verbatim in extraArgs: {' '.join(args)}")
    metadata: dict[str, Any] = {"name": spec_name}
    if meta.get("labels"):
        metadata["labels"] = meta["labels"]
    data = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": metadata, "spec": spec}
    return ImportedSpec(spec_name, data, warnings, origins=origins)


def _origin(el: ET.Element, devs: ET.Element | None) -> str:
    """Where a device came from in the domain: `<devices>/<interface type='network'>[2]` (its tag's 1-based n)."""
    n = 1
    for other in devs if devs is not None else ():
        if other is el:
            break
        if other.tag == el.tag:
            n += 1
    return f"<devices>/{_label(el)}[{n}]"


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _serial(el: ET.Element, lpc: list[dict], warnings: list[str], foreign: bool = True) -> None:
    """An ISA serial port: an acrn-dm LPC COM port (com1-com4, the first free one when the port is not given)."""
    target = el.find("target")
    port = xml_int(target.get("port")) if target is not None else None
    used = {p["port"] for p in lpc}
    if port is None:
        port = next((n for n in range(4) if f"com{n + 1}" not in used), 4)
    com = f"com{port + 1}"
    t = el.get("type")
    if not 0 <= port <= 3 or com in used:
        warnings.append(f"<serial type='{t}'> port {port}: acrn-dm has com1-com4, each once; skipped")
        return
    source = el.find("source")
    if t not in ("stdio", "dev", "tcp", "pty"):
        warnings.append(f"<serial type='{t}'> {com}: acrn-dm's LPC ports take stdio, a host tty (dev) or a tcp port; "
                        "skipped")
        return
    _unmapped(el, MAPPED["serial"], f"<serial type='{t}'> {com}", warnings)
    if t == "stdio":
        lpc.append({"port": com, "backend": "stdio"})
    elif t == "dev" and source is not None and source.get("path"):
        lpc.append({"port": com, "backend": "tty", "path": source.get("path")})
    elif t == "tcp" and source is not None and xml_int(source.get("service")) is not None:
        service = xml_int(source.get("service")) or 0
        if not 1 <= service <= 65535:
            warnings.append(f"<serial type='tcp'> {com}: port {service} out of range; skipped")
            return
        if source.get("mode", "bind") != "bind":
            warnings.append(f"<serial type='tcp'> {com}: mode='connect' (the VM dials out) has no acrn-dm form; "
                            "skipped")
            return
        protocol = el.find("protocol")
        if protocol is not None and protocol.get("type", "raw") != "raw":
            warnings.append(f"<serial type='tcp'> {com}: protocol {protocol.get('type')}: acrn-dm's tcp port is raw "
                            "(a telnet client sees the raw bytes)")
        host = source.get("host")
        port_spec: dict[str, Any] = {"port": com, "backend": "tcp", "tcpPort": service}
        if foreign:
            warnings.append(f"<serial type='tcp'> {com} on {host or 'any address'}:{service}: acrn-dm's tcp console "
                            "takes a port only, so under the acrn engine it listens where acrn-dm binds it; the qemu "
                            "engine binds 127.0.0.1, the libvirt export tcpHost (default 127.0.0.1)")
        if host and host not in _LOOPBACK[:1]:
            port_spec["tcpHost"] = host
        lpc.append(port_spec)
    elif t == "pty":
        # acrn-dm's stdio console is what `acrnmgr console` attaches to, like virsh console on a pty;
        # a pty path is the host's to choose, never a fixed /dev/pts/N.
        lpc.append({"port": com, "backend": "stdio"})
        warnings.append(f"<serial type='pty'> {com}: acrn-dm has no pty backend; imported as stdio (the console "
                        "`acrnmgr console` attaches to)")
    else:
        warnings.append(f"<serial type='{t}'> {com}: no acrn-dm LPC backend for it; skipped")


def import_domain_xml(text: str, source: str, *, bios_as_ovmf: bool = False,
                      keep_addresses: bool = False) -> ImportResult:
    return ImportResult(source, "libvirt", [spec_from_domain(text, source, bios_as_ovmf=bios_as_ovmf,
                                                             keep_addresses=keep_addresses)])
