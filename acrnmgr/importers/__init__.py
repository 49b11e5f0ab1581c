"""Import VM definitions from ACRN's own files (scenario.xml, launch_user_vm_idN.sh) and from
libvirt domain XML into acrnmgr specs.

Every importer returns an `ImportResult`: one `ImportedSpec` (a spec document plus the warnings
that say what could not be mapped) per VM found. Nothing is executed: a launch script is read
as text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class ImportError_(ValueError):
    """The input cannot be imported at all (not a format we know, malformed, no VM in it)."""


def xml_root(text: str, source: str, tag: str):
    """Parse XML whose root element must be <tag>; anything else is an ImportError_ naming `source`."""
    import xml.etree.ElementTree as ET

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

    def to_dict(self) -> dict:
        return {"source": self.source, "format": self.format, "warnings": list(self.warnings),
                "vms": [s.to_dict() for s in self.specs]}


def detect_format(path: Path, text: str) -> str:
    """scenario | launch-script | libvirt, from the content (the file name only breaks ties)."""
    head = text.lstrip()[:4096]
    if head.startswith("<") or path.suffix.lower() == ".xml":
        import re

        body = re.sub(r"<\?.*?\?>|<!--.*?-->", "", head, flags=re.S).lstrip()
        if body.startswith("<acrn-config"):
            return "scenario"
        if body.startswith("<domain"):
            return "libvirt"
        raise ImportError_(f"{path}: XML whose root is neither <acrn-config> (ACRN scenario) nor <domain> (libvirt)")
    if "dm_params" in text or "acrn-dm" in text:
        return "launch-script"
    raise ImportError_(f"{path}: not an ACRN scenario XML, a launch script (no dm_params / acrn-dm) or libvirt domain XML")


def import_file(path: str | Path, board: str | Path | None = None) -> ImportResult:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImportError_(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ImportError_(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ImportError_(f"{path}: cannot read: {exc.strerror or exc}") from None
    kind = detect_format(p, text)
    if kind == "scenario":
        from acrnmgr.importers.scenario import import_scenario

        return import_scenario(text, str(path), board=board)
    if kind == "libvirt":
        from acrnmgr.libvirt.domain import import_domain_xml

        return import_domain_xml(text, str(path))
    from acrnmgr.importers.launch_script import import_launch_script

    return import_launch_script(text, str(path))
