"""vhost-vsock: always the kernel's vhost-vsock (acrn-dm and QEMU alike)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import (
    AcrnArgs,
    CheckContext,
    Choice,
    GrammarError,
    LibvirtIn,
    LibvirtOut,
    QemuArgs,
    SlotDevice,
    VirtioDevice,
    acrn_int,
    xml_alias,
    xml_int,
    xml_pci,
    xml_sub,
)
from acrnmgr.host import HostProfile
from acrnmgr.model import JsonPath, common_fields
from acrnmgr.spec.diagnostics import format_path


@dataclass(frozen=True)
class VhostVsock(VirtioDevice):
    KIND: ClassVar[str] = "vhost-vsock"
    ACRN_MODE: ClassVar[str] = "modern"
    VHOST: ClassVar[bool] = True

    cid: int = 3

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VhostVsock:
        return cls(**common_fields(index, raw), cid=raw["cid"])

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        super().check_spec(ctx, spec, items)
        for path, dev in items:
            if dev.get("backend") == "vbs-u":
                ctx.error((*path, "backend"), "vhost-vsock is served only by the kernel's vhost-vsock, not by "
                          "acrn-dm's user space", "use `backend: vhost` or `auto`")
        first = items[0][0]
        for path, _ in items[1:]:
            ctx.error(path, f"a VM has one vsock context; {format_path(first)} ({ctx.where(first)}) already gives it "
                      "a CID", "remove this device")

    def choose_acrn(self, host: HostProfile, family: str) -> Choice:
        early = self.acrn_mode_choice()
        if early is not None:
            return early
        if self.backend == "vbs-u":
            return Choice(None, "", "acrn-dm has no user-space vsock: vhost-vsock always uses kernel vhost",
                          "remove `backend` (or set it to auto or vhost)")
        if not host.vhost_vsock:
            return Choice(None, "", "vhost-vsock needs /dev/vhost-vsock, which the host profile lacks "
                          "(acrn-dm treats the failure to open it as fatal)",
                          "load the vhost_vsock kernel module on the Service VM, or remove the device")
        return Choice("vhost", "vhost-vsock always uses kernel vhost (/dev/vhost-vsock is present)")

    def choose_qemu(self, host: HostProfile) -> Choice:
        if self.backend in ("auto", "vhost"):
            if host.vhost_vsock:
                return Choice("vhost", "host has /dev/vhost-vsock: kernel vhost")
            return Choice(None, "", "vhost-vsock with kernel vhost needs /dev/vhost-vsock, which the host profile "
                          "lacks", "load the vhost kernel module")
        return super().choose_qemu(host)

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        return {"type": cls.KIND, "cid": dev.params["cid"]}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        return f"cid={self.cid}"

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        ctx.argv += ["-device", f"vhost-vsock-pci,guest-cid={self.cid},{ctx.addr(slot)}"]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("vsock",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        cid = el.find("cid")
        address = xml_int(cid.get("address")) if cid is not None and cid.get("auto") != "yes" else None
        if address is None:
            imp.warnings.append("<vsock> with an automatic CID: acrn-dm needs a fixed cid; set to 3")
            address = 3
        imp.add(imp.slot_of(el), {"type": cls.KIND, "cid": address}, el)
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        extra, _ = self.libvirt_extra()
        vsock = xml_sub(out.devices, "vsock", model="virtio")
        xml_sub(vsock, "cid", auto="no", address=self.cid)
        xml_alias(vsock, self.name)
        xml_pci(vsock, slot)
        return extra



# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    if not body.startswith("cid="):
        raise GrammarError(f"vhost-vsock: {body!r}: use cid=<N>")
    cid = acrn_int(body[4:], "vhost-vsock cid")
    if not 2 < cid < 0xFFFFFFFF:
        raise GrammarError(f"vhost-vsock: cid {cid} must be > 2 and < 4294967295")
    return {"cid": cid}
