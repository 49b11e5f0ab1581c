"""acrn-emulation: an acrn-dm PCI emulation the spec has no kind of its own for (virtio-heci, virtio-rpmb,
virtio-audio, virtio-ipu, virtio-hyper_dmabuf, dummy), with its config string as acrn-dm reads it. Only
the acrn engine provides these. (amd_hostbridge replaces the hostbridge on slot 0, which the planner
always writes: not a device of its own, so not here.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import AcrnArgs, EmulatedDevice, SlotDevice
from acrnmgr.model import common_fields

# acrn-dm's PCI emulation table (devicemodel/hw/pci/*.c `.class_name`) without the kinds modelled elsewhere.
EMULATIONS = ("virtio-heci", "virtio-rpmb", "virtio-audio", "virtio-ipu", "virtio-hyper_dmabuf", "dummy")


@dataclass(frozen=True)
class AcrnEmulation(EmulatedDevice):
    KIND: ClassVar[str] = "acrn-emulation"
    ACRN_EMULATIONS: ClassVar[tuple[str, ...]] = EMULATIONS

    emulation: str = ""
    args: str = ""

    @property
    def EMULATION(self) -> str:  # noqa: N802 - the name plan.acrn.emulation_of reads
        return self.emulation

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> AcrnEmulation:
        return cls(**common_fields(index, raw), emulation=raw["emulation"], args=raw.get("args", ""))

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        return {"type": cls.KIND, "emulation": dev.emul, **({"args": dev.config} if dev.config else {})}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        return self.args
