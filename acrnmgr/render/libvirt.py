"""A Plan as libvirt domain XML (built with xml.etree; never string concatenation).

Flavors:
- qemu: a QEMU/KVM domain. vbs-u devices become QEMU's own devices, vhost -> <driver name='vhost'>,
  embedded devices -> <disk type='vhostuser'> / <interface type='vhostuser'> on the device model's
  socket (<state>/<vm>/<device>.vhost.sock), with memfd shared memory backing (vhost-user needs the
  backend to map guest RAM). QEMU runs as root without relabelling (<seclabel model='dac'> +0:+0),
  like acrn-dm and the qemu engine do: the images are the user's root-owned files, which libvirt
  must neither chown nor expect its qemu user to reach, and the device model's sockets live in
  root-only (0700) folders.
- acrn: the out-of-tree ACRN driver (acrn:///system): <acrn:config> (rtvm, cpu_affinity) and
  <acrn:commandline> for the acrn-dm options libvirt has no element for.

Each device kind writes its own element (Device.libvirt in acrnmgr/devices/<kind>.py). The PCI slot of the
plan is written as each device's <address>, device names as user aliases (`ua-<name>`), and what a domain
cannot say (labels, osType, acrn-dm settings, devices libvirt has no element for, the image behind a
vhost-user disk) goes into <metadata><acrnmgr:vm> as JSON, so spec -> XML -> spec is stable
(acrnmgr.importers.libvirt_domain reads it back)."""


from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

from acrnmgr.devices import vm_from_spec
from acrnmgr.devices.base import LibvirtOut
from acrnmgr.devices.base import xml_sub as _sub
from acrnmgr.host import HostProfile
from acrnmgr.model import KernelBoot, OvmfBoot
from acrnmgr.paths import state_root
from acrnmgr.plan import Plan, make_plan
from acrnmgr.plan.slots import multifunction_slots
from acrnmgr.render.acrndm import render_acrndm
from acrnmgr.render.script import dm_lines
from acrnmgr.spec.loader import Spec

ACRN_NS = "http://libvirt.org/schemas/domain/acrn/1.0"
ACRNMGR_NS = "https://acrnmgr.dev/schemas/libvirt/1.0"
ET.register_namespace("acrn", ACRN_NS)
ET.register_namespace("acrnmgr", ACRNMGR_NS)

LPC_INDEX = {"com1": 0, "com2": 1, "com3": 2, "com4": 3}


class ExportError(ValueError):
    pass


def export_domain(spec: Spec, host: HostProfile | None = None, flavor: str = "qemu",
                  state_dir: Path | None = None) -> tuple[str, list[str]]:
    """Plan a loaded spec for the flavor's engine (acrn: acrn-dm, qemu: QEMU) and render it as a domain."""
    if flavor not in ("qemu", "acrn"):
        raise ExportError(f"unknown flavor {flavor!r} (qemu or acrn)")
    host = host or HostProfile.detect()
    plan = make_plan(vm_from_spec(spec), host, "acrn" if flavor == "acrn" else "qemu",
                     state_dir=state_dir or (state_root() / spec.name))
    return render_domain(plan, host)


def render_domain(plan: Plan, host: HostProfile) -> tuple[str, list[str]]:
    """(domain XML text, warnings) of a plan: the acrn flavor for an acrn plan, the qemu flavor otherwise."""
    flavor = "acrn" if plan.engine == "acrn" else "qemu"
    vm = plan.vm
    s = vm.data["spec"]
    devices = s.get("devices", [])
    state_dir = plan.qemu.state_dir if plan.qemu else state_root() / vm.name
    if any(p.slot is None for p in plan.devices):
        raise ExportError("; ".join(e.message for e in plan.errors if e.json_path.endswith((".slot", ".gpu"))))
    if flavor == "acrn" and any(p.backend == "vhost-user" for p in plan.devices):
        # the ACRN driver runs acrn-dm, which has no vhost-user frontend: the domain would lose the device
        raise ExportError("; ".join(f"{e.json_path}: {e.message}" for e in plan.errors if "vhost-user" in e.message))

    root = ET.Element("domain", {"type": "acrn" if flavor == "acrn" else ("kvm" if host.kvm else "qemu")})
    _sub(root, "name", vm.name)
    if vm.uuid:
        _sub(root, "uuid", vm.uuid)
    meta_dev: dict[str, dict] = {}
    unmapped: list[dict] = []
    meta = {k: v for k, v in (("labels", vm.data["metadata"].get("labels")), ("osType", s.get("osType")),
                              ("vmType", s.get("vmType")), ("loadOrder", s.get("loadOrder")),
                              ("settings", s.get("settings")), ("extraArgs", s.get("extraArgs")),
                              ("network", s.get("network")), ("uuid", s.get("uuid")),
                              ("machine", s.get("machine"))) if v}
    metadata = _sub(root, "metadata")
    _sub(root, "memory", str(vm.memory >> 10), unit="KiB")
    _sub(root, "vcpu", str(len(vm.affinity)), placement="static", cpuset=",".join(map(str, vm.affinity)))
    cputune = _sub(root, "cputune")
    for n, cpu in enumerate(vm.affinity):
        _sub(cputune, "vcpupin", vcpu=n, cpuset=cpu)

    os_el = _sub(root, "os")
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devs = _sub(root, "devices")
    out = LibvirtOut(flavor, devs, vm.bridge, state_dir, bridge_given=bool((s.get("network") or {}).get("bridge")))
    type_el = _sub(os_el, "type", "hvm", arch="x86_64")
    machine = vm.machine
    boot = vm.boot
    if isinstance(boot, KernelBoot):
        _sub(os_el, "kernel", boot.path)
        if boot.initrd:
            _sub(os_el, "initrd", boot.initrd)
        if boot.cmdline:
            _sub(os_el, "cmdline", boot.cmdline)
    elif isinstance(boot, OvmfBoot):
        # What the VM may write stays exactly what acrn-dm lets it write: acrn-dm loads the firmware into
        # guest memory and writes back only with `writeback` (into the image, or into vars).
        secure = "yes" if boot.secure else None
        if boot.image and boot.writeback:  # the image is the VM's own, and written
            _sub(os_el, "loader", boot.image, readonly="no", type="pflash", secure=secure)
        elif boot.image:  # loaded, never written: QEMU's -bios, a read-only ROM
            _sub(os_el, "loader", boot.image, readonly="yes", type="rom", secure=secure)
            if boot.secure:
                out.warnings.append("boot.ovmf: a Secure Boot image loaded as a ROM: libvirt's QEMU driver enforces "
                                    "Secure Boot (SMM) only on pflash; give code + vars to keep it enforced")
        else:
            _sub(os_el, "loader", boot.code, readonly="yes", type="pflash", secure=secure)
            if boot.writeback:
                _sub(os_el, "nvram", boot.vars, template=boot.vars_template)
            else:
                # acrn-dm reads vars and never writes it: under libvirt the VM writes a copy of its own,
                # made from it, so the spec's file (maybe the distribution's template) is never written
                _sub(os_el, "nvram", str(state_dir / f"{vm.name}_VARS.fd"), template=boot.vars)
                meta["ovmf"] = {"code": boot.code, "vars": boot.vars,
                                **({"varsTemplate": boot.vars_template} if boot.vars_template else {}),
                                **({"secure": True} if boot.secure else {})}
        if boot.secure:
            _sub(features, "smm", state="on")
            machine = "q35"  # libvirt: Secure Boot needs SMM, which needs q35
    else:
        _sub(os_el, "kernel", boot.path)
        meta["elf"] = True
        if flavor == "qemu":
            out.warnings.append("boot.elf: exported as a direct kernel boot; QEMU loads multiboot/PVH ELF images only")

    if flavor == "qemu":
        type_el.set("machine", machine)
    if flavor == "qemu" and host.qemu:
        _sub(devs, "emulator", host.qemu)
    if (s.get("console") or {}).get("ready"):  # acrnmgr's own readiness check: no libvirt element
        meta["consoleReady"] = s["console"]["ready"]
    for port, raw_port in zip(vm.lpc, (s.get("console") or {}).get("lpc", []), strict=True):
        if port.port == "com5":
            out.warnings.append("console.lpc com5 (the S5 UART) has no libvirt element; kept in the acrnmgr metadata")
            meta.setdefault("lpc", []).append(raw_port)
            continue
        serial = _sub(devs, "serial", type={"stdio": "stdio", "tty": "dev", "tcp": "tcp"}[port.backend])
        if port.backend == "tty":
            _sub(serial, "source", path=raw_port["path"])
        elif port.backend == "tcp":  # on the address the qemu engine binds it to, unless the spec says
            _sub(serial, "source", mode="bind", host=port.tcp_host or "127.0.0.1", service=port.tcp_port)
            _sub(serial, "protocol", type="raw")
        _sub(serial, "target", port=LPC_INDEX[port.port])

    multi = multifunction_slots([p.slot for p in plan.devices], [p.device.function for p in plan.devices])
    for i, (d, p) in enumerate(zip(devices, plan.devices, strict=True)):
        before = len(devs)
        extra = p.device.libvirt(out, p.slot, p.backend)
        if p.slot is not None:
            _set_function(list(devs)[before:], p.slot, p.device.function, p.slot in multi)
        if extra is not None and not d.get("name") and len(devs) > before:
            # an unnamed device: a reserved user alias carries its position, for its acrnmgr-only fields
            first = devs[before]
            if first.find("alias") is None:
                _sub(first, "alias", name=f"ua-_acrnmgr{i}")
        if extra is None:
            kept = {"index": i, "_slot": p.slot, **d}
            for key in ("hd", "cd"):  # ahci images: absolute like every other path in the domain
                if key in d:
                    kept[key] = getattr(p.device, key)
            unmapped.append(kept)
            continue
        name = d.get("name")
        if extra:
            meta_dev[name or f"#{i}"] = extra

    if out.iothreads:
        iothreads = ET.Element("iothreads")
        iothreads.text = str(out.iothreads)
        root.insert([child.tag for child in root].index("vcpu") + 1, iothreads)
    warnings = out.warnings
    for u in unmapped:
        if flavor == "qemu":
            warnings.append(f"devices[{u['index']}] ({u['type']}) has no QEMU domain element; kept in the acrnmgr "
                            "metadata only (libvirt will not create it)")
    if unmapped:
        meta["devices"] = unmapped
    if meta_dev:
        meta["deviceExtras"] = meta_dev

    if flavor == "acrn":
        if vm.settings.hostbridge != "intel":
            out.warnings.append(f"settings.hostbridge: {vm.settings.hostbridge}: the ACRN libvirt driver writes its "
                                "own slot-0 hostbridge; kept in the acrnmgr metadata only")
        compiled = render_acrndm(plan)
        cfg = _sub(root, f"{{{ACRN_NS}}}config")
        if vm.rtvm:
            _sub(cfg, f"{{{ACRN_NS}}}rtvm")
        _sub(cfg, f"{{{ACRN_NS}}}cpu_affinity", value=",".join(map(str, vm.affinity)))
        cmdline = _acrn_commandline(compiled.argv, {u["index"] for u in unmapped}, compiled.devices)
        if cmdline:
            cl = _sub(root, f"{{{ACRN_NS}}}commandline")
            for arg in cmdline:
                _sub(cl, f"{{{ACRN_NS}}}arg", value=arg)
    else:
        if out.needs_shared_memory:
            mb = _sub(root, "memoryBacking")
            _sub(mb, "source", type="memfd")
            _sub(mb, "access", mode="shared")
        seclabel = _sub(root, "seclabel", type="static", model="dac", relabel="no")
        _sub(seclabel, "label", "+0:+0")
    if flavor == "qemu" and vm.rtvm:
        warnings.append("vmType rtvm has no meaning under QEMU (no LAPIC passthrough); kept in the acrnmgr metadata")

    vm_meta = _sub(metadata, f"{{{ACRNMGR_NS}}}vm", hash=vm.hash)
    vm_meta.text = json.dumps(meta, sort_keys=True)
    # libvirt keeps <metadata> children in document order; put it right after <name>.
    root.remove(metadata)
    root.insert(1, metadata)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n", warnings


def _set_function(elements: list[ET.Element], slot: int, function: int, multifunction: bool) -> None:
    """The PCI function of a device's elements (device kinds write function 0); function 0 of a slot with more
    functions says multifunction='on', as libvirt (and QEMU) want."""
    for el in elements:
        for addr in el.iter("address"):
            if addr.get("type") == "pci" and addr.get("slot") == f"0x{slot:02x}":
                addr.set("function", f"0x{function:x}")
                if multifunction and function == 0:
                    addr.set("multifunction", "on")


# acrn-dm options the ACRN libvirt driver derives from the domain itself.
_DRIVER_OWNED = {"-m", "--cpu_affinity", "--rtvm", "--virtio_poll", "-k", "-r", "-B", "--ovmf", "-E", "-l"}


def _acrn_commandline(argv: list[str], unmapped_idx: set[int], plans) -> list[str]:
    """acrn-dm options and -s slots the ACRN driver does not generate from domain elements."""
    keep: list[str] = []
    unmapped_slots = {f"{p.slot}:{p.function},{p.emulation}" for p in plans
                      if p.index in unmapped_idx and p.slot is not None}
    for line in dm_lines(argv[1:-1]):
        words = shlex.split(line)
        if words[0] in ("-s", "--pci_slot"):
            if any(words[1].startswith(u) for u in unmapped_slots):
                keep += words
            continue
        if words[0] in _DRIVER_OWNED:
            continue
        keep += words
    return keep


# ---------------------------------------------------------------------------------------------
# import
