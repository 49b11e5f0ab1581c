"""A libvirt user migrating VMs: domains in the shapes `virsh dumpxml` and virt-manager give (tests/libvirt/corpus,
written for these tests) import, export and re-import, and what the VM touches survives.

The key facts of each input domain (memory, vCPUs and pinning, each disk's source/format/cache/persistence, each NIC's
type/source/MAC, the firmware and what of it is writable, host devices, serial endpoints) are compared with the
export's. The stated normalizations, each reported by the import: a disk without a cache mode gets acrn-dm's default
(writethrough); a pty serial becomes stdio (acrn-dm has no pty; `acrnmgr console` attaches to stdio). vhost-user disks
and NICs of other processes (SPDK, OVS-DPDK) stay on their sockets (backend: vhost-user)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from acrnmgr.cli import app
from acrnmgr.host import HostProfile
from acrnmgr.importers.common import ImportError_
from acrnmgr.importers.libvirt_domain import spec_from_domain
from acrnmgr.render.libvirt import ExportError, export_domain
from acrnmgr.spec.diagnostics import SpecError
from acrnmgr.spec.validation import load_spec_text

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
HOST = HostProfile.from_file(ROOT / "examples/hosts/acrn-service-vm.yaml")
runner = CliRunner()
IMPORTS = {"q35-ovmf-nvram.xml": {}, "i440fx-kernel-hostdev.xml": {}, "vhost-user.xml": {},
           "i440fx-bios.xml": {"bios_as_ovmf": True}}


def _mem(el) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    return int(el.text) * units[el.get("unit") or "KiB"]


def _cpus(text: str) -> list[int]:
    inc, exc = [], set()
    for part in text.split(","):
        neg = part.startswith("^")
        a, _, b = part.lstrip("^").partition("-")
        rng = range(int(a), int(b or a) + 1)
        (exc.update(rng) if neg else inc.extend(rng))
    return [c for c in inc if c not in exc]


def facts(xml: str) -> dict:
    """What a domain lets its VM touch, as comparable values."""
    root = ET.fromstring(xml)
    vcpu = root.find("vcpu")
    pins = [int(p.get("cpuset")) for p in sorted(root.findall("cputune/vcpupin"), key=lambda p: int(p.get("vcpu")))]
    os_el = root.find("os")
    loader, nvram = os_el.find("loader"), os_el.find("nvram")
    if loader is None and not os_el.findtext("kernel"):
        firmware = {"bios": True}
    elif os_el.findtext("kernel"):
        firmware = {"kernel": os_el.findtext("kernel"), "initrd": os_el.findtext("initrd"),
                    "cmdline": os_el.findtext("cmdline")}
    else:
        firmware = {"loader": loader.text.strip(), "loader_writable": loader.get("readonly") != "yes"
                    and loader.get("type") == "pflash", "secure": loader.get("secure") == "yes",
                    "nvram": (nvram.text or "").strip() if nvram is not None else None,
                    "template": nvram.get("template") if nvram is not None else None}
    disks, nics, hostdevs, serials = [], [], [], []
    for d in root.iter("disk"):
        drv, src = d.find("driver"), d.find("source")
        if d.get("type") == "vhostuser":  # the serving process's disk: only its socket is the domain's
            disks.append({"socket": src.get("path"), "readonly": d.find("readonly") is not None})
            continue
        disks.append({"source": src.get("file") or src.get("dev"), "format": drv.get("type") or "raw",
                      "cache": drv.get("cache") or "writethrough", "readonly": d.find("readonly") is not None,
                      "transient": d.find("transient") is not None, "encrypted": d.find(".//encryption") is not None})
    for i in root.iter("interface"):
        src = i.find("source")
        nics.append({"type": i.get("type"), "source": dict(src.attrib) if src is not None else {},
                     "mac": i.find("mac").get("address")})
    for h in root.iter("hostdev"):
        a = h.find("source/address")
        hostdevs.append(tuple(int(a.get(k), 16) for k in ("domain", "bus", "slot", "function")))
    for s in root.iter("serial"):
        src = s.find("source")
        kind = "stdio" if s.get("type") == "pty" else s.get("type")
        serials.append({"type": kind, "host": src.get("host") if src is not None else None,
                        "service": src.get("service") if src is not None else None,
                        "protocol": s.find("protocol").get("type") if s.find("protocol") is not None else None})
    pinned = pins if pins else (_cpus(vcpu.get("cpuset")) if vcpu.get("cpuset") else None)
    return {"memory": _mem(root.find("memory")), "vcpus": int(vcpu.text), "pinning": pinned,
            "firmware": firmware, "disks": disks, "nics": nics, "hostdevs": hostdevs, "serials": serials}


def _round_trip(name: str):
    text = (CORPUS / name).read_text()
    first = spec_from_domain(text, name, **IMPORTS[name])
    load_spec_text(yaml.safe_dump(first.data), f"{first.name}.yaml", check_paths=False)
    spec = load_spec_text(yaml.safe_dump(first.data), f"{first.name}.yaml", check_paths=False)
    exported, _ = export_domain(spec, HOST, "qemu")
    again = spec_from_domain(exported, "exported.xml")
    return text, first, exported, again


@pytest.mark.parametrize("name", sorted(IMPORTS))
def test_corpus_imports_exports_and_reimports_the_same_spec(name):
    _, first, _, again = _round_trip(name)
    assert again.data == first.data
    assert again.warnings == []


@pytest.mark.parametrize("name", sorted(IMPORTS))
def test_what_the_vm_touches_survives_the_export(name):
    text, first, exported, _ = _round_trip(name)
    want, got = facts(text), facts(exported)
    if name == "i440fx-bios.xml":  # --bios-as-ovmf: the firmware is ACRN's OVMF, loaded read-only
        assert got["firmware"] == {"loader": "/usr/share/acrn/bios/OVMF.fd", "loader_writable": False,
                                   "secure": False, "nvram": None, "template": None}
        want["firmware"] = got["firmware"]
    if name == "vhost-user.xml":  # the vhost-user devices of other processes stay on their sockets
        assert {"socket": "/run/spdk/vhost-blk.0", "readonly": False} in got["disks"]
        assert {"type": "vhostuser", "mac": "52:54:00:5e:00:01",
                "source": {"type": "unix", "path": "/run/openvswitch/vhu0", "mode": "server"}} in got["nics"]
    assert got == want


def test_firmware_code_stays_read_only_and_vars_per_vm():
    _, first, exported, _ = _round_trip("q35-ovmf-nvram.xml")
    loader = ET.fromstring(exported).find("os/loader")
    nvram = ET.fromstring(exported).find("os/nvram")
    assert (loader.get("readonly"), loader.get("type"), loader.get("secure")) == ("yes", "pflash", "yes")
    assert nvram.text == "/var/lib/libvirt/qemu/nvram/fedora-workstation_VARS.fd"
    assert nvram.get("template") == "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd"


def test_nvram_without_a_path_gets_a_per_vm_file_never_the_system_code():
    xml = (CORPUS / "q35-ovmf-nvram.xml").read_text().replace(
        ">/var/lib/libvirt/qemu/nvram/fedora-workstation_VARS.fd</nvram>", "/>").replace(
        "<nvram template='/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd'/>",
        "<nvram template='/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd'/>")
    spec = spec_from_domain(xml)
    ovmf = spec.data["spec"]["boot"]["ovmf"]
    assert ovmf["code"].endswith("OVMF_CODE.secboot.fd") and ovmf["vars"].startswith("/var/lib/libvirt/qemu/nvram/")
    out = ET.fromstring(export_domain(load_spec_text(yaml.safe_dump(spec.data), "x.yaml", check_paths=False),
                                      HOST, "qemu")[0])
    assert out.find("os/loader").get("readonly") == "yes"
    assert out.find("os/nvram").text != ovmf["code"]


def test_a_vars_file_acrn_dm_never_writes_is_only_a_template_for_libvirt(tmp_path):
    doc = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": {"name": "ro-vars"},
           "spec": {"cpu": {"affinity": [1]}, "memory": "1G",
                    "boot": {"ovmf": {"code": "/usr/share/OVMF/OVMF_CODE.fd", "vars": "/usr/share/OVMF/OVMF_VARS.fd"}}}}
    spec = load_spec_text(yaml.safe_dump(doc), "ro-vars.yaml", check_paths=False)
    xml, _ = export_domain(spec, HOST, "qemu", state_dir=tmp_path)
    nvram = ET.fromstring(xml).find("os/nvram")
    assert nvram.get("template") == "/usr/share/OVMF/OVMF_VARS.fd" and nvram.text == f"{tmp_path}/ro-vars_VARS.fd"
    assert spec_from_domain(xml).data["spec"]["boot"] == doc["spec"]["boot"]


def test_a_stateless_ovmf_image_is_exported_read_only():
    doc = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": {"name": "img"},
           "spec": {"cpu": {"affinity": [1]}, "memory": "1G", "boot": {"ovmf": {"image": "/usr/share/acrn/OVMF.fd"}}}}
    xml, _ = export_domain(load_spec_text(yaml.safe_dump(doc), "img.yaml", check_paths=False), HOST, "qemu")
    loader = ET.fromstring(xml).find("os/loader")
    assert (loader.get("readonly"), loader.get("type")) == ("yes", "rom")


def _domain(devices: str = "", os_extra: str = "<kernel>/boot/vmlinuz</kernel>", name: str = "t1",
            memory: str = "<memory unit='MiB'>512</memory>", vcpu: str = "<vcpu>1</vcpu>", arch: str = "x86_64") -> str:
    return (f"<domain type='kvm'><name>{name}</name>{memory}{vcpu}<os><type arch='{arch}'>hvm</type>{os_extra}</os>"
            f"<devices>{devices}</devices></domain>")


def _disk(extra: str = "", fmt: str = "raw") -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='/srv/a.img'/>"
            f"<target dev='vda' bus='virtio'/>{extra}</disk>")


@pytest.mark.parametrize("devices, expected", [
    (_disk(fmt="qcow2"), "qemu-img convert"),
    (_disk(fmt="vmdk"), "format vmdk"),
    (_disk("<transient/>"), "<transient/>"),
    (_disk("<encryption format='luks'><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/>"
           "</encryption>"), "LUKS"),
])
def test_disks_whose_contents_would_change_are_refused(devices, expected):
    with pytest.raises(ImportError_, match="without changing what the VM touches") as exc:
        spec_from_domain(_domain(devices))
    assert expected in str(exc.value)


def test_bios_domains_are_refused_with_the_way_through():
    with pytest.raises(ImportError_, match="--bios-as-ovmf"):
        spec_from_domain((CORPUS / "i440fx-bios.xml").read_text())
    seabios = _domain(os_extra="<loader type='rom'>/usr/share/seabios/bios.bin</loader>")
    with pytest.raises(ImportError_, match="SeaBIOS"):
        spec_from_domain(seabios)
    got = spec_from_domain(seabios, bios_as_ovmf=True)
    assert got.data["spec"]["boot"] == {"ovmf": {"image": "/usr/share/acrn/bios/OVMF.fd"}}
    assert any("bios-as-ovmf" in w for w in got.warnings)


def test_hostdev_keeps_its_pci_domain_and_slot_2_is_not_a_gpu():
    dev = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x{d}' bus='0xde' "
           "slot='0x1f' function='0x1'/></source><address type='pci' domain='0x0000' bus='0x00' slot='0x02' "
           "function='0x0'/></hostdev>")
    other = spec_from_domain(_domain(dev.format(d="0021")))
    assert "devices" not in other.data["spec"] and any("0021:de:1f.1" in w for w in other.warnings)
    same = spec_from_domain(_domain(dev.format(d="0000")))
    assert same.data["spec"]["devices"] == [{"type": "passthru", "bdf": "de:1f.1"}]


def test_tcp_serial_keeps_its_bind_address_and_telnet_is_reported():
    serial = ("<serial type='tcp'><source mode='bind' host='{h}' service='4555'/><protocol type='{p}'/>"
              "<target port='0'/></serial>")
    local = spec_from_domain(_domain(serial.format(h="127.0.0.1", p="raw")))
    spec = load_spec_text(yaml.safe_dump(local.data), "t1.yaml", check_paths=False)
    src = ET.fromstring(export_domain(spec, HOST, "qemu")[0]).find("devices/serial/source")
    assert src.get("host") == "127.0.0.1"
    wide = spec_from_domain(_domain(serial.format(h="0.0.0.0", p="telnet")))
    assert wide.data["spec"]["console"]["lpc"][0]["tcpHost"] == "0.0.0.0"
    assert any("telnet" in w for w in wide.warnings)


def test_pty_serial_never_becomes_a_host_tty():
    got = spec_from_domain(_domain("<serial type='pty'><source path='/dev/pts/0'/><target port='0'/></serial>"))
    assert got.data["spec"]["console"]["lpc"] == [{"port": "com1", "backend": "stdio"}]


def test_serials_without_a_port_take_the_next_free_com():
    got = spec_from_domain(_domain("<serial type='stdio'><target port='1'/></serial><serial type='stdio'/>"
                                   "<serial type='stdio'/>"))
    assert [p["port"] for p in got.data["spec"]["console"]["lpc"]] == ["com1", "com2", "com3"]


def test_unnamed_vhost_user_disk_round_trips():
    doc = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": {"name": "anon"},
           "spec": {"cpu": {"affinity": [1]}, "memory": "1G", "boot": {"kernel": {"path": "/boot/vmlinuz"}},
                    "devices": [{"type": "virtio-blk", "path": "/srv/a.img"}, {"type": "virtio-blk",
                                                                                "path": "/srv/b.img"}]}}
    xml, _ = export_domain(load_spec_text(yaml.safe_dump(doc), "anon.yaml", check_paths=False), HOST, "qemu")
    assert spec_from_domain(xml).data == doc


def test_pci_addresses_of_foreign_domains_are_reassigned():
    got = spec_from_domain((CORPUS / "q35-ovmf-nvram.xml").read_text())
    assert all("slot" not in d for d in got.data["spec"]["devices"])
    kept = spec_from_domain((CORPUS / "i440fx-kernel-hostdev.xml").read_text(), keep_addresses=True)
    assert {d["type"]: d.get("slot") for d in kept.data["spec"]["devices"]}["virtio-blk"] == 4


@pytest.mark.parametrize("xml, expected", [
    (_domain(vcpu="<vcpu cpuset='1-x'>2</vcpu>"), "cpuset"),
    (_domain(memory="<memory>1.5</memory>"), "whole number"),
    (_domain(memory="<memory unit='parsecs'>1</memory>"), "unit"),
    (_domain(arch="alpha"), "x86"),
    (_domain(vcpu="<vcpu>many</vcpu>"), "vCPUs"),
    (_domain(os_extra="<loader type='pflash' readonly='yes'>/x/OVMF_CODE.fd</loader><nvram type='network'>"
                      "<source protocol='iscsi' name='iqn.2013-07.com.example:iscsi-nopool/0'/></nvram>"), "network"),
])
def test_bad_domains_are_clear_errors(xml, expected):
    with pytest.raises(ImportError_, match=expected):
        spec_from_domain(xml)


def test_odd_but_valid_shapes_import():
    devices = ("<interface type='network'><mac/><source network='default'/><model type='virtio'/></interface>"
               "<interface type='network'><source network='default'/><model type='virtio'/></interface>"
               "<hostdev mode='subsystem' type='pci'><source/></hostdev>"
               "<controller type='virtio-serial' index='0'/>"
               "<console type='pty'><target type='virtio' port='0'/></console>"
               "<console type='pty'><target type='virtio' port='1'/></console>")
    got = spec_from_domain(_domain(devices, name="a-very-long-domain-name"))
    assert got.name == "a-very-long-dom" and any("15" in w for w in got.warnings)
    taps = [d["tap"] for d in got.data["spec"]["devices"] if d["type"] == "virtio-net"]
    assert len(set(taps)) == 2
    consoles = [d for d in got.data["spec"]["devices"] if d["type"] == "virtio-console"]
    assert len(consoles) == 2
    load_spec_text(yaml.safe_dump(got.data), "x.yaml", check_paths=False)


def test_cli_validation_errors_cite_the_xml_not_a_yaml_file(tmp_path):
    xml = tmp_path / "d.xml"
    xml.write_text(_domain("<interface type='ethernet'><mac address='01:00:5e:00:00:01'/><target dev='tap9'/>"
                           "<model type='virtio'/></interface>"))
    res = runner.invoke(app, ["import", str(xml)])
    assert res.exit_code == 1
    assert f"{xml}: <devices>/<interface type='ethernet'>[1]" in res.stderr and "t1.yaml" not in res.stderr


def test_cli_import_options(tmp_path):
    res = runner.invoke(app, ["import", str(CORPUS / "i440fx-bios.xml")])
    assert res.exit_code == 1 and "--bios-as-ovmf" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(app, ["import", str(CORPUS / "i440fx-bios.xml"), "--bios-as-ovmf", "--output", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True


# -- no traceback for any XML ----------------------------------------------------------------------------------
_SEEDS = [(CORPUS / n).read_text() for n in sorted(IMPORTS)] + [  # and libvirt's own test domains
    p.read_text() for p in sorted((ROOT / "tests/fixtures/libvirt-qemuxmlconfdata").glob("*.xml"))]


def _elements(root):
    return list(root.iter())


@st.composite
def mutated(draw):
    root = ET.fromstring(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        els = _elements(root)
        el = draw(st.sampled_from(els))
        op = draw(st.integers(0, 5))
        junk = draw(st.sampled_from(["", "x", "-1", "0x", "1.5", "99999999999", "^", "0-", "yes", "/", "a:b", "　"]))
        if op == 0 and el.attrib:
            el.set(draw(st.sampled_from(sorted(el.attrib))), junk)
        elif op == 1:
            el.text = junk
        elif op == 2 and el is not root:
            for parent in els:
                if el in list(parent):
                    parent.remove(el)
                    break
        elif op == 3:
            el.attrib.clear()
        elif op == 4:
            for child in list(el):
                el.remove(child)
        else:
            ET.SubElement(el, draw(st.sampled_from(["address", "source", "target", "mac", "boot", "model", "nvram",
                                                   "loader", "vcpupin", "alias", "driver"])),
                          {draw(st.sampled_from(["slot", "type", "port", "name", "cpuset", "address", "bus", "dev"])):
                           junk})
    return ET.tostring(root, encoding="unicode")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_no_traceback_for_any_xml(xml, bios):
    try:
        got = spec_from_domain(xml, "fuzz.xml", bios_as_ovmf=bios)
    except ImportError_:
        return
    assert isinstance(got.data, dict)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_no_traceback_for_any_text(text):
    try:
        spec_from_domain(text)
    except ImportError_:
        pass


@pytest.mark.parametrize("name", sorted(IMPORTS))
def test_libvirt_accepts_the_export_of_each_corpus_domain(name):
    import libvirt

    _, first, exported, _ = _round_trip(name)
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(exported)  # libvirt's own parser and validation
        try:
            normalized = dom.XMLDesc()
        finally:
            dom.undefine()
    finally:
        conn.close()
    assert spec_from_domain(normalized).data == first.data


LOSSES = """<domain type='kvm'>
  <name>losses</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid>
  <sysinfo type='smbios'><system><entry name='serial'>ABC</entry></system></sysinfo>
  <memory unit='GiB'>2</memory>
  <memoryBacking><hugepages/><source type='file'/></memoryBacking>
  <vcpu placement='static' current='1'>2</vcpu>
  <iothreads>2</iothreads>
  <cputune><vcpupin vcpu='0' cpuset='1'/><vcpupin vcpu='1' cpuset='2'/><emulatorpin cpuset='0'/></cputune>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/losses_VARS.fd</nvram>
    <shim>/boot/shim.efi</shim></os>
  <seclabel type='dynamic' model='selinux' relabel='yes'/>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw' cache='unsafe' io='native' iothread='1'/>
      <source file='/srv/a.img'/><target dev='vda' bus='virtio'/><serial>WD-123</serial><shareable/>
      <boot order='2'/></disk>
    <interface type='bridge'><source bridge='ovsbr0'/><virtualport type='openvswitch'/>
      <vlan><tag id='42'/></vlan><mac address='52:54:00:00:00:42'/><model type='virtio'/></interface>
    <interface type='direct'><source dev='eth0' mode='bridge'/><model type='virtio'/></interface>
    <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x03'
      slot='0x00' function='0x0'/></source><rom bar='off'/></hostdev>
    <rng model='virtio'><backend model='egd' type='tcp'><source mode='connect' host='1.2.3.4' service='1234'/>
      </backend></rng>
    <rng model='virtio'><backend model='builtin'/></rng>
    <input type='mouse' bus='virtio'/>
    <input type='keyboard' bus='virtio'/>
  </devices>
</domain>"""


def test_nothing_is_dropped_silently():
    got = spec_from_domain(LOSSES)
    text = "\n".join(got.warnings)
    for expected in ("<genid", "<sysinfo", "hugepages", "<source type='file'", "current='1'", "<iothreads",
                     "<emulatorpin>", "<shim", "selinux", "cache='unsafe'", "io='native'", "iothread='1'",
                     "<serial>", "<shareable>", "boot order 2", "<virtualport", "<vlan>", "type='direct'",
                     "bar='off'", "model='egd'", "model='builtin'", "<input type='mouse' bus='virtio'>",
                     "<input type='keyboard' bus='virtio'>"):
        assert expected in text, expected
    # carried: the UUID and the q35 chipset (the qemu and libvirt engines give both; the acrn engine warns)
    assert (got.data["spec"]["uuid"], got.data["spec"]["machine"]) == ("3e3fce45-4f53-4fa7-bb32-11f34168b82b", "q35")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.sampled_from(["qemu", "acrn"]))
def test_every_imported_spec_exports_and_reimports_equal(xml, flavor):
    try:
        got = spec_from_domain(xml, "fuzz.xml", bios_as_ovmf=True)
        spec = load_spec_text(yaml.safe_dump(got.data), "x.yaml", check_paths=False)
        exported, _ = export_domain(spec, HOST, flavor)
    except (ImportError_, SpecError, ExportError):
        return
    again = spec_from_domain(exported, "again.xml")
    # the one normalization: a relative path comes back absolute (resolved against the spec's folder)
    assert json.dumps(again.data, sort_keys=True).replace(f"{spec.base_dir}/", "") == \
        json.dumps(got.data, sort_keys=True).replace(f"{spec.base_dir}/", "")


def test_a_macvtap_stays_the_existing_interface_it_names():
    doc = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": {"name": "mv"},
           "spec": {"cpu": {"affinity": [1]}, "memory": "1G", "boot": {"kernel": {"path": "/boot/vmlinuz"}},
                    "network": {"bridge": "br0"},
                    "devices": [{"type": "virtio-net", "name": "lan", "macvtap": "macvtap3"}]}}
    spec = load_spec_text(yaml.safe_dump(doc), "mv.yaml", check_paths=False)
    iface = ET.fromstring(export_domain(spec, HOST, "acrn")[0]).find("devices/interface")
    assert iface.find("target").get("dev") == "macvtap3"
    xml, _ = export_domain(spec, HOST, "qemu")
    iface = ET.fromstring(xml).find("devices/interface")
    assert iface.get("type") == "ethernet" and iface.find("target").get("managed") == "no"
    assert spec_from_domain(xml).data == doc


def test_cli_errors_name_the_other_element_too(tmp_path):
    nic = "<interface type='bridge'><source bridge='br0'/><mac address='52:54:00:00:00:01'/><model type='virtio'/>" \
          "</interface>"
    xml = tmp_path / "dup.xml"
    xml.write_text(_domain(nic + nic, name="dup"))
    res = runner.invoke(app, ["import", str(xml)])
    assert res.exit_code == 1
    assert "used by spec.devices[0] (<devices>/<interface type='bridge'>[1])" in res.stderr
    assert "line " not in res.stderr and "dup.yaml" not in res.stderr


def test_a_disk_range_stays_a_slice_of_the_image():
    doc = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": {"name": "sl"},
           "spec": {"cpu": {"affinity": [1]}, "memory": "1G", "boot": {"kernel": {"path": "/boot/vmlinuz"}},
                    "devices": [{"type": "virtio-blk", "name": "part", "path": "/srv/disk.img", "backend": "vbs-u",
                                 "range": {"startLba": 2048, "size": 4096}}]}}
    spec = load_spec_text(yaml.safe_dump(doc), "sl.yaml", check_paths=False)
    xml, _ = export_domain(spec, HOST, "qemu")
    sl = ET.fromstring(xml).find("devices/disk/source/slices/slice")
    assert (sl.get("offset"), sl.get("size")) == (str(2048 * 512), str(4096 * 512))
    assert spec_from_domain(xml).data == doc
    with pytest.raises(ImportError_, match="512-byte"):
        spec_from_domain(xml.replace(f"offset=\"{2048 * 512}\"", "offset=\"100\""))


def test_a_sata_disk_that_is_not_raw_is_refused_too():
    disk = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/w.qcow2'/>"
            "<target dev='sda' bus='sata'/></disk>")
    with pytest.raises(ImportError_, match="format qcow2"):
        spec_from_domain(_domain(disk))


def test_a_bare_virtio_serial_controller_is_reported_not_imported():
    got = spec_from_domain(_domain("<controller type='virtio-serial' index='0'/>"))
    assert "devices" not in got.data["spec"]
    assert any("has no ports" in w for w in got.warnings)


def test_firmware_that_is_not_raw_is_refused():
    fw = ("<loader readonly='yes' secure='yes' type='pflash' format='qcow2'>/usr/share/edk2/ovmf/OVMF_CODE_4M.secboot"
          ".qcow2</loader><nvram template='/usr/share/edk2/ovmf/OVMF_VARS_4M.secboot.qcow2' format='qcow2'>"
          "/var/lib/libvirt/qemu/nvram/t1_VARS.qcow2</nvram>")
    with pytest.raises(ImportError_, match="raw firmware"):
        spec_from_domain(_domain(os_extra=fw))
    raw = fw.replace(" format='qcow2'", "").replace(".qcow2", ".fd").replace("<loader ", "<loader stateless='no' ")
    got = spec_from_domain(_domain(os_extra=raw))
    assert got.data["spec"]["boot"]["ovmf"]["secure"] is True
    assert any("stateless" in w for w in got.warnings)


def test_a_read_only_sata_disk_never_becomes_writable():
    disk = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/w.img'/>"
            "<target dev='sda' bus='sata'/><readonly/></disk>")
    with pytest.raises(ImportError_, match="read-only SATA"):
        spec_from_domain(_domain(disk))
    cd = disk.replace("device='disk'", "device='cdrom'")
    assert spec_from_domain(_domain(cd)).data["spec"]["devices"] == [{"type": "ahci", "cd": "/srv/w.img"}]


@pytest.mark.parametrize("disk, expected", [
    ("<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='bar'>"
     "<host name='example.org' port='6000'/></source><target dev='vdb' bus='virtio'/></disk>",
     "<disk type='network'> vdb <source name='bar' protocol='nbd' host=example.org:6000>: a network disk"),
    ("<disk type='network' device='disk'><source protocol='iscsi' name='iqn.1992-01.com.example/1'><host "
     "name='example.org' port='6000'/></source><target dev='sda' bus='scsi'/></disk>",
     "<disk type='network'> sda <source name='iqn.1992-01.com.example/1' protocol='iscsi' host=example.org:6000>"),
    ("<disk type='network' device='disk'><source protocol='rbd' name='pool/image'/><target dev='vdc' "
     "bus='virtio'/></disk>", "rbd map"),
    ("<disk type='nvme' device='disk'><source type='pci' managed='yes' namespace='1'><address domain='0x0000' "
     "bus='0x01' slot='0x00' function='0x0'/></source><target dev='vdd' bus='virtio'/></disk>",
     "<disk type='nvme'> vdd <source managed='yes' namespace='1' type='pci' pci=0x0000:0x01:0x00:0x0>: a host NVMe"),
    ("<disk type='volume' device='disk'><source pool='default' volume='a.img'/><target dev='vde' bus='virtio'/>"
     "</disk>", "storage-pool volume"),
])
def test_disks_acrn_dm_cannot_open_are_each_named_with_their_reason(disk, expected):
    got = spec_from_domain(_domain(_disk() + disk))
    assert [d["path"] for d in got.data["spec"]["devices"]] == ["/srv/a.img"]  # the rest imports
    skipped = [w for w in got.warnings if w.startswith("<disk type=")]
    assert len(skipped) == 1 and expected in skipped[0] and skipped[0].endswith("; skipped"), skipped
    assert "vhost-user" not in skipped[0]


def test_a_cpuset_wider_than_the_vcpus_pins_inside_it_never_outside():
    got = spec_from_domain(_domain(vcpu="<vcpu placement='static' cpuset='4-8,^5'>2</vcpu>"))
    assert got.data["spec"]["cpu"]["affinity"] == [4, 6]  # allowed CPUs only, the ^ exclusion honoured
    assert any("cpuset='4-8,^5'" in w and "[4, 6]" in w for w in got.warnings)
