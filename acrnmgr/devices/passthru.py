"""passthru: a host PCI function handed to the guest (acrn-dm's passthru, QEMU's vfio-pci)."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import (
    AcrnArgs,
    CheckContext,
    Choice,
    EmulatedDevice,
    GrammarError,
    LibvirtIn,
    LibvirtOut,
    QemuArgs,
    SlotDevice,
    acrn_int,
    parse_bdf,
    xml_alias,
    xml_int,
    xml_pci,
    xml_sub,
)
from acrnmgr.model import JsonPath, common_fields, resolve
from acrnmgr.spec.diagnostics import format_path

GPU_SLOT = 2  # where ACRN's config tools put a GPU passthrough (the guest's graphics drivers expect it there)
_FLAGS = (("keep_gsi", "keep_gsi"), ("no_reset", "no_reset"), ("d3hot_reset", "d3hot_reset"))


@dataclass(frozen=True)
class PassthruOptions:
    keep_gsi: bool = False
    no_reset: bool = False
    d3hot_reset: bool = False
    vmsix_on_msi: int | None = None
    enable_ptm: bool = False
    romfile: str | None = None
    irq: int | None = None
    dsdt: str | None = None


@dataclass(frozen=True)
class Passthru(EmulatedDevice):
    KIND: ClassVar[str] = "passthru"

    bdf: tuple[int, int, int, int] = (0, 0, 0, 0)  # (domain, bus, device, function)
    gpu: bool = False
    options: PassthruOptions = PassthruOptions()

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> Passthru:
        o = raw.get("options", {})
        options = PassthruOptions(
            keep_gsi=bool(o.get("keepGsi")), no_reset=bool(o.get("noReset")), d3hot_reset=bool(o.get("d3hotReset")),
            vmsix_on_msi=o.get("vmsixOnMsi"), enable_ptm=bool(o.get("enablePtm")),
            romfile=resolve(base_dir, o["romfile"]) if o.get("romfile") else None, irq=o.get("irq"),
            dsdt=resolve(base_dir, o["dsdt"]) if o.get("dsdt") else None)
        return cls(**common_fields(index, raw), bdf=parse_bdf(raw["bdf"]), gpu=bool(raw.get("gpu")), options=options)

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        super().check_spec(ctx, spec, items)
        gpu: JsonPath | None = None
        bdfs: dict[tuple[int, int, int, int], JsonPath] = {}
        for path, dev in items:
            if dev.get("gpu") is True:
                if gpu is not None:
                    ctx.error((*path, "gpu"), f"GPU passthrough is already given by {format_path(gpu)} "
                              f"({ctx.where(gpu)})", "a VM can have one GPU passthrough (slot 2); pass other GPUs "
                              "as plain `passthru` without `gpu`")
                else:
                    gpu = path
            bdf = dev.get("bdf")
            if isinstance(bdf, str):
                key = parse_bdf(bdf)
                if key in bdfs:
                    ctx.error((*path, "bdf"), f"device {bdf} is already passed through by {format_path(bdfs[key])} "
                                              f"({ctx.where((*bdfs[key], 'bdf'))})", "remove one of them")
                else:
                    bdfs[key] = path

    @property
    def host_bdf(self) -> str:
        """bus:dev.func as the launch script and sysfs name it ('00:1f.3')."""
        _, bus, dev, func = self.bdf
        return f"{bus:02x}:{dev:02x}.{func}"

    @property
    def sysfs_name(self) -> str:
        domain, bus, dev, func = self.bdf
        return f"{domain:04x}:{bus:02x}:{dev:02x}.{func}"

    def choose_native(self, engine: str) -> Choice:
        return Choice("passthru", f"host PCI function {self.raw.get('bdf')} is passed through")

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p = dev.params
        d: dict[str, Any] = {"type": cls.KIND, "bdf": p["bdf"]}
        if dev.slot == GPU_SLOT:
            d["gpu"] = True
        if p["options"]:
            d["options"] = dict(p["options"])
        for tok in p.get("ignored", []):
            warnings.append(f"-s {dev.slot},{dev.emul}: acrn-dm ignores the unknown option {tok!r} (with a "
                            "warning); dropped")
        return d

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        _, bus, dev, func = self.bdf
        out = [f"{bus:02x}/{dev:02x}/{func}"]
        o = self.options
        out += [flag for attr, flag in _FLAGS if getattr(o, attr)]
        if o.vmsix_on_msi is not None:
            out += ["vmsix_on_msi", str(o.vmsix_on_msi)]
        if o.enable_ptm:
            out.append("enable_ptm")
        if o.romfile:
            if not self.gpu:
                ctx.diags.warn((*self.where, "options", "romfile"), "romfile is meant for GPU passthrough")
            out.append("romfile=" + ctx.path(o.romfile, (*self.where, "options", "romfile")))
        if o.irq is not None:
            out.append(f"irq={o.irq}")
        if o.dsdt:
            out.append("dsdt=" + ctx.path(o.dsdt, (*self.where, "options", "dsdt")))
        return ",".join(out)

    def missing_on_host(self) -> str | None:
        if os.path.exists(f"/sys/bus/pci/devices/{self.sysfs_name}"):
            return None
        return f"host PCI device {self.sysfs_name} does not exist, so it cannot be passed through"

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        ctx.argv += ["-device", f"vfio-pci,host={self.sysfs_name},{ctx.addr(slot)}"]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("hostdev",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        if el.get("type") != "pci":
            imp.warnings.append(f"<hostdev type='{el.get('type')}'>: only PCI passthrough maps to acrn-dm; skipped")
            return True
        a = el.find("source/address")
        if a is None:
            imp.warnings.append("<hostdev type='pci'> without a source address: skipped")
            return True
        values = [xml_int(a.get(k)) for k in ("domain", "bus", "slot", "function")]
        domain = values[0] if a.get("domain") is not None else 0
        bus, slot, function = values[1:]
        text = ":".join(str(a.get(k)) for k in ("domain", "bus", "slot", "function"))
        if domain is None or bus is None or slot is None or function is None or not (
                0 <= bus <= 0xFF and 0 <= slot <= 0x1F and 0 <= function <= 7):
            imp.warnings.append(f"<hostdev> {text}: not a PCI address; skipped")
            return True
        bdf = f"{bus:02x}:{slot:02x}.{function}"
        if domain != 0:
            imp.warnings.append(f"<hostdev> {domain:04x}:{bdf}: acrn-dm passes through devices of PCI domain 0000 "
                                "only; skipped (importing it as 0000:" + bdf + " would hand the guest another device)")
            return True
        d: dict[str, Any] = {"type": cls.KIND, "bdf": bdf}
        rom = el.find("rom")
        imp.add(imp.slot_of(el), d, el)
        if rom is not None and rom.get("file"):
            d.setdefault("options", {})["romfile"] = rom.get("file")
        if rom is not None and rom.get("bar") == "off":
            imp.warnings.append(f"<hostdev> {bdf}: <rom bar='off'> has no acrn-dm form; the ROM BAR stays visible")
        # gpu: true (slot 2) comes only from acrnmgr's own metadata: libvirt's slot 2 says nothing about a GPU
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        extra = {k: self.raw[k] for k in ("backend", "gpu", "options") if k in self.raw}
        hd = xml_sub(out.devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        domain, bus, dev, func = self.bdf
        src = xml_sub(hd, "source")
        xml_sub(src, "address", domain=f"0x{domain:04x}", bus=f"0x{bus:02x}", slot=f"0x{dev:02x}",
                function=f"0x{func}")
        if self.options.romfile:
            xml_sub(hd, "rom", file=self.raw["options"]["romfile"])
        xml_alias(hd, self.name)
        xml_pci(hd, slot)
        return extra



# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
_BDF_RE = re.compile(r"^([0-9a-fA-F]{1,2})[/:]([0-9a-fA-F]{1,2})[/.]([0-7])\Z")


def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    tokens = body.split(",")
    match = _BDF_RE.match(tokens.pop(0))
    if not match:
        raise GrammarError(f"passthru: invalid BDF in {body!r}: use <bus>/<dev>/<func> in hex")
    bus, dev, func = (int(g, 16) for g in match.groups())
    if dev > 31:
        raise GrammarError(f"passthru: device {dev:#x} > 0x1f")
    params: dict[str, Any] = {"bdf": f"{bus:02x}:{dev:02x}.{func}", "options": {}}
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
            opts["vmsixOnMsi"] = acrn_int(tokens.pop(0), "passthru vmsix_on_msi bar", 0, 5)
        elif key == "romfile" and val:
            opts["romfile"] = val
        elif key == "irq" and val:
            opts["irq"] = acrn_int(val, "passthru irq", 0, 255)
        elif key == "dsdt" and val:
            opts["dsdt"] = val
        else:  # acrn-dm warns and goes on
            params.setdefault("ignored", []).append(tok)
    return params
