"""spec.uuid and spec.machine (what a libvirt domain's <uuid> and <type machine> become), and a disk's iothread
both ways through libvirt: each engine honours what it can and says what it cannot. A guest that sees the UUID on
q35: tests/lifecycle/test_qemu_vhost_user.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
import yaml

from acrnmgr.devices import vm_from_spec
from acrnmgr.host import HostProfile
from acrnmgr.importers.libvirt_domain import spec_from_domain
from acrnmgr.plan import make_plan
from acrnmgr.render.libvirt import export_domain
from acrnmgr.spec.validation import load_spec_text
from tests.spec.helpers import devices_text, diagnostics

ROOT = Path(__file__).resolve().parents[2]
HOST = HostProfile.from_file(ROOT / "examples/hosts/acrn-service-vm.yaml")
UUID = "3e3fce45-4f53-4fa7-bb32-11f34168b82b"


def _spec(extra: str = f"uuid: {UUID.upper()}\n  machine: q35\n", devices: str = "- {type: virtio-rnd}"):
    text = devices_text(devices).replace("  memory: 1G\n", f"  memory: 1G\n  {extra}" if extra else "  memory: 1G\n")
    return load_spec_text(text.replace("affinity: [1, 2]", "affinity: [2]"), "t1.yaml", check_paths=False)


def _resolved(spec) -> dict:
    """The spec as an export gives it back: paths absolute."""
    return {**spec.data["spec"], "boot": {"kernel": {"path": str(spec.base_dir / "bzImage")}}}


def test_qemu_engine_gives_the_uuid_and_the_chipset(tmp_path):
    argv = make_plan(vm_from_spec(_spec()), HOST, "qemu", state_dir=tmp_path).qemu.argv
    assert argv[argv.index("-machine") + 1] == "q35,accel=tcg"
    assert argv[argv.index("-uuid") + 1] == UUID  # lower case, as libvirt and QEMU print it
    plain = make_plan(vm_from_spec(_spec("")), HOST, "qemu", state_dir=tmp_path).qemu.argv
    assert plain[plain.index("-machine") + 1] == "pc,accel=tcg" and "-uuid" not in plain


def test_acrn_engine_says_what_it_cannot_give():
    plan = make_plan(vm_from_spec(_spec()), HOST, "acrn")
    assert not plan.errors
    warned = {w.json_path: w.message for w in plan.warnings}
    assert "no --uuid" in warned["spec.uuid"] and "one chipset" in warned["spec.machine"]
    assert "--uuid" not in plan.acrn.argv and "-U" not in plan.acrn.argv


@pytest.mark.parametrize("value", ["3e3fce45-4f53-4fa7-bb32", "3e3fce45-4f53-4fa7-bb32-11f34168b82b\n"])
def test_a_malformed_uuid_is_refused(value):
    text = devices_text("- {type: virtio-rnd}").replace("  memory: 1G\n", f"  memory: 1G\n  uuid: {value!r}\n")
    assert any(d.json_path == "spec.uuid" for d in diagnostics(text) if d.is_error)


def test_libvirt_export_round_trips_and_libvirt_accepts_it():
    spec = _spec()
    xml, _ = export_domain(spec, HOST, "qemu")
    root = ET.fromstring(xml)
    assert root.findtext("uuid") == UUID and root.find("os/type").get("machine") == "q35"
    assert spec_from_domain(xml).data["spec"] == _resolved(spec)
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(xml)
        try:
            assert dom.UUIDString() == UUID
            assert spec_from_domain(dom.XMLDesc()).data["spec"] == _resolved(spec)
        finally:
            dom.undefine()
        # a spec without a UUID gets libvirt's invented one only in libvirt, not back into the spec
        bare = _spec("")
        dom = conn.defineXML(export_domain(bare, HOST, "qemu")[0])
        try:
            assert "uuid" not in spec_from_domain(dom.XMLDesc()).data["spec"]
        finally:
            dom.undefine()
    finally:
        conn.close()


@pytest.mark.parametrize("machine, expected", [("pc-q35-10.0", "q35"), ("q35", "q35"), ("pc-i440fx-10.0", None),
                                               ("pc", None), ("microvm", None)])
def test_import_maps_the_machine(machine, expected):
    xml = (f"<domain type='kvm'><name>m</name><uuid>{UUID.upper()}</uuid><memory unit='MiB'>512</memory><vcpu>1</vcpu>"
           f"<os><type arch='x86_64' machine='{machine}'>hvm</type><kernel>/boot/vmlinuz</kernel></os></domain>")
    got = spec_from_domain(xml)
    assert got.data["spec"].get("machine") == expected and got.data["spec"]["uuid"] == UUID
    assert any("microvm" in w for w in got.warnings) is (machine == "microvm")


def test_a_disk_iothread_travels_both_ways():
    xml = ("<domain type='kvm'><name>io</name><memory unit='MiB'>512</memory><vcpu>1</vcpu><iothreads>2</iothreads>"
           "<os><type arch='x86_64'>hvm</type><kernel>/boot/vmlinuz</kernel></os><devices>"
           "<disk type='file' device='disk'><driver name='qemu' type='raw' iothread='2'/><source file='/srv/a.img'/>"
           "<target dev='vda' bus='virtio'/></disk></devices></domain>")
    got = spec_from_domain(xml)
    assert got.data["spec"]["devices"][0]["iothread"] is True
    text = "\n".join(got.warnings)
    assert "iothread='2'" in text and "<iothreads>" in text
    spec = load_spec_text(yaml.safe_dump(got.data), "io.yaml", check_paths=False)
    exported, _ = export_domain(spec, HOST, "qemu")
    root = ET.fromstring(exported)
    assert root.findtext("iothreads") == "1" and root.find("devices/disk/driver").get("iothread") == "1"
    again = spec_from_domain(exported)
    assert again.data == got.data and again.warnings == []
