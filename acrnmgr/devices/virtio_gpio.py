"""virtio-gpio: acrn-dm's legacy virtio-gpio over host GPIO chips (its raw acrn-dm config string)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import AcrnArgs, SlotDevice, VirtioDevice
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class VirtioGpio(VirtioDevice):
    KIND: ClassVar[str] = "virtio-gpio"

    args: str = ""

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioGpio:
        return cls(**common_fields(index, raw), args=raw["args"])

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        return {"type": cls.KIND, "args": dev.params["args"]}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        return self.args
