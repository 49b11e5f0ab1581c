"""Import VM definitions from ACRN's own files (scenario.xml, launch_user_vm_idN.sh) and from
libvirt domain XML into acrnmgr specs.

Every importer returns an `ImportResult`: one `ImportedSpec` (a spec document plus the warnings
that say what could not be mapped) per VM found. Nothing is executed: a launch script is read
as text."""

from __future__ import annotations

import os
import re
from pathlib import Path

from acrnmgr.importers.common import ImportedSpec, ImportError_, ImportResult, xml_root
from acrnmgr.importers.launch_script import import_launch_script
from acrnmgr.importers.libvirt_domain import import_domain_xml
from acrnmgr.importers.scenario import import_scenario
from acrnmgr.inputs import MAX_XML_BYTES, InputError, read_input_text

__all__ = ["ImportError_", "ImportResult", "ImportedSpec", "detect_format", "import_file", "xml_root"]


def detect_format(path: Path, text: str) -> str:
    """scenario | launch-script | libvirt, from the content (the file name only breaks ties)."""
    head = text.lstrip()[:4096]
    if not head:
        raise ImportError_(f"{path}: the file is empty")
    if head.startswith("<") or path.suffix.lower() == ".xml":
        body = re.sub(r"<\?.*?\?>|<!--.*?-->", "", head, flags=re.S).lstrip()
        if body.startswith("<!DOCTYPE"):
            # neither ACRN's XMLs nor libvirt's have one; entities are how XML bombs and file reads come in
            raise ImportError_(f"{path}: has a <!DOCTYPE> (a DTD or entities); ACRN's scenario and board XMLs and "
                               "libvirt's domain XML have none, so it is refused")
        if body.startswith("<acrn-config"):
            return "scenario"
        if body.startswith("<domain"):
            return "libvirt"
        raise ImportError_(f"{path}: XML whose root is neither <acrn-config> (ACRN scenario) nor <domain> "
                           "(libvirt)")
    if "dm_params" in text or "acrn-dm" in text:
        return "launch-script"
    raise ImportError_(f"{path}: not an ACRN scenario XML, a launch script (no dm_params / acrn-dm) "
                       "or libvirt domain XML")


def rebase_paths(result: ImportResult, base_dir: str | Path) -> None:
    """Make the relative image and firmware paths of every imported spec absolute against `base_dir`
    (where ACRN's launch script runs: acrn-dm opens `./x.img` from there), each with a warning."""
    base = Path(base_dir).absolute()

    def fix(holder: dict, key: str, spec) -> None:
        value = holder.get(key)
        if isinstance(value, str) and value and not value.startswith("/"):
            holder[key] = os.path.normpath(str(base / value))
            spec.warnings = [w for w in spec.warnings if not (value in w and "relative path" in w)]
            spec.warnings.append(f"{value}: relative path resolved against --base-dir: {holder[key]}")

    for spec in result.specs:
        body = spec.data["spec"]
        for dev in body.get("devices", []):
            if dev.get("type") == "virtio-blk":
                fix(dev, "path", spec)
        for kind, keys in (("kernel", ("path", "initrd")), ("ovmf", ("image", "code", "vars")), ("elf", ("path",))):
            boot = body.get("boot", {}).get(kind)
            if isinstance(boot, dict):
                for key in keys:
                    fix(boot, key, spec)


def import_file(path: str | Path, board: str | Path | None = None, *, base_dir: str | Path | None = None,
                bios_as_ovmf: bool = False, keep_addresses: bool = False) -> ImportResult:
    """Import one file. ``base_dir`` resolves relative image paths where ACRN's launch script runs;
    ``bios_as_ovmf`` and ``keep_addresses`` apply to libvirt domain XML (see acrnmgr.importers.libvirt_domain)."""
    p = Path(path)
    try:
        text = read_input_text(p, limit=MAX_XML_BYTES)
    except InputError as exc:
        raise ImportError_(str(exc)) from None
    kind = detect_format(p, text)
    if kind == "scenario":
        result = import_scenario(text, str(path), board=board)
    elif kind == "libvirt":
        result = import_domain_xml(text, str(path), bios_as_ovmf=bios_as_ovmf, keep_addresses=keep_addresses)
    else:
        result = import_launch_script(text, str(path))
    if base_dir is not None:
        rebase_paths(result, base_dir)
    return result
