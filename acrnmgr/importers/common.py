"""What every importer returns (ImportResult of ImportedSpecs) and raises (ImportError_)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field


class ImportError_(ValueError):
    """The input cannot be imported at all (not a format we know, malformed, no VM in it)."""


def xml_root(text: str, source: str, tag: str):
    """Parse XML whose root element must be <tag>; anything else is an ImportError_ naming `source`."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ImportError_(f"{source}: not well-formed XML: {exc}") from None
    if root.tag != tag:
        raise ImportError_(f"{source}: the root element is <{root.tag}>, not <{tag}>")
    return root


@dataclass
class ImportedSpec:
    name: str
    data: dict  # the spec document (apiVersion, kind, metadata, spec)
    warnings: list[str] = field(default_factory=list)
    source_argv: list[str] | None = None  # the acrn-dm argv this spec stands for, when there is one
    origins: dict[str, str] = field(default_factory=dict)  # JSON path prefix -> where it came from in the source

    def to_dict(self) -> dict:
        out = {"name": self.name, "spec": self.data, "warnings": list(self.warnings)}
        if self.source_argv is not None:
            out["sourceArgv"] = list(self.source_argv)
        return out


@dataclass
class ImportResult:
    source: str
    format: str  # "scenario" | "launch-script" | "libvirt"
    specs: list[ImportedSpec]
    warnings: list[str] = field(default_factory=list)  # about the file as a whole
    # VMs of the file that could not be imported (each names its VM); the others still are
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "format": self.format, "warnings": list(self.warnings),
                "errors": list(self.errors),
                "vms": [s.to_dict() for s in self.specs]}
