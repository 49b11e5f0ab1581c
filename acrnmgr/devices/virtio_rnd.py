"""virtio-rnd: acrn-dm's VBS-U entropy device (legacy), QEMU's virtio-rng-pci, or the embedded device model."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import (
    AcrnArgs,
    Choice,
    GrammarError,
    LibvirtIn,
    LibvirtOut,
    QemuArgs,
    SlotDevice,
    VirtioDevice,
    qemu_mode,
    xml_alias,
    xml_pci,
    xml_sub,
)
from acrnmgr.host import HostProfile
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class VirtioRnd(VirtioDevice):
    KIND: ClassVar[str] = "virtio-rnd"
    EMBEDDED: ClassVar[bool] = True
    QEMU_VHOST_USER: ClassVar[bool] = True

    kernel: bool = False  # acrn-dm's kernel=on (VBS-K)

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioRnd:
        return cls(**common_fields(index, raw), kernel=bool(raw.get("kernel")))

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        return {"type": cls.KIND, **({"kernel": True} if dev.params.get("kernel") else {})}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        return "kernel=on" if self.kernel else ""

    def choose_acrn(self, host: HostProfile, family: str) -> Choice:
        if self.kernel and self.acrn_mode_choice() is None:
            return Choice("vbs-k", "kernel: true: acrn-dm's legacy in-kernel virtio-rnd (VBS-K, /dev/vbs_rng)")
        if self.backend == "auto" and self.acrn_mode_choice() is None:
            return Choice("vbs-u", "acrn-dm's user-space virtio-rnd (VBS-U; VBS-K is legacy)")
        return super().choose_acrn(host, family)

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        nid, addr = ctx.node(slot), ctx.addr(slot)
        if backend == "embedded":
            ctx.vhost_user(slot, ctx.helper(self, "rng", []), "vhost-user-rng-pci")
        else:
            ctx.argv += ["-object", f"rng-random,id={nid},filename=/dev/urandom",
                         "-device", f"virtio-rng-pci,rng={nid},{addr}{qemu_mode(self)}"]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("rng",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        d: dict[str, Any] = {"type": cls.KIND}
        if imp.mode_of(el):
            d["mode"] = imp.mode_of(el)
        backend = el.find("backend")
        model = backend.get("model") if backend is not None else None
        if model not in (None, "random"):
            src = backend.find("source") if backend is not None else None
            where = f" at {src.get('host')}:{src.get('service')}" if src is not None and src.get("host") else ""
            imp.warnings.append(f"<rng model='{el.get('model')}'> backend model='{model}'{where}: imported as a "
                                "virtio-rnd that reads the host's /dev/urandom (the only entropy source acrn-dm's "
                                "and acrnmgr's virtio-rnd have)")
        imp.add(imp.slot_of(el), d, el)
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        if out.flavor == "acrn":
            return None
        extra, model = self.libvirt_extra()
        rng = xml_sub(out.devices, "rng", model=model)
        xml_sub(rng, "backend", "/dev/urandom", model="random")
        xml_alias(rng, self.name)
        xml_pci(rng, slot)
        return extra



# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    if body not in ("", "kernel=on"):
        raise GrammarError(f"virtio-rnd: unknown config {body!r}")
    return {"kernel": body == "kernel=on"}
