"""ACRN's own released scenarios (tests/fixtures/acrn-corpus, with ACRN's LICENSE) import, and each
imported VM renders to the argv of the launch script ACRN's default_populator + launch_cfg_gen
produced for it.

The reference argv is read by running the reference script with its host helpers stubbed
(probe_modules, offline_cpus, unbind_device, create_tap, mount_partition, acrn-dm): bash computes
it, not our parser. It is compared with `normalized_argv`, i.e. up to acrn-dm's own equivalences
(option order, `-s 3` == `-s 3:0`, --lapic_pt next to --rtvm). Two things are made equal before
comparing, both stated:
- the host MAC in mac_seed: the reference reads /sys/class/net/e*/address when it runs; our argv's
  HOST_MAC placeholder is resolved the same way (read_host_mac), on the same machine;
- a relative disk path: the reference gives acrn-dm `./x.img`, opened from the directory the script
  runs in; the spec resolves it against the spec's folder. The reference runs in that folder, so
  both name the same file."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from acrnmgr.cli import app
from acrnmgr.devices import vm_from_spec
from acrnmgr.devices.virtio_net import VirtioNet, acrn_mac, read_host_mac, resolve_host_mac
from acrnmgr.importers import import_file
from acrnmgr.importers.dm_argv import normalized_argv
from acrnmgr.importers.scenario import Board
from acrnmgr.render.acrndm import compile_spec
from acrnmgr.render.script import render_script
from acrnmgr.spec.validation import load_spec_text

from tests.render.test_script import run_script

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "acrn-corpus"
SCENARIOS = sorted((CORPUS / "scenarios").glob("*.xml"))
runner = CliRunner()

STUBS = r"""
probe_modules() { :; }
offline_cpus() { echo "offline_cpus $*" >> "$STUB_OUT/log"; }
unbind_device() { echo "unbind_device $*" >> "$STUB_OUT/log"; }
create_tap() { echo "create_tap $*" >> "$STUB_OUT/log"; }
mount_partition() { echo "mount_partition $*" >> "$STUB_OUT/log"; echo /mnt/stub; }
unmount_partition() { :; }
acrn-dm() { printf '%s\0' "$@" > "$STUB_OUT/argv"; }
"""


def board_of(scenario: Path) -> Path:
    return CORPUS / "boards" / (scenario.stem.split("__")[0] + ".xml")


def run_reference(script: Path, cwd: Path) -> tuple[list[str], list[str]]:
    """(acrn-dm argv, helper calls) of a generated launch script, its host helpers stubbed: the stubs
    are defined right after the script's own helper functions, so they replace them."""
    text = script.read_text()
    dm = text.index("dm_params=(")
    end = max(m.end() for m in re.finditer(r"^}\s*$", text[:dm], re.M))
    (cwd / "launch.sh").write_text(text[:end] + "\n" + STUBS + text[end:])
    proc = subprocess.run(["bash", str(cwd / "launch.sh")], cwd=cwd, env={**os.environ, "STUB_OUT": str(cwd)},
                          capture_output=True, text=True, timeout=60)
    assert (cwd / "argv").exists(), proc.stderr
    argv = ["acrn-dm", *(cwd / "argv").read_bytes().decode().split("\0")[:-1]]
    log = (cwd / "log").read_text().splitlines() if (cwd / "log").exists() else []
    return argv, log


def absolute_disks(argv: list[str], base: Path) -> list[str]:
    """A relative virtio-blk path as the acrn-dm process started in `base` opens it."""
    out = []
    for word in argv:
        m = re.match(r"^(\d+(?::\d+){0,2},virtio-blk,)([^,]+)(.*)$", word)
        if m and not os.path.isabs(m.group(2)):
            word = m.group(1) + os.path.normpath(str(base / m.group(2))) + m.group(3)
        out.append(word)
    return out


def cases():
    for scenario in SCENARIOS:
        ref = CORPUS / "reference" / scenario.stem
        if ref.is_dir():
            yield pytest.param(scenario, ref, id=scenario.stem)


@pytest.mark.parametrize("scenario, ref", list(cases()))
def test_every_post_launched_vm_renders_to_acrns_own_launch_script(scenario, ref, tmp_path):
    board = board_of(scenario)
    host = Board.load(board).host_profile()
    result = import_file(scenario, board=board)
    assert not result.errors
    scripts = sorted(ref.glob("launch_user_vm_id*.sh"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    assert len(result.specs) == len(scripts)
    host_mac = read_host_mac()
    for n, (imported, script) in enumerate(zip(result.specs, scripts, strict=True), 1):
        work = tmp_path / f"vm{n}"
        work.mkdir()
        spec = load_spec_text(yaml.safe_dump(imported.data), str(work / f"{imported.name}.yaml"),
                               check_paths=False, base_dir=work)
        compiled = compile_spec(spec, host)
        assert compiled.ok, (imported.name, compiled.errors)
        ours = [resolve_host_mac(a, host_mac) for a in compiled.argv]
        theirs, log = run_reference(script, work)
        assert normalized_argv(ours) == normalized_argv(absolute_disks(theirs, work)), (script, ours, theirs)

        # The rendered launch script does what the reference does around acrn-dm: the same CPUs
        # offlined (only an RTVM's), the same taps, the same devices unbound, the same argv.
        lapics = host.lapic_ids
        proc, run = run_script(work, render_script(compiled), {lapic: n for n, lapic in enumerate(lapics)},
                               nics={"eth0": "00:1b:21:0a:0b:0c"}, pci=tuple(compiled.passthru))
        assert proc.returncode == 0, proc.stderr
        argv = ["acrn-dm", *(a.decode() for a in (run / "argv").read_bytes().split(b"\0")[:-1])]
        assert argv == [resolve_host_mac(a, "00:1b:21:0a:0b:0c") for a in compiled.argv]
        offlined = sorted(int(c) for line in log if line.startswith("offline_cpus") for c in line.split()[1:])
        assert offlined == sorted(compiled.cpus)
        expect_off = [n for n, lapic in enumerate(lapics) if lapic in compiled.cpus and n != 0]
        for n in range(len(lapics)):
            state = (run / f"sys/devices/system/cpu/cpu{n}/online").read_text().strip()
            assert state == ("0" if n in expect_off else "1"), (imported.name, n)
        taps = sorted(line.split()[1] for line in log if line.startswith("create_tap"))
        assert taps == compiled.taps
        unbound = [line.split()[1] for line in log if line.startswith("unbind_device")]
        assert unbound == [f"0000:{bdf}" for bdf in compiled.passthru]


def test_sample_launch_scripts_import_and_render_back(tmp_path):
    host = Board.load(CORPUS / "boards" / "generic_board.xml").host_profile()
    for script in sorted((CORPUS / "sample_launch_scripts").glob("*.sh")):
        (imported,) = import_file(script).specs
        work = tmp_path / script.stem
        work.mkdir()
        spec = load_spec_text(yaml.safe_dump(imported.data), str(work / f"{imported.name}.yaml"),
                               check_paths=False, base_dir=work)
        compiled = compile_spec(spec, host)
        assert compiled.ok, compiled.errors
        theirs, _ = run_reference(script, work)
        ours = [resolve_host_mac(a) for a in compiled.argv]
        assert normalized_argv(ours) == normalized_argv(absolute_disks(theirs, work)), script
        # the relative disk path is kept, and said so
        assert any(w for w in imported.warnings if "relative" in w) or all(
            os.path.isabs(d.get("path", "/")) for d in imported.data["spec"].get("devices", []))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.stem for s in SCENARIOS])
def test_scenarios_import_with_their_board(scenario):
    text = scenario.read_text()
    if "POST_LAUNCHED_VM" not in text:
        pytest.skip("no post-launched VM")
    result = import_file(scenario, board=board_of(scenario))
    assert not result.errors
    for vm in result.specs:
        # v3's nested <cpu_affinity><pcpu><pcpu_id> is read
        assert vm.data["spec"]["cpu"]["affinity"]
        net = [d for d in vm.data["spec"].get("devices", []) if d["type"] == "virtio-net"]
        # XSD defaults: the empty <console/> is a stdio virtio-console; the seed keeps its host MAC part
        assert all(d["macSeed"] == "{hostMac}-" + vm.name for d in net)


def _scenario_with(tmp_path: Path, edit) -> Path:
    src = CORPUS / "scenarios" / "cfl-k700-i7__shared_launch_6user_vm.xml"
    path = tmp_path / "scenario.xml"
    path.write_text(edit(src.read_text()))
    return path


def test_duplicate_vm_names_are_an_error_naming_both(tmp_path):
    path = _scenario_with(tmp_path, lambda t: t.replace("<name>POST_STD_VM3</name>", "<name>POST_STD_VM2</name>"))
    result = import_file(path, board=CORPUS / "boards" / "cfl-k700-i7.xml")
    assert [s.name for s in result.specs].count("POST_STD_VM2") == 1
    (err,) = result.errors
    assert "vm 4 (POST_STD_VM2)" in err and "vm 3" in err and "unique" in err
    out = tmp_path / "out"
    res = runner.invoke(app, ["import", str(path), "--board", str(CORPUS / "boards" / "cfl-k700-i7.xml"),
                              "-o", str(out)])
    assert res.exit_code == 1 and "already used by vm 3" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s.name}.yaml" for s in result.specs)


def test_no_memory_and_stdio_twice_are_errors_naming_the_vm_while_siblings_import(tmp_path):
    def edit(text: str) -> str:
        vms = text.split("<vm id=")
        vms[2] = re.sub(r"<memory>.*?</memory>", "", vms[2], count=1, flags=re.S)  # POST_STD_VM1
        vms[4] = vms[4].replace("<vuart0>n</vuart0>", "<vuart0>y</vuart0>")  # POST_STD_VM2: com1 stdio too
        return "<vm id=".join(vms)

    result = import_file(_scenario_with(tmp_path, edit), board=CORPUS / "boards" / "cfl-k700-i7.xml")
    assert [s.name for s in result.specs] == ["POST_RT_VM1", "POST_STD_VM3", "POST_STD_VM4", "POST_STD_VM5"]
    memory, stdio = result.errors
    assert memory.startswith("vm 1 (POST_STD_VM1): not imported:") and "NoneM" in memory
    assert stdio.startswith("vm 3 (POST_STD_VM2): not imported:") and "stdio" in stdio


# -- MACs: acrn-dm's algorithm, across files -------------------------------------------------------


def test_acrn_mac_is_virtio_net_c_algorithm():
    # md5("4-0") starts 20 fd cf: every seedless NIC in slot 4, on every host
    assert acrn_mac(4, 0, None) == "00:16:3e:20:fd:cf"
    digest = hashlib.md5(b"4-0-00:1b:21:0a:0b:0c-POST_STD_VM1").digest()
    expected = "00:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])
    assert acrn_mac(4, 0, "00:1b:21:0a:0b:0c-POST_STD_VM1") == expected


def _write_imported(tmp_path: Path, drop_seed: bool) -> list[str]:
    result = import_file(CORPUS / "scenarios" / "generic_board__shared.xml",
                         board=CORPUS / "boards" / "generic_board.xml")
    files = []
    for vm in result.specs:
        for dev in vm.data["spec"]["devices"]:
            if drop_seed:
                dev.pop("macSeed", None)
        path = tmp_path / f"{vm.name}.yaml"
        path.write_text(yaml.safe_dump(vm.data))
        files.append(str(path))
    return files


def test_validate_across_files_reports_effective_mac_collisions(tmp_path):
    files = _write_imported(tmp_path, drop_seed=True)
    res = runner.invoke(app, ["validate", "--no-check-paths", *files])
    assert res.exit_code == 1
    assert "gets MAC 00:16:3e:20:fd:cf" in res.stderr and "POST_STD_VM1" in res.stderr
    # ACRN's own seeds (<host MAC>-<VM name>) keep them apart
    ok = tmp_path / "seeded"
    ok.mkdir()
    res = runner.invoke(app, ["validate", "--no-check-paths", *_write_imported(ok, drop_seed=False)])
    assert res.exit_code == 0, res.stderr


def test_qemu_engine_gives_the_guest_the_mac_acrn_dm_would(tmp_path):
    result = import_file(CORPUS / "scenarios" / "generic_board__shared.xml",
                         board=CORPUS / "boards" / "generic_board.xml")
    imported = result.specs[0]
    spec = load_spec_text(yaml.safe_dump(imported.data), str(tmp_path / "vm.yaml"), check_paths=False,
                          base_dir=tmp_path)
    vm = vm_from_spec(spec)
    (net,) = [d for d in vm.devices if isinstance(d, VirtioNet)]
    host_mac = read_host_mac()
    expected = acrn_mac(4, 0, f"{host_mac}-{imported.name}")
    assert net.qemu_mac(vm.name, 4) == expected
    other = "00:1b:21:0a:0b:0c"
    assert net.qemu_mac(vm.name, 4, host_mac=other) == acrn_mac(4, 0, f"{other}-{imported.name}")


# -- devices the generator writes in forms acrn-dm reads differently -------------------------------


def _one_vm_scenario(tmp_path: Path, virtio: str) -> Path:
    src = (CORPUS / "scenarios" / "generic_board__shared.xml").read_text()
    text = re.sub(r"(<name>POST_STD_VM1</name>.*?<virtio_devices>)(.*?)(</virtio_devices>)",
                  lambda m: m.group(1) + virtio + m.group(3), src, count=1, flags=re.S)
    path = tmp_path / "scenario.xml"
    path.write_text(text)
    return path


def test_virtio_input_id_is_the_serial_and_a_device_name_is_kept_symbolic(tmp_path):
    named = "Device name: AT Translated Set 2 keyboard, Device physical path: isa0060/serio0/input0"
    path = _one_vm_scenario(tmp_path, """
      <input><backend_device_file>/dev/input/event3</backend_device_file><id>kbd0</id></input>
      <input><backend_device_file>%s</backend_device_file></input>
      <gpu><display_type>Window</display_type></gpu>
      <block>/img/a.img</block>""" % named)
    result = import_file(path, board=CORPUS / "boards" / "generic_board.xml")
    vm = next(s for s in result.specs if s.name == "POST_STD_VM1")
    devices = vm.data["spec"]["devices"]
    # the template strips `id:`; virtio_input.c takes what follows the comma as the serial
    assert {"type": "virtio-input", "device": "/dev/input/event3", "serial": "kbd0"} in devices
    assert {"type": "virtio-input", "deviceName": "AT Translated Set 2 keyboard",
            "devicePhys": "isa0060/serio0/input0"} in devices
    assert any("virtio-gpu" in w and "display" in w for w in vm.warnings)
    assert not any(d["type"] == "virtio-gpu" for d in devices)
    # the blk is on 5, the GPU left out on 6 (its slot allocated, as the generator does)
    assert "slot" not in next(d for d in devices if d["type"] == "virtio-blk")

    # The launch script finds the evdev when it runs, as ACRN's template does; without a match the
    # device is left out and acrn-dm still runs.
    spec = load_spec_text(yaml.safe_dump(vm.data), str(tmp_path / "vm.yaml"), check_paths=False,
                          base_dir=tmp_path)
    compiled = compile_spec(spec, Board.load(CORPUS / "boards" / "generic_board.xml").host_profile())
    assert compiled.ok, compiled.errors
    script = render_script(compiled)
    for found in (True, False):
        work = tmp_path / f"found-{found}"
        work.mkdir()
        if found:
            for n, (name, phys) in enumerate([("Power Button", "PNP0C0C/button/input0"),
                                              ("AT Translated Set 2 keyboard", "isa0060/serio0/input0")], 2):
                d = work / "run/sys/class/input" / f"event{n}" / "device"
                d.mkdir(parents=True)
                (d / "name").write_text(name + "\n")
                (d / "phys").write_text(phys + "\n")
        proc, run = run_script(work, script, {0: 0, 2: 1}, nics={"eth0": "00:1b:21:0a:0b:0c"})
        assert proc.returncode == 0, proc.stderr
        argv = (run / "argv").read_bytes().decode().split("\0")[:-1]
        inputs = [a for a in argv if "virtio-input" in a]
        if found:
            assert inputs == ["3:0,virtio-input,/dev/input/event3,kbd0", "4:0,virtio-input,/dev/input/event3"]
        else:
            assert inputs == ["3:0,virtio-input,/dev/input/event3,kbd0"] and "not found" in proc.stderr
            assert argv[argv.index("5:0,virtio-blk,/img/a.img") - 1] == "-s"


def test_customized_parameters_quoted_into_one_word_are_read_as_acrn_dm_reads_them(tmp_path):
    script = (CORPUS / "reference" / "generic_board__shared" / "launch_user_vm_id2.sh").read_text()
    script = script.replace("    --ovmf /usr/share/acrn/bios/OVMF.fd\n",
                            "    '-k /home/acrn/bzImage -B \"root=/dev/vda rw\"'\n")
    path = tmp_path / "launch_user_vm_id2.sh"
    path.write_text(script)
    (vm,) = import_file(path).specs
    # getopt: -k with the rest of the word as its argument, as acrn-dm gets it; and said so
    assert vm.data["spec"]["boot"] == {"kernel": {"path": ' /home/acrn/bzImage -B "root=/dev/vda rw"'}}
    assert any("ONE argument" in w and "customized_parameters" in w for w in vm.warnings)
    # the scenario route splits them: what the user means
    src = (CORPUS / "scenarios" / "generic_board__shared.xml").read_text()
    src = src.replace("<vbootloader>y</vbootloader>", "<vbootloader>n</vbootloader><customized_parameters>"
                      "-k /home/acrn/bzImage -B \"root=/dev/vda rw\"</customized_parameters>")
    (tmp_path / "scenario.xml").write_text(src)
    result = import_file(tmp_path / "scenario.xml", board=CORPUS / "boards" / "generic_board.xml")
    for vm in result.specs:
        assert vm.data["spec"]["boot"] == {"kernel": {"path": "/home/acrn/bzImage", "cmdline": "root=/dev/vda rw"}}


def test_unknown_passthru_option_is_a_warning_not_a_lost_vm(tmp_path):
    script = (CORPUS / "reference" / "generic_board__shared" / "launch_user_vm_id1.sh").read_text()
    script = script.replace("add_passthrough_device                   2 0000:00:02.0",
                            "add_passthrough_device                   2 0000:00:02.0 frobnicate")
    path = tmp_path / "launch_user_vm_id1.sh"
    path.write_text(script)
    (vm,) = import_file(path).specs
    assert {"type": "passthru", "bdf": "00:02.0", "gpu": True} in vm.data["spec"]["devices"]
    assert any("frobnicate" in w and "ignores" in w for w in vm.warnings)


def test_base_dir_resolves_relative_disk_paths(tmp_path):
    script = CORPUS / "reference" / "generic_board__shared" / "launch_user_vm_id1.sh"
    (vm,) = import_file(script).specs
    assert {"type": "virtio-blk", "path": "./win10-ltsc.img"} in vm.data["spec"]["devices"]
    assert any("relative path" in w for w in vm.warnings)
    (vm,) = import_file(script, base_dir=tmp_path).specs
    assert {"type": "virtio-blk", "path": str(tmp_path / "win10-ltsc.img")} in vm.data["spec"]["devices"]
    assert any("--base-dir" in w for w in vm.warnings)
    res = runner.invoke(app, ["import", str(script), "--base-dir", str(tmp_path)])
    assert res.exit_code == 0 and str(tmp_path / "win10-ltsc.img") in res.stdout


def test_a_vm_that_owns_its_pcpus_has_them_offlined_as_the_template_does(tmp_path):
    board = CORPUS / "boards" / "generic_board.xml"
    host = Board.load(board).host_profile()
    ref = (CORPUS / "reference" / "generic_board__shared" / "launch_user_vm_id1.sh").read_text()
    for variable in ("own_pcpu='y'", "scheduler='SCHED_NOOP'"):
        work = tmp_path / variable.split("=")[0]
        work.mkdir()
        text = ref.replace("own_pcpu='n'", variable) if "own" in variable else ref.replace(
            "scheduler='SCHED_BVT'", variable)
        script = work / "launch_user_vm_id1.sh"
        script.write_text(text)
        _argv, log = run_reference(script, work)
        offlined = [int(c) for line in log if line.startswith("offline_cpus") for c in line.split()[1:]]
        assert offlined == [0, 2]
        (vm,) = import_file(script).specs
        assert vm.data["spec"]["cpu"]["ownPcpu"] is True
        spec = load_spec_text(yaml.safe_dump(vm.data), str(work / "vm.yaml"), check_paths=False, base_dir=work)
        compiled = compile_spec(spec, host)
        assert compiled.cpus == offlined
        proc, run = run_script(work, render_script(compiled), {lapic: n for n, lapic in enumerate(host.lapic_ids)},
                               nics={"eth0": "00:1b:21:0a:0b:0c"}, pci=tuple(compiled.passthru))
        assert proc.returncode == 0 and "processor 0 can't be offline" in proc.stderr
        assert (run / "sys/devices/system/cpu/cpu1/online").read_text().strip() == "0"  # LAPIC 2
        assert (run / "sys/devices/system/cpu/cpu0/online").read_text().strip() == "1"
    # the scenario route: <own_pcpu>y</own_pcpu>
    src = (CORPUS / "scenarios" / "generic_board__shared.xml").read_text()
    src = src.replace("<vuart0>n</vuart0>", "<vuart0>n</vuart0><own_pcpu>y</own_pcpu>", 1)
    (tmp_path / "scenario.xml").write_text(src)
    result = import_file(tmp_path / "scenario.xml", board=board)
    assert result.specs[0].data["spec"]["cpu"].get("ownPcpu") is True
    assert "ownPcpu" not in result.specs[1].data["spec"]["cpu"]


@pytest.mark.parametrize("flavor", ["qemu", "acrn"])
def test_imported_vms_survive_a_libvirt_round_trip(tmp_path, flavor):
    """spec -> export (libvirt) -> import -> render: the same acrn-dm argv, for every imported VM."""
    host = tmp_path / "host.yaml"
    host.write_text(yaml.safe_dump(Board.load(CORPUS / "boards" / "cfl-k700-i7.xml").host_profile().to_dict()))
    for scenario in SCENARIOS:
        if "POST_LAUNCHED_VM" not in scenario.read_text():
            continue
        out = tmp_path / scenario.stem
        res = runner.invoke(app, ["import", str(scenario), "--board", str(board_of(scenario)), "-o", str(out)])
        assert res.exit_code == 0, res.output
        for spec in sorted(out.glob("*.yaml")):
            exported = runner.invoke(app, ["export", str(spec), "--flavor", flavor, "--host", str(host),
                                           "--no-check-paths"])
            assert exported.exit_code == 0, exported.output
            back = out / flavor / spec.stem
            back.mkdir(parents=True)
            (back / "domain.xml").write_text(exported.stdout)
            res = runner.invoke(app, ["import", str(back / "domain.xml"), "-o", str(back)])
            assert res.exit_code == 0, res.output
            argv = []
            for path in (spec, back / f"{spec.stem}.yaml"):
                rendered = runner.invoke(app, ["render", str(path), "--no-check-paths", "--host", str(host)])
                assert rendered.exit_code == 0, rendered.output
                argv.append(rendered.stdout)
            assert argv[0] == argv[1], (scenario.stem, spec.stem)


def test_a_kernel_vhost_network_imports_and_renders_as_acrn_dm_runs_the_generators_argv(tmp_path):
    """launch_cfg_gen.py writes `tap=<if>,vhost,mac_seed=${mac:0:17}-<VM>` for a "Kernel based (Virtual
    Host)" network. virtio_net.c takes mac_seed= only right after tap=<name>, so behind `vhost` the seed
    is ignored and the MAC comes from slot and function alone: two such VMs on one slot collide."""
    framework = "<virtio_framework>Kernel based (Virtual Host)</virtio_framework>"
    path = _scenario_with(tmp_path, lambda t: t.replace("<interface_name>YaaG3</interface_name>",
                                                        framework + "<interface_name>YaaG3</interface_name>")
                          .replace("<interface_name>YaaG4</interface_name>",
                                   framework + "<interface_name>YaaG4</interface_name>"))
    board = CORPUS / "boards" / "cfl-k700-i7.xml"
    host = Board.load(board).host_profile()
    result = import_file(path, board=board)
    by_name = {s.name: s for s in result.specs}
    out = []
    vhost_vms = [s.name for s in result.specs if any(",vhost," in a for a in s.source_argv or [])]
    assert len(vhost_vms) == 2
    for name in vhost_vms:
        spec = by_name[name]
        generator_word = next(a for a in spec.source_argv if a.startswith(f"{a.split(',')[0]},virtio-net,"))
        tap = re.fullmatch(rf"tap=(YaaG\d),vhost,mac_seed=\{{hostMac\}}-{name}", generator_word.split(",", 2)[2])[1]
        (nic,) = [d for d in spec.data["spec"]["devices"] if d["type"] == "virtio-net"]
        assert nic["backend"] == "vhost" and "macSeed" not in nic
        assert any("the seed is ignored" in w for w in spec.warnings)
        work = tmp_path / name
        work.mkdir()
        loaded = load_spec_text(yaml.safe_dump(spec.data), str(work / f"{name}.yaml"), check_paths=False,
                                base_dir=work)
        compiled = compile_spec(loaded, host)
        assert compiled.ok, compiled.errors
        assert f"{generator_word.split(',')[0]}:0,virtio-net,tap={tap},vhost" in compiled.argv
        assert normalized_argv(compiled.argv) == normalized_argv(absolute_disks(spec.source_argv, work))
        (target,) = vm_from_spec(loaded).devices_of(VirtioNet)
        slot = int(generator_word.split(",")[0])
        assert target.qemu_mac(name, slot, "00:1b:21:0a:0b:0c") == acrn_mac(slot, 0, None)
        (work / f"{name}.yaml").write_text(yaml.safe_dump(spec.data))
        out.append(str(work / f"{name}.yaml"))
    res = runner.invoke(app, ["validate", "--no-check-paths", *out])
    assert res.exit_code == 1 and "POST_STD_VM3" in res.stderr, res.stderr


def test_a_generated_vhost_launch_script_imports_and_renders_what_bash_hands_acrn_dm(tmp_path):
    """The reference script with the one change launch_cfg_gen.py makes for a kernel vhost network
    (`vhost` before the seed), run by bash with its helpers stubbed: our render of its import is the
    same VM to acrn-dm (the ignored seed left out), and gets the MAC acrn-dm derives without a seed."""
    ref = CORPUS / "reference" / "generic_board__shared" / "launch_user_vm_id1.sh"
    text = ref.read_text()
    assert "4 virtio-net tap=WaaG,mac_seed=${mac:0:17}-POST_STD_VM1`" in text
    script = tmp_path / "launch_user_vm_id1.sh"
    script.write_text(text.replace("tap=WaaG,mac_seed=", "tap=WaaG,vhost,mac_seed="))
    (imported,) = import_file(script).specs
    (nic,) = [d for d in imported.data["spec"]["devices"] if d["type"] == "virtio-net"]
    assert nic["backend"] == "vhost" and "macSeed" not in nic
    work = tmp_path / "work"
    work.mkdir()
    spec = load_spec_text(yaml.safe_dump(imported.data), str(work / "vm.yaml"), check_paths=False, base_dir=work)
    compiled = compile_spec(spec, Board.load(CORPUS / "boards" / "generic_board.xml").host_profile())
    assert compiled.ok, compiled.errors
    assert "4:0,virtio-net,tap=WaaG,vhost" in compiled.argv
    theirs, _ = run_reference(script, work)
    assert any(a.startswith("4,virtio-net,tap=WaaG,vhost,mac_seed=") for a in theirs)
    assert normalized_argv(compiled.argv) == normalized_argv(absolute_disks(theirs, work))
    (device,) = vm_from_spec(spec).devices_of(VirtioNet)
    assert device.qemu_mac("POST_STD_VM1", 4) == acrn_mac(4, 0, None)
