"""ahci: acrn-dm's SATA controller with one hard disk or CD image."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import AcrnArgs, EmulatedDevice, GrammarError, LibvirtIn, SlotDevice
from acrnmgr.model import common_fields, resolve


@dataclass(frozen=True)
class Ahci(EmulatedDevice):
    KIND: ClassVar[str] = "ahci"

    hd: str | None = None
    cd: str | None = None

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> Ahci:
        return cls(**common_fields(index, raw), hd=resolve(base_dir, raw["hd"]) if raw.get("hd") else None,
                   cd=resolve(base_dir, raw["cd"]) if raw.get("cd") else None)

    ACRN_EMULATIONS: ClassVar[tuple[str, ...]] = ("ahci", "ahci-hd", "ahci-cd")

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p, where, e = dev.params, f"-s {dev.slot},{dev.emul}", dev.emul
        d: dict[str, Any] = {"type": cls.KIND}
        for kind in ("hd", "cd"):
            paths = p.get(kind, [])
            if paths:
                d[kind] = paths[0]
            if len(paths) > 1:
                warnings.append(f"{where}: only one {kind}: per ahci controller is modelled; dropped {paths[1:]}")
        if e != "ahci":
            warnings.append(f"{where}: {e} becomes `ahci` with {'hd' if e == 'ahci-hd' else 'cd'}: "
                            "the emulation name changes, the disk does not")
        return d

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        out = [f"{k}:{ctx.path(v, (*self.where, k))}" for k, v in (("hd", self.hd), ("cd", self.cd)) if v]
        if not out:
            ctx.diags.error(self.where, "ahci needs `hd` or `cd`")
        return ",".join(out)

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("disk",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        target, src = el.find("target"), el.find("source")
        path = (src.get("file") or src.get("dev")) if src is not None else None
        if target is None or target.get("bus") != "sata" or not path:
            return False
        imp.check_disk(el, f"<disk> {target.get('dev')}", path)
        if el.find("readonly") is not None and el.get("device") != "cdrom":
            imp.errors.append(f"<disk> {target.get('dev')} {path}: a read-only SATA disk: acrn-dm's ahci hd is "
                              "writable (its cd is read-only); attach it as a virtio disk to keep it read-only")
        imp.add(imp.slot_of(el), {"type": cls.KIND, ("cd" if el.get("device") == "cdrom" else "hd"): path}, el)
        return True


# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    if emul in ("ahci-hd", "ahci-cd"):
        if not body:
            raise GrammarError(f"{emul}: needs an image path")
        return {"hd" if emul == "ahci-hd" else "cd": [body]}
    params: dict[str, Any] = {"hd": [], "cd": []}
    for tok in body.split(",") if body else []:
        kind, sep, path = tok.partition(":")
        if kind not in ("hd", "cd") or not sep or not path:
            raise GrammarError(f"ahci: {tok!r}: use hd:<path> or cd:<path>")
        params[kind].append(path)
    if not params["hd"] and not params["cd"]:
        raise GrammarError("ahci: needs at least one hd:<path> or cd:<path>")
    return params
