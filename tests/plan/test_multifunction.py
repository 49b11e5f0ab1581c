"""Multi-function PCI slots (acrn-dm's `-s <slot>:<func>`): the spec places devices on functions of one
slot, the allocator honours it, and every renderer and importer keeps it (acrn-dm argv, QEMU, libvirt)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET

import pytest
import yaml

from acrnmgr.devices import vm_from_spec
from acrnmgr.host import HostProfile
from acrnmgr.importers import import_file
from acrnmgr.importers.dm_argv import normalized_argv, spec_from_argv
from acrnmgr.importers.libvirt_domain import spec_from_domain
from acrnmgr.lifecycle.qemu_argv import compile_qemu
from acrnmgr.plan.slots import SlotRequest, assign_slots
from acrnmgr.render.acrndm import compile_spec
from acrnmgr.render.grammar import parse_argv
from acrnmgr.render.libvirt import export_domain
from acrnmgr.spec.loader import parse_document
from acrnmgr.spec.validation import load_spec_text, validate_document

HOST = HostProfile(is_service_vm=True, hsm_device="/dev/acrn_hsm", acrn_dm="/usr/bin/acrn-dm", acrn_dm_version="3.x",
                   vhost_net=True, net_tun=True, cpu_count=4, lapic_ids=[0, 2, 4, 6], qemu="qemu-system-x86_64")


def spec_text(devices: str, name: str = "mf") -> str:
    return textwrap.dedent(f"""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {{name: {name}}}
        spec:
          cpu: {{affinity: [2]}}
          memory: 256M
          boot: {{kernel: {{path: /k}}}}
          devices:
        """) + textwrap.indent(textwrap.dedent(devices), "    ")


def load(devices: str, **kw):
    return load_spec_text(spec_text(devices), "mf.yaml", check_paths=False, base_dir="/vm", **kw)


DEVICES = """\
    - {type: virtio-rnd, slot: 5}
    - {type: virtio-net, tap: tap_mf0, slot: 5, function: 1}
    - {type: virtio-blk, path: /x.img}
    - {type: virtio-console, ports: [{kind: pty, name: p0}], slot: 5, function: 3}
    """


def test_allocator_places_functions_and_skips_their_slot():
    slots, problems = assign_slots([SlotRequest(3), SlotRequest(3, function=2), SlotRequest(None),
                                    SlotRequest(5, function=0)])
    assert slots == [3, 3, 4, 5] and problems == []


@pytest.mark.parametrize("requests, field, text, severity", [
    ([SlotRequest(None, function=1)], "function", "function 1 needs an explicit `slot`", "error"),
    ([SlotRequest(4), SlotRequest(4, function=0)], "slot", "PCI slot 4 is already taken by device 0", "error"),
    ([SlotRequest(4), SlotRequest(4, function=2), SlotRequest(4, function=2)], "function",
     "PCI slot 4:2 is already taken by device 1", "error"),
    ([SlotRequest(1, function=2)], "slot", "slot 1 is reserved for the LPC bridge", "error"),
    ([SlotRequest(31, function=1)], "slot", "slot 31 is reserved for igd-lpc", "error"),
    ([SlotRequest(2, gpu=True, function=1)], "function", "GPU passthrough sits on function 0 of slot 2", "error"),
    ([SlotRequest(6, function=1)], "function", "slot 6 has no device at function 0", "warning"),
])
def test_allocator_refuses_what_acrn_dm_or_the_guest_cannot_use(requests, field, text, severity):
    _slots, problems = assign_slots(requests)
    assert [(p.field, p.severity) for p in problems if text in p.message] == [(field, severity)], problems


def test_spec_checks_say_the_same_at_the_spec_line():
    doc = parse_document(spec_text("""\
        - {type: virtio-rnd, slot: 6, function: 1}
        - {type: virtio-rnd, slot: 7, function: 2}
        - {type: virtio-rnd, slot: 7, function: 2}
        - {type: virtio-rnd, function: 3}
        """), "mf.yaml")
    found = {(d.json_path, d.severity, d.message.split(",")[0]) for d in validate_document(doc, check_paths=False)}
    assert ("spec.devices[0].function", "warning", "slot 6 has no device at function 0") in found
    assert any(p == "spec.devices[2].function" and s == "error" and "slot 7:2 is already used" in m
               for p, s, m in found), found
    assert ("spec.devices[3].function", "error", "function 3 needs an explicit `slot`") in found


def test_acrn_dm_argv_puts_each_device_on_its_function_and_imports_back():
    compiled = compile_spec(load(DEVICES), HOST)
    assert compiled.ok, compiled.errors
    slots = [a for i, a in enumerate(compiled.argv) if compiled.argv[i - 1] == "-s"]
    assert slots[2:] == ["3:0,virtio-blk,/x.img", "5:0,virtio-rnd", "5:1,virtio-net,tap=tap_mf0,vhost",
                         "5:3,virtio-console,pty:p0"]
    cmd = parse_argv(compiled.argv)  # acrn-dm's own grammar takes it
    assert [(s.slot, s.func) for s in cmd.slots if s.slot == 5] == [(5, 0), (5, 1), (5, 3)]
    imported = spec_from_argv(compiled.argv)
    assert not [w for w in imported.warnings if "extraArgs" in w]
    back = compile_spec(load_spec_text(yaml.safe_dump(imported.data), "b.yaml", check_paths=False, base_dir="/vm"),
                        HOST)
    assert normalized_argv(back.argv) == normalized_argv(compiled.argv)


def test_the_virtio_net_mac_is_derived_from_its_function():
    from acrnmgr.devices.virtio_net import VirtioNet, acrn_mac
    vm = vm_from_spec(load(DEVICES))
    (nic,) = vm.devices_of(VirtioNet)
    assert nic.qemu_mac(vm.name, 5) == acrn_mac(5, 1, None) != acrn_mac(5, 0, None)


def test_a_launch_script_with_functions_imports(tmp_path):
    script = tmp_path / "launch_user_vm_id1.sh"
    script.write_text("#!/bin/bash\ndm_params=(\n    -m 256M --cpu_affinity 2 -k /k -s 0:0,hostbridge -s 1:0,lpc\n"
                      "    -s 3:0,virtio-rnd -s 3:4,virtio-blk,/d.img -s 2:1:0,virtio-rnd\n    vm9\n)\n"
                      'acrn-dm "${dm_params[@]}"\n')
    (spec,) = import_file(script).specs
    devices = spec.data["spec"]["devices"]
    assert {"type": "virtio-blk", "path": "/d.img", "slot": 3, "function": 4} in devices
    # a second root bus has no spec form (QEMU's pc machine and libvirt need extra controllers for it)
    assert spec.data["spec"]["extraArgs"] == ["-s", "2:1:0,virtio-rnd"]
    assert any("PCI bus 2 is not modelled" in w for w in spec.warnings)


def _qemu_devices(plan) -> list[str]:
    a = plan.argv
    return [a[i + 1] for i, x in enumerate(a) if x == "-device"]


def test_qemu_addresses_functions_and_marks_function_0_multifunction(tmp_path):
    plan = compile_qemu(load(DEVICES), HostProfile(kvm=False, qemu="qemu-system-x86_64", vhost_net=True,
                                                   net_tun=True), tmp_path)
    assert plan.errors == []
    devs = _qemu_devices(plan)
    assert any("rng-pci," in d and "addr=0x5.0x0,multifunction=on" in d for d in devs), devs
    assert any(d.startswith("virtio-net-pci,") and d.split(",")[1] == "netdev=dev5f1" and "addr=0x5.0x1" in d
               for d in devs), devs
    assert any(d.startswith("virtio-serial-pci,id=dev5f3,addr=0x5.0x3") for d in devs), devs
    assert any("blk-pci," in d and d.endswith("addr=0x3") for d in devs), devs


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="needs QEMU")
def test_qemu_itself_shows_the_functions_to_the_guest(tmp_path):
    """The rendered devices, run by the real QEMU (stopped before the CPU runs): its PCI bus has the
    functions where the spec put them."""
    spec = load("""\
        - {type: virtio-rnd, slot: 6, backend: vbs-u}
        - {type: virtio-rnd, slot: 6, function: 2, backend: vbs-u}
        - {type: virtio-console, ports: [{kind: pty, name: p0}], slot: 6, function: 5}
        """)
    plan = compile_qemu(spec, HostProfile(kvm=False, qemu="qemu-system-x86_64"), tmp_path)
    assert plan.errors == []
    argv, skip = [], {"-kernel", "-initrd", "-append"}
    it = iter(plan.argv)
    for word in it:
        if word in skip:
            next(it)
        else:
            argv.append(word)
    proc = subprocess.run([*argv, "-S", "-monitor", "stdio"], input="info pci\nquit\n", capture_output=True,
                          text=True, timeout=60)
    assert "Bus  0, device   6, function 0:" in proc.stdout, proc.stdout + proc.stderr
    assert "Bus  0, device   6, function 2:" in proc.stdout
    assert "Bus  0, device   6, function 5:" in proc.stdout


def test_libvirt_export_writes_functions_and_imports_them_back(tmp_path):
    spec = load(DEVICES)
    for flavor in ("qemu", "acrn"):
        xml, _warnings = export_domain(spec, HOST, flavor=flavor)
        root = ET.fromstring(xml)
        addrs = {(a.get("slot"), a.get("function"), a.get("multifunction"))
                 for a in root.iter("address") if a.get("type") == "pci"}
        assert {("0x05", "0x1", None), ("0x05", "0x3", None), ("0x03", "0x0", None)} <= addrs
        # the ACRN driver has no element for virtio-rnd: it stays an acrn-dm argument, on its function
        assert (("0x05", "0x0", "on") in addrs) if flavor == "qemu" else ('value="5:0,virtio-rnd"' in xml)
        back = spec_from_domain(xml, "d.xml")
        argv = compile_spec(load_spec_text(yaml.safe_dump(back.data), "b.yaml", check_paths=False, base_dir="/vm"),
                            HOST).argv
        assert normalized_argv(argv) == normalized_argv(compile_spec(spec, HOST).argv), flavor


def test_libvirt_itself_accepts_the_functions_and_its_xml_imports_back():
    libvirt = pytest.importorskip("libvirt")
    spec = load(DEVICES)
    xml, _warnings = export_domain(spec, HOST, flavor="qemu")
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(xml)  # libvirt's own parser checks the addresses
        try:
            normalized = dom.XMLDesc()
        finally:
            dom.undefine()
    finally:
        conn.close()
    back = spec_from_domain(normalized, "d.xml")
    devices = back.data["spec"]["devices"]
    assert [(d.get("slot"), d.get("function")) for d in devices if d.get("function")] == [(5, 1), (5, 3)]
    argv = compile_spec(load_spec_text(yaml.safe_dump(back.data), "b.yaml", check_paths=False, base_dir="/vm"),
                        HOST).argv
    assert normalized_argv(argv) == normalized_argv(compile_spec(spec, HOST).argv)
