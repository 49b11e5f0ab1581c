"""uart: a PCI vUART bound to one of the hypervisor's vUARTs (acrn-dm's uart vuart_idx:N)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import AcrnArgs, EmulatedDevice, GrammarError, SlotDevice, acrn_int
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class Uart(EmulatedDevice):
    KIND: ClassVar[str] = "uart"

    vuart_idx: int = 0

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> Uart:
        return cls(**common_fields(index, raw), vuart_idx=raw.get("vuartIdx", 0))

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        return {"type": cls.KIND, "vuartIdx": dev.params["vuartIdx"]}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        return f"vuart_idx:{self.vuart_idx}"


# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    if not body.startswith("vuart_idx:"):
        raise GrammarError(f"uart: {body!r}: use vuart_idx:<n>")
    return {"vuartIdx": acrn_int(body[len("vuart_idx:"):], "uart vuart_idx", 0)}
