"""passthru: a host PCI function handed to the guest (acrn-dm's passthru, QEMU's vfio-pci)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import AcrnArgs, Choice, EmulatedDevice, QemuArgs, parse_bdf
from acrnmgr.model import common_fields, resolve

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
        ctx.argv += ["-device", f"vfio-pci,host={self.sysfs_name},addr={slot:#x}"]
