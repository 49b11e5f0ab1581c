"""ahci: acrn-dm's SATA controller with one hard disk or CD image."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import AcrnArgs, EmulatedDevice
from acrnmgr.model import common_fields, resolve


@dataclass(frozen=True)
class Ahci(EmulatedDevice):
    KIND: ClassVar[str] = "ahci"

    hd: str | None = None
    cd: str | None = None

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> Ahci:
        return cls(**common_fields(index, raw), **{k: resolve(base_dir, raw[k]) for k in ("hd", "cd") if raw.get(k)})

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        out = [f"{k}:{ctx.path(v, (*self.where, k))}" for k, v in (("hd", self.hd), ("cd", self.cd)) if v]
        if not out:
            ctx.diags.error(self.where, "ahci needs `hd` or `cd`")
        return ",".join(out)
