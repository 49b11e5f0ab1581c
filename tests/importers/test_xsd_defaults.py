"""The scenario importer fills in ACRN's XSD defaults as default_populator.py does before launch_cfg_gen.py
runs: a missing element only where the XSD requires it, an empty one always, sets of unique defaults
(vBDFs) in document order. Each case names the XSD element (misc/config_tools/schema/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from acrnmgr.importers import import_file
from acrnmgr.importers.scenario import Board, scenario_argv

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "acrn-corpus"
BOARD = CORPUS / "boards" / "cfl-k700-i7.xml"
ETHERNET = "04:00.0 Ethernet controller: Intel Corporation I210 Gigabit Network Connection"


def scenario(vm_body: str, hv: str = "") -> str:
    return f"""<acrn-config>
  <hv><FEATURES><SCHEDULER>SCHED_BVT</SCHEDULER>{hv}</FEATURES></hv>
  <vm id="0"><load_order>SERVICE_VM</load_order><name>ACRN_Service_VM</name></vm>
  <vm id="1">
    <load_order>POST_LAUNCHED_VM</load_order>
    <name>vm1</name>
    <cpu_affinity><pcpu><pcpu_id>2</pcpu_id></pcpu></cpu_affinity>
    {vm_body}
  </vm>
</acrn-config>
"""


def imported(tmp_path, vm_body: str, hv: str = "", vuarts: str = ""):
    text = scenario(vm_body, hv)
    if vuarts:
        text = text.replace("</FEATURES></hv>", f"</FEATURES><vuart_connections>{vuarts}</vuart_connections></hv>")
    path = tmp_path / "scenario.xml"
    path.write_text(text)
    return import_file(path, board=BOARD)


def argv_of(result) -> list[str]:
    (spec,) = result.specs
    return spec.source_argv or []


def slots(argv: list[str]) -> list[str]:
    return [a for i, a in enumerate(argv) if argv[i - 1] == "-s"]


MEM = "<memory><size>512</size></memory>"


def test_vm_level_defaults_when_missing(tmp_path):
    argv = argv_of(imported(tmp_path, MEM))
    # config.xsd VMConfigType: vbootloader y (OVMF), vuart0 n (no -l com1), os_type Non-Windows OS, vm_type
    # STANDARD_VM (an lpc, no --rtvm), console_vuart None (no PCI vUART)
    assert "--ovmf" in argv and "-l" not in argv and "--windows" not in argv and "--rtvm" not in argv
    assert "1:0,lpc" in slots(argv) and not any(",uart," in s for s in slots(argv))


def test_ptm_is_y_only_when_the_element_is_there_but_empty(tmp_path):
    # config.xsd VMConfigType/PTM: default y, minOccurs 0 -> enable_ptm on an Ethernet passthrough
    body = f"{MEM}<vbootloader>y</vbootloader><pci_devs><pci_dev>{ETHERNET}</pci_dev></pci_devs>"
    assert "3,passthru,4/0/0,enable_ptm" in slots(argv_of(imported(tmp_path, body + "<PTM/>")))
    assert "3,passthru,4/0/0" in slots(argv_of(imported(tmp_path, body)))


def test_memory_size_is_1024_when_empty_and_absent_memory_stays_an_error(tmp_path):
    # VMtypes.xsd MemoryInfo/size: default 1024, minOccurs 0; <memory> itself is minOccurs 0
    argv = argv_of(imported(tmp_path, "<memory><size/></memory>"))
    assert argv[argv.index("-m") + 1] == "1024M"
    with pytest.raises(Exception, match="NoneM"):
        imported(tmp_path, "<memory/>")


def test_an_empty_console_is_a_stdio_virtio_console(tmp_path):
    # VMtypes.xsd VirtioConsoleConfiguration: use_type "Virtio console", backend_type stdio
    argv = argv_of(imported(tmp_path, f"{MEM}<virtio_devices><console/></virtio_devices>"))
    assert "3,virtio-console,@stdio:stdio_port" in slots(argv)


@pytest.mark.parametrize("framework, vhost", [("", False), ("<virtio_framework/>", False),
                                              ("<virtio_framework>Kernel based (Virtual Host)</virtio_framework>",
                                               True)])
def test_network_framework_default_is_vbsu(tmp_path, framework, vhost):
    # VMtypes.xsd VirtioNetworkConfiguration/virtio_framework: default "User space based (VBSU)", minOccurs 0
    body = f"{MEM}<virtio_devices><network>{framework}<interface_name>tap9</interface_name></network></virtio_devices>"
    (nic,) = [s for s in slots(argv_of(imported(tmp_path, body))) if "virtio-net" in s]
    assert (",vhost," in nic) is vhost


def test_ivshmem_provider_size_and_vbdf_defaults(tmp_path):
    # types.xsd IVSHMEMRegionType: PROVIDED_BY Hypervisor, IVSHMEM_SIZE 2; IVSHMEMVM/VBDF: the first of
    # 00:08.0..00:0f.0 the VM does not use yet, in document order
    hv = """<IVSHMEM>
      <IVSHMEM_REGION><NAME>shm_a</NAME><IVSHMEM_VMS>
        <IVSHMEM_VM><VM_NAME>vm1</VM_NAME></IVSHMEM_VM></IVSHMEM_VMS></IVSHMEM_REGION>
      <IVSHMEM_REGION><NAME>shm_b</NAME><PROVIDED_BY>Device Model</PROVIDED_BY><IVSHMEM_SIZE>4</IVSHMEM_SIZE>
        <IVSHMEM_VMS><IVSHMEM_VM><VM_NAME>vm1</VM_NAME><VBDF/></IVSHMEM_VM></IVSHMEM_VMS></IVSHMEM_REGION>
      <IVSHMEM_REGION><NAME>shm_c</NAME><IVSHMEM_VMS>
        <IVSHMEM_VM><VM_NAME>vm1</VM_NAME><VBDF>00:08.0</VBDF></IVSHMEM_VM></IVSHMEM_VMS></IVSHMEM_REGION>
    </IVSHMEM>"""
    s = slots(argv_of(imported(tmp_path, MEM, hv)))
    # shm_a and shm_b take 00:09.0 and 00:0a.0 (shm_c holds 00:08.0); the generator writes dm regions first.
    # The region id follows an hv:/ region only, numbered among the hypervisor's regions as ivshmem_cfg.h.xsl
    # numbers them (shm_a 0, shm_c 1): the dm:/ region in between takes no number
    assert "10,ivshmem,dm:/shm_b,4" in s and "9,ivshmem,hv:/shm_a,2,0" in s and "8,ivshmem,hv:/shm_c,2,1" in s


def test_vuart_connection_type_and_vbdf_defaults(tmp_path):
    # VMtypes.xsd VuartConnectionType/type: pci; VuartEndpointType/vbdf: first free of 00:10.0..00:17.0
    vuarts = """<vuart_connection><name>c1</name>
        <endpoint><vm_name>ACRN_Service_VM</vm_name><io_port>0x9000</io_port></endpoint>
        <endpoint><vm_name>vm1</vm_name><io_port>0x9000</io_port></endpoint></vuart_connection>
      <vuart_connection><name>c2</name><type>pci</type>
        <endpoint><vm_name>ACRN_Service_VM</vm_name></endpoint>
        <endpoint><vm_name>vm1</vm_name><vbdf>00:10.0</vbdf></endpoint></vuart_connection>"""
    s = slots(argv_of(imported(tmp_path, MEM, vuarts=vuarts)))
    assert "17,uart,vuart_idx:1" in s and "16,uart,vuart_idx:2" in s


def test_the_generator_argv_itself_gets_the_defaults():
    """scenario_argv on a populated <vm>, without the importer around it."""
    import xml.etree.ElementTree as ET

    from acrnmgr.importers.scenario import populate, populate_hv
    root = ET.fromstring(scenario(f"{MEM}<PTM></PTM><pci_devs><pci_dev>{ETHERNET}</pci_dev></pci_devs>"))
    populate_hv(root)
    vm = root.findall("vm")[1]
    populate(vm)
    assert vm.find("PTM").text == "y" and vm.find("own_pcpu").text == "n"
    assert vm.find("lapic_passthrough") is None  # minOccurs 0: not created
    argv = scenario_argv(root, vm, Board.load(BOARD), [])
    assert "3,passthru,4/0/0,enable_ptm" in slots(argv)


def test_a_gpu_with_an_empty_display_type_still_takes_its_slot_as_the_generator_does(tmp_path):
    # launch_cfg_gen.py adds every virtio_devices/gpu[./display_type], a bare one included (which acrn-dm
    # cannot start: not imported, but the next device's slot is the generator's)
    body = f"{MEM}<virtio_devices><gpu><display_type/></gpu><vsock>5</vsock></virtio_devices>"
    result = imported(tmp_path, body)
    assert "4,vhost-vsock,cid=5" in slots(argv_of(result))
    assert any("virtio-gpu" in w and "not imported" in w for w in result.specs[0].warnings)
