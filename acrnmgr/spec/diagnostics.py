"""Problems found in a spec, each pinned to file:line:col and a JSON path."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int  # 1-based; 0 when the problem has no position (e.g. unreadable file)
    col: int  # 1-based
    json_path: str  # e.g. "spec.devices[2].type"; "$" is the whole document
    message: str
    suggestion: str | None = None
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        text = f"{where}: {self.severity}: {self.json_path}: {self.message}"
        if self.suggestion:
            text += f" (hint: {self.suggestion})"
        return text

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class SpecError(Exception):
    """A spec could not be loaded or is invalid. `.diagnostics` lists every problem found."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics) or "invalid spec")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]


def format_path(path) -> str:
    """("spec", "devices", 2, "type") -> "spec.devices[2].type"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part and all(c.isalnum() or c in "_-" for c in part):
            out += f".{part}" if out else part
        else:
            out += f"[{str(part)!r}]"
    return out or "$"


def type_name(value: Any) -> str:
    """How a message names the kind of a parsed value: "an integer", "a boolean (true)"..."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
