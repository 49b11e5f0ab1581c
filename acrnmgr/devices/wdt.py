"""wdt: acrn-dm's i6300esb watchdog (acrn-dm calls it wdt-i6300esb)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import EmulatedDevice, LibvirtIn, LibvirtOut, SlotDevice, xml_alias, xml_pci, xml_sub
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class Wdt(EmulatedDevice):
    KIND: ClassVar[str] = "wdt"
    EMULATION: ClassVar[str] = "wdt-i6300esb"

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> Wdt:
        return cls(**common_fields(index, raw))

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        return {"type": cls.KIND}

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("watchdog",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        if el.get("model") == "i6300esb":
            imp.add(imp.slot_of(el), {"type": cls.KIND}, el)
        else:
            imp.warnings.append(f"<watchdog model='{el.get('model')}'>: only i6300esb maps; skipped")
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        if out.flavor != "qemu":
            return None
        wd = xml_sub(out.devices, "watchdog", model="i6300esb", action="reset")
        xml_alias(wd, self.name)
        xml_pci(wd, slot)
        return {k: self.raw[k] for k in ("backend",) if k in self.raw}
