"""virtio-gpu: acrn-dm's modern virtio-gpu with its displays, QEMU's virtio-gpu-pci."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import (
    AcrnArgs,
    GrammarError,
    LibvirtIn,
    LibvirtOut,
    QemuArgs,
    SlotDevice,
    VirtioDevice,
    xml_alias,
    xml_pci,
    xml_sub,
)
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class Display:
    geometry: str | None = None  # WxH+X+Y
    fullscreen: bool = False
    monitor: int | None = None


@dataclass(frozen=True)
class VirtioGpu(VirtioDevice):
    KIND: ClassVar[str] = "virtio-gpu"
    ACRN_MODE: ClassVar[str] = "modern"

    displays: tuple[Display, ...] = ()

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioGpu:
        displays = tuple(Display(d.get("geometry"), bool(d.get("fullscreen")), d.get("monitor"))
                         for d in raw.get("displays", []))
        return cls(**common_fields(index, raw), displays=displays)

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        displays = dev.params["displays"]
        return {"type": cls.KIND, **({"displays": displays} if displays else {})}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        out = []
        for display in self.displays:
            if display.fullscreen:
                out.append("geometry=fullscreen" + (f":{display.monitor}" if display.monitor is not None else ""))
            elif display.geometry:
                out.append(f"geometry={display.geometry}")
        if not out:
            ctx.diags.error(self.where, "acrn-dm's virtio-gpu needs at least one display (without one it calls "
                            "strdup(NULL) or refuses the geometry)",
                            "displays: [{geometry: 1920x1080+0+0}] or [{fullscreen: true}]")
        return ",".join(out)

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        ctx.argv += ["-device", f"virtio-gpu-pci,max_outputs={max(1, len(self.displays))},{ctx.addr(slot)}"]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("video",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        model = el.find("model")
        if model is not None and model.get("type") == "virtio":
            imp.add(imp.slot_of(el), {"type": cls.KIND}, el)
        else:
            imp.warnings.append(f"<video> model {model.get('type') if model is not None else None}: only virtio "
                                "maps (to virtio-gpu); skipped")
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        if out.flavor != "qemu":
            return None
        extra, _ = self.libvirt_extra()
        video = xml_sub(out.devices, "video")
        xml_sub(video, "model", type="virtio", heads=max(1, len(self.displays)))
        if self.displays:
            extra["displays"] = self.raw["displays"]
        xml_alias(video, self.name)
        xml_pci(video, slot)
        return extra



# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    displays = []
    for tok in body.split(",") if body else []:
        match = re.fullmatch(r"geometry=(?:(\d+)x(\d+)\+(\d+)\+(\d+)|fullscreen(?::(\d+))?)", tok)
        if not match:
            raise GrammarError(f"virtio-gpu: invalid display {tok!r}: "
                               "geometry=WxH+X+Y or geometry=fullscreen[:monitor]")
        if match.group(1):
            displays.append({"geometry": f"{match.group(1)}x{match.group(2)}+{match.group(3)}+{match.group(4)}"})
        else:
            display: dict[str, Any] = {"fullscreen": True}
            if match.group(5):
                display["monitor"] = int(match.group(5))
            displays.append(display)
    if not displays:
        raise GrammarError("virtio-gpu: no display: acrn-dm needs geometry=WxH+X+Y or geometry=fullscreen[:monitor] "
                           "(without one it calls strdup(NULL))")
    return {"displays": displays}
