"""Import VM definitions from ACRN's own files (scenario.xml, launch_user_vm_idN.sh) and from
libvirt domain XML into acrnmgr specs.

Every importer returns an `ImportResult`: one `ImportedSpec` (a spec document plus the warnings
that say what could not be mapped) per VM found. Nothing is executed: a launch script is read
as text."""

from __future__ import annotations

import re
from pathlib import Path

from acrnmgr.importers.common import ImportedSpec, ImportError_, ImportResult, xml_root
from acrnmgr.importers.launch_script import import_launch_script
from acrnmgr.importers.libvirt_domain import import_domain_xml
from acrnmgr.importers.scenario import import_scenario

__all__ = ["ImportError_", "ImportResult", "ImportedSpec", "detect_format", "import_file", "xml_root"]


def detect_format(path: Path, text: str) -> str:
    """scenario | launch-script | libvirt, from the content (the file name only breaks ties)."""
    head = text.lstrip()[:4096]
    if head.startswith("<") or path.suffix.lower() == ".xml":
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
    from acrnmgr.inputs import MAX_XML_BYTES, InputError, read_input_text

    p = Path(path)
    try:
        text = read_input_text(p, limit=MAX_XML_BYTES)
    except InputError as exc:
        raise ImportError_(str(exc)) from None
    kind = detect_format(p, text)
    if kind == "scenario":
        return import_scenario(text, str(path), board=board)
    if kind == "libvirt":
        return import_domain_xml(text, str(path))
    return import_launch_script(text, str(path))
