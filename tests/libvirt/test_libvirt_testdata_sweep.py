"""libvirt's own test domains (tests/fixtures/libvirt-qemuxmlconfdata, from libvirt's tests/qemuxmlconfdata) through
`acrnmgr import`, plainly and with --bios-as-ovmf (nearly all of them boot BIOS):

- never a traceback;
- a domain that imports exports (qemu flavor), re-imports to the same spec and renders the same QEMU argv, and what it
  lets the VM touch either survives the export or is named in the import's warnings (nothing dropped silently);
- a domain that does not import says why on lines that each name the XML element concerned;
- the counts are printed (pytest -s) and pinned, so a change in what maps shows up here."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from acrnmgr.devices import vm_from_spec
from acrnmgr.host import HostProfile
from acrnmgr.importers.common import ImportError_
from acrnmgr.importers.libvirt_domain import spec_from_domain
from acrnmgr.importers.output import validate
from acrnmgr.plan import make_plan
from acrnmgr.render.libvirt import export_domain
from acrnmgr.spec.validation import load_spec_text

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "libvirt-qemuxmlconfdata"
FILES = sorted(p.name for p in DATA.glob("*.xml"))
HOST = HostProfile.from_file(ROOT / "examples/hosts/acrn-service-vm.yaml")
STATE = Path("/run/acrnmgr-sweep")
# What the sweep gives today (49 domains): change these only with the reason in the commit message.
EXPECTED = {False: {"imported": 4, "refused": 45, "invalid": 0},
            True: {"imported": 40, "refused": 8, "invalid": 1}}
ELEMENT = re.compile(r"<[a-zA-Z][\w:-]*[ >/]")


def _import(name: str, bios: bool):
    return spec_from_domain((DATA / name).read_text(), name, bios_as_ovmf=bios)


def _argv(data: dict, name: str) -> list[str]:
    spec = load_spec_text(yaml.safe_dump(data), f"{name}.yaml", check_paths=False)
    return make_plan(vm_from_spec(spec), HOST, "qemu", state_dir=STATE / name).qemu.argv


def _touches(root: ET.Element) -> dict[str, set[str]]:
    """What a domain lets its VM touch, as names the warnings would quote: disk sources and sockets, NIC MACs,
    host PCI devices, serial endpoints."""
    disks = set()
    for d in root.iter("disk"):
        src = d.find("source")
        if src is not None and (src.get("file") or src.get("dev") or src.get("path")):
            disks.add(src.get("file") or src.get("dev") or src.get("path"))
        elif d.find("target") is not None:
            disks.add(d.find("target").get("dev"))
    nics = {m.get("address") for m in root.findall("devices/interface/mac") if m.get("address")}
    hostdevs = set()
    for a in root.findall("devices/hostdev/source/address"):
        hostdevs.add(":".join(f"{int(a.get(k) or '0', 16):0{w}x}" for k, w in
                              (("domain", 4), ("bus", 2), ("slot", 2))) + f".{int(a.get('function') or '0', 16)}")
    serials = {f"com{int(s.find('target').get('port') or 0) + 1}" if s.find("target") is not None else "com"
               for s in root.findall("devices/serial")}
    return {"disks": disks, "nics": nics, "hostdevs": hostdevs, "serials": serials}


def _reported(what: str, value: str, warnings: str) -> bool:
    if what == "hostdevs":  # the warning may show the short form (06:12.5) of a domain-0 address
        return value in warnings or value.removeprefix("0000:") in warnings
    return value in warnings


def _sweep(bios: bool) -> dict[str, list[str]]:
    outcome: dict[str, list[str]] = {"imported": [], "refused": [], "invalid": []}
    for name in FILES:
        try:
            got = _import(name, bios)
        except ImportError_:
            outcome["refused"].append(name)
        else:
            outcome["invalid" if validate(got, source=name) else "imported"].append(name)
    return outcome


@pytest.mark.parametrize("bios", [False, True], ids=["plain", "bios-as-ovmf"])
def test_the_counts(bios, capsys):
    outcome = _sweep(bios)  # any exception but ImportError_ is a traceback, and fails here
    with capsys.disabled():
        print(f"\nlibvirt qemuxmlconfdata sweep ({'--bios-as-ovmf' if bios else 'plain'}): {len(FILES)} domains, "
              f"{len(outcome['imported'])} import, {len(outcome['refused'])} refused with a reason, "
              f"{len(outcome['invalid'])} give a spec that does not validate (errors cite the XML)")
    assert {k: len(v) for k, v in outcome.items()} == EXPECTED[bios]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("bios", [False, True], ids=["plain", "bios-as-ovmf"])
def test_each_domain_imports_or_says_why(name, bios):
    try:
        got = _import(name, bios)
    except ImportError_ as exc:
        lines = str(exc).splitlines()
        assert lines[0].startswith(f"{name}: ")
        for line in lines[1:] or lines:
            assert ELEMENT.search(line), f"a reason that names no XML element: {line!r}"
        return
    errors = validate(got, source=name)
    for error in errors:  # as `acrnmgr import` prints them: at the element the device came from
        assert error.startswith(f"{name}: <"), error
    if errors:
        return
    source = ET.fromstring((DATA / name).read_text())
    spec = load_spec_text(yaml.safe_dump(got.data), f"{got.name}.yaml", check_paths=False)
    exported, export_warnings = export_domain(spec, HOST, "qemu", state_dir=STATE / got.name)
    again = spec_from_domain(exported, "exported.xml")
    assert again.data == got.data
    assert again.warnings == []
    assert _argv(again.data, got.name) == _argv(got.data, got.name)

    # what the VM touches: kept by the export, or named in the import's warnings, or in the spec and the export says
    # it keeps the device in its metadata only (a SATA disk: the qemu flavor has no element for acrn-dm's ahci)
    text = "\n".join(got.warnings)
    if any("kept in the acrnmgr metadata only" in w for w in export_warnings):
        text += "\n" + json.dumps(got.data)
    want, have = _touches(source), _touches(ET.fromstring(exported))
    for what in ("disks", "nics", "hostdevs"):
        assert have[what] <= want[what], (what, have[what] - want[what])  # nothing new
        for lost in want[what] - have[what]:
            assert _reported(what, lost, text), f"{what} {lost} dropped silently:\n{text}"
    for lost in want["serials"] - have["serials"]:
        assert "<serial type=" in text and lost in text, f"serial {lost} dropped silently:\n{text}"
    out = ET.fromstring(exported)
    assert (out.find("memory").get("unit"), source.find("memory").get("unit")) == ("KiB", "KiB")
    assert out.find("memory").text == source.find("memory").text
    assert out.find("vcpu").text == source.find("vcpu").text
