"""What every importer returns (ImportResult of ImportedSpecs) and raises (ImportError_)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field


def shown(text: object, limit: int = 120) -> str:
    """A value from an imported file, as a message quotes it: whitespace folded, cut to `limit` characters
    (a warning stays one readable line, whatever the file holds)."""
    folded = " ".join(str(text).split())
    return folded if len(folded) <= limit else folded[:limit - 3] + "..."


class ImportError_(ValueError):
    """The input cannot be imported at all (not a format we know, malformed, no VM in it)."""


# ACRN's scenario and board XMLs nest about 10 elements deep, libvirt's domain XML less. Deeper input is
# refused while it is read: copying or walking a tree a million elements deep overflows the C stack.
MAX_XML_DEPTH = 64
_FEED = 1 << 16


def parse_xml(data: str | bytes, source: str):
    """The root element of `data`; ImportError_ naming `source` when it is not well-formed or nests
    deeper than MAX_XML_DEPTH."""
    parser: ET.XMLPullParser = ET.XMLPullParser(events=("start", "end"))
    root: ET.Element | None = None
    depth = 0
    try:
        for start in range(0, max(len(data), 1), _FEED):
            parser.feed(data[start:start + _FEED])
            for event, element in parser.read_events():  # type: ignore[misc]  # typeshed: (event, Element)
                depth += 1 if event == "start" else -1
                if root is None and isinstance(element, ET.Element):
                    root = element
                if depth > MAX_XML_DEPTH:
                    raise ImportError_(f"{source}: elements nested more than {MAX_XML_DEPTH} deep; not XML that "
                                       "ACRN or libvirt writes")
        parser.close()
    except ET.ParseError as exc:
        raise ImportError_(f"{source}: not well-formed XML: {exc}") from None
    if root is None:
        raise ImportError_(f"{source}: not well-formed XML: no element found")
    return root


def xml_root(text: str, source: str, tag: str):
    """Parse XML whose root element must be <tag>; anything else is an ImportError_ naming `source`."""
    root = parse_xml(text, source)
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
