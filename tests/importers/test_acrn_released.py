"""ACRN's released v3 scenarios of boards outside acrn-corpus (tests/fixtures/acrn-released, with
ACRN's LICENSE) import, and each VM's argv is the one launch_cfg_gen.py writes for it: the expected
argvs below follow launch_cfg_gen.py (slots 0 hostbridge, 1 lpc, 2 the GPU, then 3.. in the order
ivshmem, PCI vUARTs, xhci, virtio-input, console, network, block, gpu, vsock, passthrough; an explicit
vbdf keeps its slot), on a board whose LAPIC IDs are its CPU numbers (no --board)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from acrnmgr.host import HostProfile
from acrnmgr.importers import ImportError_, import_file
from acrnmgr.importers.dm_argv import normalized_argv
from acrnmgr.render.acrndm import compile_spec
from acrnmgr.spec.validation import load_spec_text

RELEASED = Path(__file__).resolve().parents[1] / "fixtures" / "acrn-released" / "scenarios"
ROOT = Path(__file__).resolve().parents[2]
HOST = HostProfile.from_file(ROOT / "examples/hosts/acrn-service-vm.yaml")
OVMF = ["--ovmf", "/usr/share/acrn/bios/OVMF.fd"]
LOGGER = ["--logger_setting", "console,level=4;kmsg,level=3;disk,level=5"]
RTVM = ["--virtio_poll", "1000000", "--rtvm", "--lapic_pt"]


def dm(*words: str) -> list[str]:
    out = ["acrn-dm"]
    for word in words:
        out += word.split(" ", 1) if word.startswith("-") and " " in word else [word]
    return out


# file -> {VM name: the acrn-dm argv launch_cfg_gen.py writes}; VMs it cannot run are import errors
EXPECTED: dict[str, dict[str, list[str]]] = {
    "adl-asrock__shared.xml": {
        "POST_STD_VM1": dm("--windows", "--cpu_affinity 0,1", "-m 4096M", *OVMF, "-s 1:0,lpc", "-s 0:0,hostbridge",
                           "-s 16,uart,vuart_idx:1",
                           "-s 3,virtio-input,{inputByName:Raritan%20D2CIM-DVUSB:usb-0000%3A00%3A14.0-4%2Finput0}",
                           "-s 4,virtio-net,tap=WaaG,mac_seed={hostMac}-POST_STD_VM1",
                           "-s 5,virtio-blk,./win10-ltsc.img", "-s 2,passthru,0/2/0", *LOGGER, "POST_STD_VM1"),
        "POST_RT_VM1": dm("--cpu_affinity 10,11", "-m 1024M", *OVMF, "-s 0:0,hostbridge", *RTVM[:2],
                          "-s 3,virtio-console,@stdio:stdio_port",
                          "-s 4,virtio-net,tap=RT,mac_seed={hostMac}-POST_RT_VM1",
                          "-s 5,virtio-blk,./core-image-weston-intel-corei7-64.wic", *RTVM[2:], *LOGGER,
                          "POST_RT_VM1"),
        "POST_STD_VM2": dm("--cpu_affinity 0,1", "-m 2048M", *OVMF, "-s 1:0,lpc", "-s 0:0,hostbridge",
                           "-s 3,virtio-console,@stdio:stdio_port",
                           "-s 4,virtio-net,tap=YaaG3,mac_seed={hostMac}-POST_STD_VM2", "-s 5,virtio-blk,./YaaG.img",
                           *LOGGER, "POST_STD_VM2"),
    },
    "tgl-vecow-spc-7100-Corei7__shared_launch_2user_vm.xml": {
        "POST_STD_VM1": dm("--windows", "--cpu_affinity 0,1", "-m 4096M", *OVMF, "-s 1:0,lpc", "-s 0:0,hostbridge",
                           "-s 3,virtio-console,@stdio:stdio_port",
                           "-s 4,virtio-net,tap=WaaG,mac_seed={hostMac}-POST_STD_VM1",
                           "-s 5,virtio-blk,./win10-ltsc.img", "-s 2,passthru,0/2/0", *LOGGER, "POST_STD_VM1"),
        "POST_RT_VM1": dm("--cpu_affinity 2,3", "-m 1024M", *OVMF, "-s 0:0,hostbridge", *RTVM[:2],
                          "-s 3,virtio-console,@stdio:stdio_port",
                          "-s 4,virtio-net,tap=RT,mac_seed={hostMac}-POST_RT_VM1",
                          "-s 5,virtio-blk,./core-image-weston-intel-corei7-64.wic", *RTVM[2:], *LOGGER,
                          "POST_RT_VM1"),
    },
    "whl-ipc-i5__hybrid_rt_launch_1user_vm_waag.xml": {
        # POST_STD_VM1: `<vuart0>y` (-l com1,stdio) and the empty <console/> (a stdio virtio-console): an error
        "POST_STD_VM2": dm("--cpu_affinity 1", "-m 512M", *OVMF, "-s 1:0,lpc", "-s 0:0,hostbridge",
                           "-s 3,virtio-console,@stdio:stdio_port",
                           "-s 4,virtio-net,tap=YaaG,mac_seed={hostMac}-POST_STD_VM2", "-s 5,virtio-blk,./YaaG.img",
                           *LOGGER, "POST_STD_VM2"),
    },
}
ERRORS = {
    "adl-asrock__shared.xml": [],
    "tgl-vecow-spc-7100-Corei7__shared_launch_2user_vm.xml": [],
    "whl-ipc-i5__hybrid_rt_launch_1user_vm_waag.xml": [
        "vm 2 (POST_STD_VM1): not imported: stdio used by more than one"],
}


def test_every_released_file_is_covered():
    assert sorted(p.name for p in RELEASED.glob("*.xml")) == sorted([*EXPECTED, "qemu__shared.xml"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_released_scenario_imports_to_the_generators_argv_and_renders_back(name, tmp_path):
    result = import_file(RELEASED / name)
    assert [e[:len(p)] for e, p in zip(result.errors, ERRORS[name], strict=True)] == ERRORS[name]
    assert {s.name: normalized_argv(s.source_argv) for s in result.specs} == {
        vm: normalized_argv(argv) for vm, argv in EXPECTED[name].items()}
    for imported in result.specs:
        spec = load_spec_text(yaml.safe_dump(imported.data), str(tmp_path / f"{imported.name}.yaml"),
                              check_paths=False, base_dir=tmp_path)
        compiled = compile_spec(spec, HOST)
        assert compiled.ok, compiled.errors
        relative = [a.replace(f"{tmp_path}/", "./") for a in compiled.argv]
        assert normalized_argv(relative) == normalized_argv(imported.source_argv), imported.name


def test_a_scenario_whose_only_post_launched_vm_has_no_memory_is_one_clear_error():
    with pytest.raises(ImportError_) as exc:
        import_file(RELEASED / "qemu__shared.xml")
    assert "vm 1 (POST_STD_VM1): not imported" in str(exc.value) and "NoneM" in str(exc.value)


# -- hostile and older inputs: one clear line each, never a traceback -------------------------------

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "acrn-corpus"
BOARD = CORPUS / "boards" / "generic_board.xml"
LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
          '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>\n<acrn-config><vm id="1"><name>&c;</name></vm></acrn-config>\n')
V2_LAUNCH = ('<acrn-config board="whl-ipc-i5" scenario="industry" uos_launcher="1">\n'
             '  <uos id="1"><uos_type>WINDOWS</uos_type><mem_size>4096</mem_size></uos>\n</acrn-config>\n')


def _vm(vm_id: int, body: str) -> str:
    return f'<vm id="{vm_id}"><load_order>POST_LAUNCHED_VM</load_order><memory><size>512</size></memory>{body}</vm>'


def _scenario(*vms: str) -> str:
    return ('<acrn-config><vm id="0"><load_order>SERVICE_VM</load_order><name>ACRN_Service_VM</name></vm>'
            + "".join(vms) + "</acrn-config>\n")


def _cli_error(tmp_path: Path, text: str | bytes, *args: str) -> str:
    from typer.testing import CliRunner

    from acrnmgr.cli import app

    path = tmp_path / "in.xml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    res = CliRunner().invoke(app, ["import", str(path), *args])
    # CliRunner turns an uncaught exception into exit code 1 as well: it must be the CLI's own exit
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit | None), (res.exception, res.output)
    return res.stderr


@pytest.mark.parametrize("text, says", [
    (LAUGHS, "has a <!DOCTYPE>"),
    ("", "the file is empty"),
    (b"\xff\xfe<\x00a\x00", "binary data"),
    ('<?xml version="1.0" encoding="ISO-8859-1"?><acrn-config><vm><name>caf\xe9</name></vm></acrn-config>'
     .encode("latin-1"), "not UTF-8 text"),
    (V2_LAUNCH, "this is a v2.x launch XML"),
    # a million levels deep: copying the <vm> used to overflow the C stack (a segfault, not even a traceback)
    ("<acrn-config><vm id='1'><load_order>POST_LAUNCHED_VM</load_order><virtio_devices>" + "<a>" * 1_000_000
     + "</a>" * 1_000_000 + "</virtio_devices></vm></acrn-config>", "elements nested more than 64 deep"),
    ('<acrn-config><vm id="1"><vm_type>POST_STD_VM</vm_type></vm></acrn-config>', "looks like a v2.x scenario"),
])
def test_unusable_files_are_one_clear_line(tmp_path, text, says):
    err = _cli_error(tmp_path, text)
    assert says in err and len(err.strip().splitlines()) == 1, err


def test_a_scenario_with_thousands_of_members_is_refused_at_once(tmp_path):
    # 2000 IVSHMEM_VMs without a VBDF: filling the XSD defaults compared each with all the others (n^2;
    # 30000 of them, 1.4 MB, ran for minutes)
    members = "".join(f"<IVSHMEM_VM><VM_NAME>v{i % 50}</VM_NAME></IVSHMEM_VM>" for i in range(2000))
    text = _scenario(_vm(1, "<name>v1</name><cpu_affinity><pcpu><pcpu_id>1</pcpu_id></pcpu></cpu_affinity>"))
    text = text.replace("<acrn-config>", "<acrn-config><hv><FEATURES><IVSHMEM><IVSHMEM_REGION><NAME>a</NAME>"
                        f"<IVSHMEM_VMS>{members}</IVSHMEM_VMS></IVSHMEM_REGION></IVSHMEM></FEATURES></hv>")
    err = _cli_error(tmp_path, text)
    assert "2000 <IVSHMEM_VM> elements" in err and "at most 1024" in err


def test_more_devices_than_free_slots_is_an_error_naming_the_vm(tmp_path):
    cpu = "<cpu_affinity><pcpu><pcpu_id>1</pcpu_id></pcpu></cpu_affinity>"
    disks = "".join(f"<block>/x{i}.img</block>" for i in range(28))  # slots 3..29 hold 27
    path = tmp_path / "scenario.xml"
    path.write_text(_scenario(_vm(1, f"<name>FULL</name>{cpu}<virtio_devices>{disks}</virtio_devices>"),
                              _vm(2, f"<name>OK</name>{cpu}")))
    result = import_file(path)
    assert [s.name for s in result.specs] == ["OK"]
    (err,) = result.errors
    assert err.startswith("vm 1 (FULL): not imported:") and "free PCI slots 3-29" in err


def test_a_partitioned_scenario_says_why_nothing_is_imported(tmp_path):
    err = _cli_error(tmp_path, (CORPUS / "scenarios" / "generic_board__partitioned.xml").read_text())
    assert "its VMs are PRE_LAUNCHED_VM" in err and len(err.strip().splitlines()) == 1


def test_a_board_xml_that_is_not_one_is_said_so(tmp_path):
    err = _cli_error(tmp_path, _scenario(_vm(1, "<name>VM1</name>")), "--board",
                     str(CORPUS / "scenarios" / "generic_board__shared.xml"))
    assert "not a board XML of ACRN's board inspector" in err and len(err.strip().splitlines()) == 1
    deep = tmp_path / "deep_board.xml"
    deep.write_text("<acrn-config>" + "<a>" * 100 + "</a>" * 100 + "</acrn-config>")
    err = _cli_error(tmp_path, _scenario(_vm(1, "<name>VM1</name>")), "--board", str(deep))
    assert "cannot read board XML: elements nested more than 64 deep" in err


def test_bad_vms_are_errors_naming_them_while_their_siblings_import(tmp_path):
    cpu = "<cpu_affinity><pcpu><pcpu_id>{}</pcpu_id></pcpu></cpu_affinity>"
    path = tmp_path / "scenario.xml"
    path.write_text(_scenario(
        _vm(1, "<name>GOOD</name>" + cpu.format(1)),
        _vm(2, "<name>LETTER</name>" + cpu.format("a")),
        _vm(3, "<name>NOT_ON_BOARD</name>" + cpu.format(77) + cpu.format(78)),
        _vm(4, "<name>two words</name>" + cpu.format(1)),
        _vm(5, "<name>-dash</name>" + cpu.format(1)),
        _vm(6, cpu.format(1)),
    ))
    result = import_file(path, board=BOARD)
    assert [s.name for s in result.specs] == ["GOOD"]
    letter, board, space, dash, unnamed = result.errors
    assert letter.startswith("vm 2 (LETTER): not imported:") and "'a' is not a CPU number" in letter
    # not acrn-dm's "no --cpu_affinity" (which is what the generator's argv would lead to): which CPUs, and why
    assert board.startswith("vm 3 (NOT_ON_BOARD): not imported:") and "(77, 78)" in board and "0, 1, 2, 3" in board
    assert space.startswith("vm 4 (two words): not imported:") and "[A-Za-z0-9_-]" in space
    assert dash.startswith("vm 5 (-dash): not imported:")
    assert unnamed == "vm 6: not imported: no <name> (config.xsd requires one)"


def test_a_launch_script_disk_inside_a_mounted_partition_is_left_out_with_a_warning_not_an_error(tmp_path):
    # launch_cfg_gen.py, for <block>/dev/sda3:rt.img</block>: an init command mounts the partition into
    # dir_sda3, and the disk is ${dir_sda3}/rt.img (unknown until the script runs)
    text = (CORPUS / "reference" / "generic_board__shared" / "launch_user_vm_id2.sh").read_text()
    text = text.replace("probe_modules\n", "probe_modules\ndir_sda3=`mount_partition /dev/sda3`\n", 1)
    start = text.index("dm_params=(")
    logger = text.index("`add_logger_settings", start)
    text = (text[:logger] + "`add_virtual_device                       7 virtio-blk ${dir_sda3}/rt.img`\n    "
            + text[logger:])
    path = tmp_path / "launch_user_vm_id2.sh"
    path.write_text(text)
    (vm,) = import_file(path).specs
    assert any("mounts /dev/sda3" in w and "rt.img" in w for w in vm.warnings)
    assert not any("rt.img" in str(d) for d in vm.data["spec"].get("devices", []))
    assert "7,virtio-blk" not in " ".join(vm.source_argv)


@pytest.mark.parametrize("flavor", ["qemu", "acrn"])
def test_a_virtio_input_named_by_device_name_survives_a_libvirt_round_trip(tmp_path, flavor):
    """spec -> export -> import -> render: the same argv. The qemu flavor's <input type='evdev'> wrote
    `<source dev=''/>` for an evdev named by `Device name: ..., Device physical path: ...`, and the import
    of that failed (`device: ''`); the name now travels in acrnmgr's metadata."""
    from typer.testing import CliRunner

    from acrnmgr.cli import app

    runner = CliRunner()
    host = tmp_path / "host.yaml"
    host.write_text(yaml.safe_dump(HostProfile(
        is_service_vm=True, hsm_device="/dev/acrn_hsm", acrn_dm="/usr/bin/acrn-dm", acrn_dm_version="3.x",
        vhost_net=True, vhost_vsock=True, net_tun=True, cpu_count=16, lapic_ids=list(range(16))).to_dict()))
    out = tmp_path / "specs"
    runner.invoke(app, ["import", str(RELEASED / "adl-asrock__shared.xml"), "-o", str(out)])
    spec = out / "POST_STD_VM1.yaml"
    assert "deviceName: Raritan D2CIM-DVUSB" in spec.read_text()
    exported = runner.invoke(app, ["export", str(spec), "--flavor", flavor, "--host", str(host), "--no-check-paths"])
    assert exported.exit_code == 0, exported.output
    (tmp_path / "domain.xml").write_text(exported.stdout)
    back = tmp_path / "back"
    res = runner.invoke(app, ["import", str(tmp_path / "domain.xml"), "-o", str(back)])
    assert res.exit_code == 0, res.output
    argv = [runner.invoke(app, ["render", str(path), "--no-check-paths", "--host", str(host)]).stdout
            for path in (spec, back / "POST_STD_VM1.yaml")]
    assert argv[0] == argv[1] and "inputByName:Raritan" in argv[0]


def test_a_warning_quotes_at_most_a_line_of_the_script(tmp_path):
    text = (CORPUS / "reference" / "generic_board__shared" / "launch_user_vm_id2.sh").read_text()
    start = text.index("dm_params=(") + len("dm_params=(")
    path = tmp_path / "launch.sh"
    path.write_text(text[:start] + "\n    " + "$(" * 5000 + ")" * 5000 + "\n" + text[start:])
    (vm,) = import_file(path).specs
    (helper,) = [w for w in vm.warnings if "unknown helper" in w]
    assert len(helper) < 400 and "..." in helper


def test_messages_quote_at_most_a_line_of_the_scenario(tmp_path):
    cpu = "<cpu_affinity><pcpu><pcpu_id>1</pcpu_id></pcpu></cpu_affinity>"
    long = "x" * 100_000
    path = tmp_path / "scenario.xml"
    path.write_text(_scenario(
        _vm(1, f"<name>V1</name>{cpu}<pci_devs><pci_dev>{long}</pci_dev></pci_devs>"
               f"<customized_parameters>'{long}</customized_parameters>"),
        _vm(2, f"<name>{long}</name>{cpu}").replace('id="2"', f'id="{long}"'),
    ))
    result = import_file(path)
    messages = result.errors + result.warnings + [w for s in result.specs for w in s.warnings]
    assert len(messages) >= 3 and all(len(m) < 600 for m in messages), max(map(len, messages))
