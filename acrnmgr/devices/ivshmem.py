"""ivshmem: shared memory between VMs: a dm:/ region acrn-dm backs, or an hv:/ region of the hypervisor's scenario."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import AcrnArgs, Choice, EmulatedDevice, GrammarError, acrn_int
from acrnmgr.model import common_fields
from acrnmgr.spec.units import parse_size


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

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        mb = self.size >> 20
        if self.size % (1 << 20) or mb < 2 or mb >= 1024 or mb & (mb - 1):
            ctx.diags.error((*self.where, "size"),
                            f"ivshmem size {self.raw.get('size')} must be a power of two from 2M to 512M")
        out = [self.region, str(mb)]
        if self.region_id is not None:
            out.append(str(self.region_id))
        return ",".join(out)


# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict:
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
