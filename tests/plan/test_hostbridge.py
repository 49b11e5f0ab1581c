"""settings.hostbridge: acrn-dm's `hostbridge` (what ACRN's launch script generator always writes) or its
`amd_hostbridge` (devicemodel/hw/pci/hostbridge.c: the same bridge with AMD's vendor ID 0x1022)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml

from acrnmgr.host import HostProfile
from acrnmgr.importers import import_file
from acrnmgr.importers.dm_argv import normalized_argv, spec_from_argv
from acrnmgr.lifecycle.qemu_argv import compile_qemu
from acrnmgr.render.acrndm import compile_spec
from acrnmgr.render.grammar import parse_argv
from acrnmgr.spec.validation import load_spec_text

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "acrn-corpus"
HOST = HostProfile(is_service_vm=True, hsm_device="/dev/acrn_hsm", acrn_dm="/usr/bin/acrn-dm", acrn_dm_version="3.x",
                   cpu_count=4, lapic_ids=[0, 2, 4, 6])


def load(settings: str = ""):
    return load_spec_text(textwrap.dedent("""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {name: hb}
        spec:
          cpu: {affinity: [2]}
          memory: 256M
          boot: {kernel: {path: /k}}
          devices: [{type: virtio-rnd}]
        """) + settings, "hb.yaml", check_paths=False, base_dir="/vm")


def slots_of(argv):
    return [a for i, a in enumerate(argv) if argv[i - 1] == "-s"]


def test_default_is_acrns_hostbridge_and_amd_is_amd_hostbridge():
    assert slots_of(compile_spec(load(), HOST).argv)[0] == "0:0,hostbridge"
    amd = compile_spec(load("  settings: {hostbridge: amd}\n"), HOST)
    assert amd.ok, amd.errors
    assert slots_of(amd.argv)[0] == "0:0,amd_hostbridge" and "0:0,hostbridge" not in slots_of(amd.argv)
    assert parse_argv(amd.argv).slot(0).emul == "amd_hostbridge"  # acrn-dm's grammar takes it


def test_amd_hostbridge_imports_as_the_setting_and_renders_back():
    argv = compile_spec(load("  settings: {hostbridge: amd}\n"), HOST).argv
    imported = spec_from_argv(argv)
    assert imported.data["spec"]["settings"] == {"hostbridge": "amd"}
    assert "devices" in imported.data["spec"] and not imported.data["spec"].get("extraArgs")
    back = compile_spec(load_spec_text(yaml.safe_dump(imported.data), "b.yaml", check_paths=False), HOST)
    assert normalized_argv(back.argv) == normalized_argv(argv)


def test_the_qemu_engine_says_its_host_bridge_is_its_own(tmp_path):
    plan = compile_qemu(load("  settings: {hostbridge: amd}\n"), HostProfile(qemu="qemu-system-x86_64"), tmp_path)
    assert plan.errors == []
    assert any("hostbridge: amd applies to acrn-dm" in w for w in plan.warnings), plan.warnings


def test_an_amd_board_imports_as_acrns_generator_writes_it_with_a_warning(tmp_path):
    board = tmp_path / "amd_board.xml"
    text = (CORPUS / "boards" / "generic_board.xml").read_text()
    board.write_text(text.replace("11th Gen Intel(R) Core(TM) i7-1185GRE", "AMD Ryzen Embedded V2748"))
    result = import_file(CORPUS / "scenarios" / "generic_board__shared.xml", board=board)
    assert any("AMD" in w and "hostbridge: amd" in w for w in result.warnings)
    assert all("hostbridge" not in (s.data["spec"].get("settings") or {}) for s in result.specs)
    plain = import_file(CORPUS / "scenarios" / "generic_board__shared.xml",
                        board=CORPUS / "boards" / "generic_board.xml")
    assert not any("hostbridge: amd" in w for w in plain.warnings)
