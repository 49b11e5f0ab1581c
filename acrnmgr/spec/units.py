"""Sizes in specs: "<n>K|M|G" strings or integers meaning MiB."""

from __future__ import annotations

import re

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([KMGkmg])\s*\Z")


def parse_size(value: int | str) -> int:
    """Return `value` in bytes. Integers are MiB (as acrn-dm's generator writes `-m <n>M`);
    strings carry a unit: 512K, 128M, 2G. Raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative size: {value}")
        return value << 20
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2).lower()]
    raise ValueError(f"not a size (expected e.g. 512M or 2G): {value!r}")


def format_size(nbytes: int) -> str:
    """The shortest exact "<n>G|M|K" spelling of `nbytes` (falls back to K, then bytes)."""
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes and nbytes % mult == 0:
            return f"{nbytes // mult}{unit}"
    return str(nbytes)
