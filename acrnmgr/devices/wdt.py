"""wdt: acrn-dm's i6300esb watchdog (acrn-dm calls it wdt-i6300esb)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import EmulatedDevice
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class Wdt(EmulatedDevice):
    KIND: ClassVar[str] = "wdt"
    EMULATION: ClassVar[str] = "wdt-i6300esb"

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> Wdt:
        return cls(**common_fields(index, raw))
