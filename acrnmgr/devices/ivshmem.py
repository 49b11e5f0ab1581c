"""ivshmem: shared memory between VMs: a dm:/ region acrn-dm backs, or an hv:/ region of the hypervisor's scenario."""

from __future__ import annotations

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
    SlotDevice,
    acrn_int,
    xml_memory_bytes,
)
from acrnmgr.model import JsonPath, common_fields
from acrnmgr.spec.diagnostics import format_path
from acrnmgr.spec.units import format_size, parse_size


def size_problem(size: int) -> tuple[str, str] | None:
    """(message, hint) when ``size`` bytes is no ivshmem size acrn-dm takes (a power of two from 2M to 512M)."""
    shown = format_size(size) if size else "0"
    if size % (1 << 20):
        return f"ivshmem size {shown} is not a whole number of MiB", "use a power of two from 2M to 512M"
    if size < (2 << 20) or size >= (1 << 30):
        return f"ivshmem size {shown} is out of range (at least 2M, less than 1G)", "use a power of two from 2M to 512M"
    if size & (size - 1):
        lower = 1 << (size.bit_length() - 1)
        return (f"ivshmem size {shown} is not a power of two",
                f"use {format_size(lower)} or {format_size(lower << 1)}" if lower << 1 < (1 << 30)
                else f"use {format_size(lower)}")
    return None


@dataclass(frozen=True)
class Ivshmem(EmulatedDevice):
    KIND: ClassVar[str] = "ivshmem"

    region: str = ""
    size: int = 0  # bytes
    region_id: int | None = None

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> Ivshmem:
        return cls(**common_fields(index, raw), region=raw["region"], size=parse_size(raw["size"]),
                   region_id=raw.get("regionId"))

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        super().check_spec(ctx, spec, items)
        regions: dict[str, JsonPath] = {}
        for path, dev in items:
            if "size" in dev:
                try:
                    size = parse_size(dev["size"])
                except ValueError:
                    size = None
                if size is not None:
                    problem = size_problem(size)
                    if problem:
                        ctx.error((*path, "size"), *problem)
            region = dev.get("region")
            if isinstance(region, str):
                if region in regions:
                    ctx.error((*path, "region"), f"region `{region}` is already mapped by "
                              f"{format_path(regions[region])} ({ctx.where((*regions[region], 'region'))})",
                              "map each region once")
                else:
                    regions[region] = path

    @property
    def hypervisor_region(self) -> bool:
        return self.region.startswith("hv:/")

    def choose_native(self, engine: str) -> Choice:
        if self.hypervisor_region:
            if engine != "acrn":
                return Choice(None, "", f"{self.region} is a hypervisor (hv:/) region; only the acrn engine can "
                              "share it", "use the acrn engine, or a dm:/ region")
            return Choice("hypervisor", "hv:/ regions are shared by the hypervisor (must match a scenario "
                          "IVSHMEM_REGION)")
        return super().choose_native(engine)

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p = dev.params
        return {"type": cls.KIND, "region": p["region"], "size": f"{p['sizeMb']}M",
                **({"regionId": p["regionId"]} if "regionId" in p else {})}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        out = [self.region, str(self.size >> 20)]
        if self.region_id is not None:
            out.append(str(self.region_id))
        return ",".join(out)

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("shmem",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        size = el.find("size")
        mb = xml_memory_bytes(size) >> 20 if size is not None else 2
        imp.add(imp.slot_of(el), {"type": cls.KIND, "region": f"dm:/{el.get('name')}", "size": f"{mb}M"}, el)
        return True


# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    parts = body.split(",")
    if len(parts) not in (2, 3) or not re.match(r"^(dm|hv):/[^/]+", parts[0]):
        raise GrammarError(f"ivshmem: {body!r}: use {{dm:/<name>|hv:/<name>}},<size_MB>[,<region_id>]")
    size = acrn_int(parts[1], "ivshmem size (MB)", 2, 1023)
    if size & (size - 1):
        raise GrammarError(f"ivshmem: size {size} MB is not a power of two")
    params = {"region": parts[0], "sizeMb": size}
    if len(parts) == 3:
        params["regionId"] = acrn_int(parts[2], "ivshmem region id", 0)
    return params
