"""virtio-input: a host evdev node passed to the guest (acrn-dm's modern virtio-input, QEMU's
virtio-input-host-pci)."""

from __future__ import annotations

import os
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
    esc,
    xml_alias,
    xml_sub,
)
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class VirtioInput(VirtioDevice):
    KIND: ClassVar[str] = "virtio-input"
    ACRN_MODE: ClassVar[str] = "modern"

    device: str = ""
    serial: str | None = None

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioInput:
        return cls(**common_fields(index, raw), device=raw["device"], serial=raw.get("serial"))

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p = dev.params
        return {"type": cls.KIND, "device": p["device"], **({"serial": p["serial"]} if p.get("serial") else {})}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        return ctx.path(self.device, (*self.where, "device")) + (f",{self.serial}" if self.serial else "")

    def missing_on_host(self) -> str | None:
        return None if os.path.exists(self.device) else f"{self.device} does not exist on this host"

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        ctx.argv += ["-device", f"virtio-input-host-pci,evdev={esc(self.device)},addr={slot:#x}"]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("input",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        source = el.find("source")
        if el.get("type") == "evdev" and source is not None:
            imp.add(None, {"type": cls.KIND, "device": source.get("dev")}, el)
        elif el.get("type") not in ("mouse", "keyboard") or el.get("bus") not in (None, "ps2"):
            # (the PS/2 mouse and keyboard every x86 domain has: acrn-dm's LPC emulates them)
            imp.warnings.append(f"<input type='{el.get('type')}' bus='{el.get('bus')}'>: not mapped")
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        if out.flavor != "qemu":
            return None
        extra, _ = self.libvirt_extra()
        inp = xml_sub(out.devices, "input", type="evdev")
        xml_sub(inp, "source", dev=self.device)
        if self.serial:
            extra["serial"] = self.serial
        xml_alias(inp, self.name)
        return extra



# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    device, _, serial = body.partition(",")
    if not device.startswith("/"):
        raise GrammarError(f"virtio-input: {body!r}: use /dev/input/eventX[,serial]")
    return {"device": device, **({"serial": serial} if serial else {})}
