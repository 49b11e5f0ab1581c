"""Locate the top-level schemas/ and templates/ folders, in a checkout or an install."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path


@cache
def data_dir(name: str) -> Path:
    """Return the folder `name` (schemas or templates).

    In an editable checkout it sits beside the package; a wheel install puts it under
    <prefix>/share/acrnmgr/ (pyproject's data-files)."""
    candidates = [
        Path(__file__).resolve().parent.parent / name,
        Path(sys.prefix) / "share" / "acrnmgr" / name,
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"acrnmgr data folder {name!r} not found in {', '.join(map(str, candidates))}")
