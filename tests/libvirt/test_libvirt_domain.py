"""spec -> libvirt domain XML -> spec.

Round trip: every field of the example specs comes back equal, with one stated normalization:
relative paths come back absolute (resolved against the spec's folder; libvirt needs absolute
paths). Fields carried by domain elements: name, memory, cpu.affinity (vcpupin), boot
(kernel/initrd/cmdline, loader/nvram), LPC serials, and per device virtio-blk (file or
vhost-user), virtio-net, virtio-console ports, virtio-rnd, vhost-vsock, passthru, virtio-input,
virtio-gpu, wdt, each with its PCI slot and name (user alias). The rest (labels, osType, vmType,
settings, extraArgs, the image behind a vhost-user socket, devices libvirt has no element for)
travels in <metadata><acrnmgr:vm>."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
import yaml
from typer.testing import CliRunner

from acrnmgr.cli import app
from acrnmgr.host import HostProfile
from acrnmgr.importers.libvirt_domain import spec_from_domain
from acrnmgr.render.libvirt import ACRN_NS, export_domain
from acrnmgr.spec.validation import load_spec, load_spec_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
HOST = HostProfile.from_file(ROOT / "examples/hosts/acrn-service-vm.yaml")
runner = CliRunner()


def absolute(spec) -> dict:
    """The spec's data with relative paths resolved: the one normalization of the round trip."""
    text = json.dumps(spec.data)
    for folder in ("images/", "firmware/"):
        text = text.replace(f'"{folder}', f'"{spec.base_dir}/{folder}')
    return json.loads(text.replace('"~/', f'"{Path.home()}/'))


@pytest.fixture(scope="module")
def conn():
    c = libvirt.open("test:///default")
    yield c
    c.close()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("flavor", ["qemu", "acrn"])
def test_round_trip_is_stable(example, flavor):
    spec = load_spec(example)
    xml, _ = export_domain(spec, HOST, flavor)
    back = spec_from_domain(xml)
    assert back.data == absolute(spec)
    assert back.warnings == []
    # and the result is a valid spec again
    load_spec_text(yaml.safe_dump(back.data), "back.yaml", check_paths=False)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_libvirt_accepts_the_qemu_domain_and_its_own_xml_imports_back(conn, example):
    spec = load_spec(example)
    xml, _ = export_domain(spec, HOST, "qemu")
    dom = conn.defineXML(xml)  # libvirt's own parser and validation
    try:
        normalized = dom.XMLDesc()
    finally:
        dom.undefine()
    assert spec_from_domain(normalized).data == absolute(spec)


def test_embedded_devices_become_vhost_user_with_shared_memfd():
    spec = load_spec(ROOT / "examples/linux-qemu.yaml")
    root = ET.fromstring(export_domain(spec, HOST, "qemu", state_dir=Path("/run/acrnmgr/linux-qemu"))[0])
    disk = root.find("devices/disk")
    assert disk.get("type") == "vhostuser"
    assert disk.find("source").get("path") == "/run/acrnmgr/linux-qemu/data.vhost.sock"
    assert disk.get("model") == "virtio-non-transitional"  # mode: modern
    assert root.find("memoryBacking/source").get("type") == "memfd"
    assert root.find("memoryBacking/access").get("mode") == "shared"
    assert root.find("devices/rng").get("model") == "virtio-transitional"


def test_backends_follow_the_compiler_choice():
    spec = load_spec(ROOT / "examples/linux-vm.yaml")
    root = ET.fromstring(export_domain(spec, HOST, "qemu")[0])
    # virtio-blk with backend auto is served by the embedded device model on QEMU
    assert root.find("devices/disk").get("type") == "vhostuser"
    # ... and by acrn-dm itself (VBS-U) on ACRN
    acrn = ET.fromstring(export_domain(spec, HOST, "acrn")[0])
    disk = acrn.find("devices/disk")
    assert acrn.find("memoryBacking") is None
    assert disk.get("type") == "file" and disk.find("driver").get("cache") == "writeback"
    iface = root.find("devices/interface")
    # the spec names its bridge: libvirt puts the tap on it, as the acrn engine does
    assert iface.get("type") == "bridge" and iface.find("target").get("dev") == "tap_linux0"
    assert iface.find("source").get("bridge") == "acrn-br0"
    assert iface.find("driver").get("name") == "vhost"
    assert [a.get("slot") for a in root.iter("address") if a.get("type") == "pci"] == ["0x03", "0x04", "0x05", "0x06"]


def test_acrn_flavor_uses_the_acrn_namespace():
    spec = load_spec(ROOT / "examples/rtvm.yaml")
    root = ET.fromstring(export_domain(spec, HOST, "acrn")[0])
    assert root.get("type") == "acrn"
    cfg = root.find(f"{{{ACRN_NS}}}config")
    assert cfg.find(f"{{{ACRN_NS}}}rtvm") is not None
    assert cfg.find(f"{{{ACRN_NS}}}cpu_affinity").get("value") == "14"
    args = [a.get("value") for a in root.iter(f"{{{ACRN_NS}}}arg")]
    # what the ACRN driver does not derive from domain elements rides on the command line
    assert "--ssram" in args and "--logger_setting" in args and "--intr_monitor" in args
    assert "-m" not in args and "--rtvm" not in args
    # the bridge network on the acrn flavor
    vm = load_spec(ROOT / "examples/linux-vm.yaml")
    iface = ET.fromstring(export_domain(vm, HOST, "acrn")[0]).find("devices/interface")
    assert iface.get("type") == "bridge" and iface.find("source").get("bridge") == "acrn-br0"


FOREIGN = """<domain type='kvm'>
  <name>web01</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <memory unit='GiB'>2</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/web01.img'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/iso/debian.iso'/><target dev='sda' bus='sata'/></disk>
    <interface type='network'><source network='default'/><mac address='52:54:00:aa:bb:cc'/>
      <model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <graphics type='spice' autoport='yes'/>
    <sound model='ich9'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>"""


def test_foreign_domain_imports_and_says_what_it_could_not_map():
    imported = spec_from_domain(FOREIGN)
    spec = imported.data["spec"]
    assert spec["memory"] == "2G" and spec["cpu"]["affinity"] == [0, 1]
    assert spec["boot"] == {"ovmf": {"code": "/usr/share/OVMF/OVMF_CODE.fd",
                                     "vars": "/var/lib/libvirt/qemu/nvram/web01_VARS.fd", "writeback": True}}
    types = [d["type"] for d in spec["devices"]]
    assert types == ["virtio-blk", "ahci", "virtio-net", "virtio-rnd"]
    text = "\n".join(imported.warnings)
    for expected in ("vCPU pinning", "<graphics>", "<sound>", "serial type='pty'", "tap name"):
        assert expected in text, expected
    assert spec["uuid"] == "3e3fce45-4f53-4fa7-bb32-11f34168b82b"  # QEMU's -uuid, libvirt's <uuid>
    load_spec_text(yaml.safe_dump(imported.data), "web01.yaml", check_paths=False)


def test_cli_export_then_import(tmp_path):
    host = str(ROOT / "examples/hosts/acrn-service-vm.yaml")
    res = runner.invoke(app, ["export", str(ROOT / "examples/windows-gpu.yaml"), "--format", "libvirt",
                              "--host", host])
    assert res.exit_code == 0, res.output
    assert "ahci" in res.stderr and "metadata" in res.stderr  # said plainly
    xml = tmp_path / "win.xml"
    xml.write_text(res.stdout)
    res = runner.invoke(app, ["import", str(xml), "--output", "json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["format"] == "libvirt" and report["vms"][0]["name"] == "win-gpu"
    res = runner.invoke(app, ["export", str(ROOT / "examples/rtvm.yaml"), "--flavor", "acrn", "--host", host])
    assert res.exit_code == 0 and "acrn:commandline" in res.stdout


def test_cli_export_of_a_bad_spec_is_exit_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: acrnmgr/v1\nkind: VM\nmetadata: {name: x}\nspec: {memory: 1G}\n")
    res = runner.invoke(app, ["export", str(bad)])
    assert res.exit_code == 1 and "invalid spec" in res.stderr and "Traceback" not in res.stderr


def test_qemu_runs_as_root_without_relabelling():
    # like the acrn and qemu engines: the images are root's files; libvirt must not chown them
    root = ET.fromstring(export_domain(load_spec(ROOT / "examples/linux-vm.yaml"), HOST, "qemu")[0])
    seclabel = root.find("seclabel")
    assert (seclabel.get("type"), seclabel.get("model"), seclabel.get("relabel")) == ("static", "dac", "no")
    assert seclabel.find("label").text == "+0:+0"
    assert ET.fromstring(export_domain(load_spec(ROOT / "examples/linux-vm.yaml"), HOST, "acrn")[0]).find(
        "seclabel") is None
