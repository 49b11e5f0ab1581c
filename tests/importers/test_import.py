"""Import from ACRN's scenario.xml and generated launch scripts.

Equivalence of argvs is `normalized_argv` equality. The normalization, stated explicitly:
option order and -s order (the compiler writes a fixed order, slots sorted), `-s 3` == `-s 3:0`,
`-m 2G` == `-m 2048M`, --lapic_pt dropped next to --rtvm, igd-lpc dropped, and per-device
configs compared parsed (so `xhci,1-2,2-4` == `xhci,1-2:2-4`, `passthru,0/1f/6` ==
`passthru,00/1f/6`, virtio-blk's default writethru written or not)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from acrnmgr.cli import app
from acrnmgr.render.acrndm import compile_spec
from acrnmgr.host import HostProfile
from acrnmgr.importers import ImportError_, import_file
from acrnmgr.importers.dm_argv import normalized_argv, spec_from_argv
from acrnmgr.importers.launch_script import argv_from_launch_script
from acrnmgr.spec.validation import load_spec_text

FIX = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
HOST = HostProfile.from_file(ROOT / "examples/hosts/acrn-service-vm.yaml")
runner = CliRunner()


def rendered(imported):
    spec = load_spec_text(yaml.safe_dump(imported.data), f"{imported.name}.yaml", check_paths=False)
    compiled = compile_spec(spec, HOST)
    assert compiled.ok, compiled.errors
    return compiled.argv


def test_launch_script_round_trips_to_the_same_argv():
    result = import_file(FIX / "launch_user_vm_id1.sh")
    assert result.format == "launch-script"
    (vm,) = result.specs
    assert vm.name == "POST_STD_VM1"
    argv = rendered(vm)
    assert normalized_argv(argv) == normalized_argv(vm.source_argv)
    # What the normalization had to absorb, concretely:
    assert argv != vm.source_argv
    assert "4:0,xhci,1-2:2-4" in argv and "4,xhci,1-2,2-4" in vm.source_argv
    assert "10:0,passthru,00/1f/6,enable_ptm" in argv and "10,passthru,0/1f/6,enable_ptm" in vm.source_argv


def test_launch_script_helpers_expand_like_bash():
    argv, warnings = argv_from_launch_script((FIX / "launch_user_vm_id1.sh").read_text())
    assert argv[:3] == ["acrn-dm", "--cpu_affinity", "2,4"]
    assert ["--intr_monitor", "10000,10,1,100"] == argv[argv.index("--intr_monitor"):argv.index("--intr_monitor") + 2]
    assert "console,level=4;kmsg,level=3;disk,level=5" in argv
    # the MAC seed's host NIC address, read when the script runs, is kept as the HOST_MAC placeholder
    assert "7,virtio-net,tap=tap_vm1,vhost,mac_seed={hostMac}-POST_STD_VM1" in argv
    assert not any("mac_seed" in w for w in warnings)
    assert argv[-1] == "POST_STD_VM1"


def test_scenario_and_its_launch_script_import_to_the_same_spec():
    scenario = import_file(FIX / "scenario.xml", board=FIX / "board.xml")
    script = import_file(FIX / "launch_user_vm_id1.sh")
    by_name = {s.name: s for s in scenario.specs}
    assert by_name["POST_STD_VM1"].data == script.specs[0].data


def test_scenario_imports_every_post_launched_vm_and_renders_back():
    result = import_file(FIX / "scenario.xml", board=FIX / "board.xml")
    assert [s.name for s in result.specs] == ["POST_STD_VM1", "POST_RT_VM1", "WIN_VM"]
    assert any("SERVICE_VM" in w for w in result.warnings) and any("PRE_LAUNCHED_VM" in w for w in result.warnings)
    for vm in result.specs:
        assert normalized_argv(rendered(vm)) == normalized_argv(vm.source_argv), vm.name
    specs = {s.name: s.data["spec"] for s in result.specs}
    # board.xml: pcpu 1,2 -> LAPIC 2,4; pcpu 3 -> 6
    assert specs["POST_STD_VM1"]["cpu"]["affinity"] == [2, 4]
    assert specs["POST_RT_VM1"]["cpu"]["affinity"] == [6]
    # RTVM: --rtvm --lapic_pt -> vmType rtvm; the implied --virtio_poll 1000000 is not spelled out
    rt = specs["POST_RT_VM1"]
    assert rt["vmType"] == "rtvm" and "settings" in rt and "virtioPoll" not in rt["settings"]
    assert rt["boot"] == {"kernel": {"path": "/home/acrn/bzImage", "cmdline": "root=/dev/vda rw rootwait console=hvc0"}}
    # launch_cfg_gen.py puts every VM of an ivshmem region at the region's first vBDF (00:03.0, POST_STD_VM1's),
    # not at this VM's own 00:05.0, and says so; the disk after the mounted partition's slot keeps 6
    assert {d["type"]: d.get("slot") for d in rt["devices"]} == {"virtio-console": None, "ivshmem": None,
                                                                 "virtio-blk": 6}
    rt_warn = next(s for s in result.specs if s.name == "POST_RT_VM1").warnings
    assert "3,ivshmem,dm:/shm_region_0,2" in next(s for s in result.specs if s.name == "POST_RT_VM1").source_argv
    assert any("00:05.0" in w and "first vBDF (00:03.0)" in w for w in rt_warn)
    assert any("/dev/sda3" in w and "mounts" in w for w in rt_warn)
    win = specs["WIN_VM"]
    assert win["osType"] == "windows" and win["settings"]["windows"] is True
    assert win["devices"][0] == {"type": "passthru", "bdf": "00:02.0", "gpu": True}
    assert {"type": "passthru", "bdf": "00:14.0", "options": {"d3hotReset": True}} in win["devices"]
    # `tap=tap_win,mac=...,mac_seed=...`: acrn-dm reads mac_seed= only right after the tap name (and the MAC
    # is given anyway), so the seed is dropped with a warning
    assert {"type": "virtio-net", "tap": "tap_win", "backend": "vbs-u", "mac": "00:16:3e:00:00:09"} in win["devices"]


def test_scenario_without_board_says_what_it_assumed():
    result = import_file(FIX / "scenario.xml")
    vm1 = result.specs[0]
    assert vm1.data["spec"]["cpu"]["affinity"] == [1, 2]
    assert any("LAPIC" in w and "--board" in w for w in vm1.warnings)
    assert any("PCI class is unknown" in w for w in vm1.warnings)
    assert "options" not in vm1.data["spec"]["devices"][-1]  # enable_ptm needs the board's class code


def test_tricky_dm_params(tmp_path):
    script = tmp_path / "launch_user_vm_id2.sh"
    script.write_text(
        "#!/bin/bash\n"
        "rtos_type='Hard RT'\n"
        "img=/var/lib/vm.img\n"
        "dm_params=(\n"
        "    $(add_cpus 6)  # the RT core\n"
        "    -m 512M\n"
        "    $(add_rtvm_options)\n"
        "    -k /boot/bzImage -B \"root=/dev/vda rw console=hvc0\"\n"
        "    `add_virtual_device 3 virtio-blk ${img}`\n"
        "    `add_virtual_device 4 virtio-blk nodisk`\n"
        "    `my_own_helper 1 2`\n"
        "    -s 5,virtio-console,@stdio:s0 --pci_slot 0,hostbridge\n"
        "    rt-demo\n"
        ")\n"
        "acrn-dm \"${dm_params[@]}\"\n"
    )
    result = import_file(script)
    (vm,) = result.specs
    spec = vm.data["spec"]
    assert spec["vmType"] == "rtvm" and spec["cpu"]["affinity"] == [6]
    assert spec["boot"]["kernel"]["cmdline"] == "root=/dev/vda rw console=hvc0"
    assert spec["devices"][0] == {"type": "virtio-blk", "path": "/var/lib/vm.img"}
    assert spec["extraArgs"] == ["-s", "0:4:0,virtio-blk,nodisk"]
    assert any("my_own_helper" in w for w in vm.warnings)
    # The one real difference, warned about: an RTVM with virtio devices always gets polling mode.
    assert any("--virtio_poll 1000000" in w for w in vm.warnings)
    expected = vm.source_argv[:-1] + ["--virtio_poll", "1000000", "rt-demo"]
    assert normalized_argv(rendered(vm)) == normalized_argv(expected)


def test_spec_from_argv_refuses_what_acrn_dm_refuses():
    from acrnmgr.render.grammar import GrammarError

    with pytest.raises(GrammarError, match="uuid"):
        spec_from_argv(["acrn-dm", "-U", "x", "-m", "1G", "vm"])
    with pytest.raises(GrammarError, match="cpu_affinity"):
        spec_from_argv(["acrn-dm", "-m", "1G", "-k", "/k", "vm"])


def test_script_without_dm_params_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.sh"
    bad.write_text("#!/bin/sh\nacrn-dm -m 1G vm\n")
    with pytest.raises(ImportError_, match="dm_params"):
        import_file(bad)


@pytest.mark.parametrize("content,message", [
    ("<acrn-config><vm id='1'><load_order>SERVICE_VM</load_order></vm></acrn-config>", "POST_LAUNCHED_VM"),
    ("<acrn-config><vm id='1'>", "not well-formed"),
    ("<html/>", "neither"),
    ("hello", "not an ACRN scenario"),
])
def test_cli_bad_inputs_exit_1_without_traceback(tmp_path, content, message):
    path = tmp_path / ("in.xml" if content.startswith("<") else "in.txt")
    path.write_text(content)
    res = runner.invoke(app, ["import", str(path)])
    assert res.exit_code == 1
    assert message in res.stderr and "Traceback" not in res.output + res.stderr


def test_cli_writes_files_and_json_report(tmp_path):
    out = tmp_path / "specs"
    res = runner.invoke(app, ["import", str(FIX / "scenario.xml"), "--board", str(FIX / "board.xml"),
                              "-o", str(out), "--output", "json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] and report["format"] == "scenario"
    assert [vm["name"] for vm in report["vms"]] == ["POST_STD_VM1", "POST_RT_VM1", "WIN_VM"]
    assert all(vm["errors"] == [] for vm in report["vms"])
    files = sorted(p.name for p in out.iterdir())
    assert files == ["POST_RT_VM1.yaml", "POST_STD_VM1.yaml", "WIN_VM.yaml"]
    text = (out / "POST_RT_VM1.yaml").read_text()
    assert "# Not mapped / changed on import:" in text and "/dev/sda3" in text
    # the written file renders back (render CLI, the service VM profile)
    res = runner.invoke(app, ["render", str(out / "POST_STD_VM1.yaml"), "--no-check-paths",
                              "--host", str(ROOT / "examples/hosts/acrn-service-vm.yaml")])
    assert res.exit_code == 0, res.output
    argv = shlex.split(res.stdout)
    src = import_file(FIX / "launch_user_vm_id1.sh").specs[0].source_argv
    assert normalized_argv(argv) == normalized_argv(src)
    # refuses to overwrite
    res = runner.invoke(app, ["import", str(FIX / "scenario.xml"), "-o", str(out)])
    assert res.exit_code == 1 and "--force" in res.stderr


def test_cli_stdout_is_multi_document_yaml():
    res = runner.invoke(app, ["import", str(FIX / "scenario.xml"), "--board", str(FIX / "board.xml")])
    assert res.exit_code == 0
    docs = list(yaml.safe_load_all(res.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["POST_STD_VM1", "POST_RT_VM1", "WIN_VM"]
    assert "/dev/sda3" in res.stderr
