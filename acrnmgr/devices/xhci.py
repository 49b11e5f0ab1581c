"""xhci: acrn-dm's USB controller, with host ports passed through."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import AcrnArgs, EmulatedDevice, GrammarError, LibvirtIn, SlotDevice
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class Xhci(EmulatedDevice):
    KIND: ClassVar[str] = "xhci"

    ports: tuple[str, ...] = ()
    tablet: bool = False
    log: str | None = None
    cap: str | None = None

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> Xhci:
        return cls(**common_fields(index, raw), ports=tuple(raw.get("ports", [])), tablet=bool(raw.get("tablet")),
                   log=raw.get("log"), cap=raw.get("cap"))

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p = dev.params
        d: dict[str, Any] = {"type": cls.KIND}
        if p["ports"]:
            d["ports"] = p["ports"]
        for key in ("tablet", "log", "cap"):
            if key in p:
                d[key] = p[key]
        return d

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        out = [":".join(self.ports)] if self.ports else []
        if self.tablet:
            out.append("tablet")
        if self.log:
            out.append("log=" + self.log)
        if self.cap:
            out.append("cap=" + self.cap)
        return ",".join(out)

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("controller",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        if el.get("type") != "usb" or el.get("model") not in ("qemu-xhci", "nec-xhci"):
            return False
        imp.add(imp.slot_of(el), {"type": cls.KIND}, el)
        return True


# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    params: dict[str, Any] = {"ports": []}
    for tok in body.split(",") if body else []:
        if tok == "tablet":
            params["tablet"] = True
        elif tok.startswith("log="):
            params["log"] = tok[4:]
        elif tok.startswith("cap="):
            if tok != "cap=apl":
                raise GrammarError(f"xhci: unknown capability {tok!r} (only cap=apl)")
            params["cap"] = "apl"
        elif re.fullmatch(r"\d+-\d+(\.\d+)*(:\d+-\d+(\.\d+)*)*", tok):
            params["ports"].extend(tok.split(":"))
        else:
            raise GrammarError(f"xhci: unknown option {tok!r}")
    return params
