"""plan, render, export and the launch `up` makes come from one Plan: for every example and every engine they
name the same slots and backends, the same argv, and fail with the same errors."""

from __future__ import annotations

import dataclasses
import json
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acrnmgr.cli import app
from acrnmgr.devices import vm_from_spec
from acrnmgr.host import HostProfile
from acrnmgr.libvirt.engine import LibvirtEngine
from acrnmgr.lifecycle.acrn import AcrnEngine
from acrnmgr.lifecycle.errors import PlanError
from acrnmgr.lifecycle.qemu import QemuEngine
from acrnmgr.lifecycle.state import VmState
from acrnmgr.spec.validation import load_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SOS = ROOT / "examples/hosts/acrn-service-vm.yaml"
BOX = ROOT / "examples/hosts/plain-box.yaml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def state_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ACRNMGR_STATE_DIR", str(tmp_path / "state"))


def cli(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_acrn_engine_plan_render_and_up_agree(example):
    host = HostProfile.from_file(SOS)
    planned = cli("plan", str(example), "--engine", "acrn", "--host", str(SOS), "--no-check-paths", "--output", "json")
    rendered = cli("render", str(example), "--engine", "acrn", "--host", str(SOS), "--no-check-paths",
                   "--format", "json")
    report = json.loads(planned.stdout)
    vm = vm_from_spec(load_spec(example, check_paths=False))
    if not report["ok"]:
        assert rendered.exit_code == 1
        with pytest.raises(PlanError) as exc:
            AcrnEngine().plan(vm, host, VmState(vm.name))
        for error in report["errors"]:
            assert error["message"] in rendered.stderr and error["message"] in str(exc.value)
        return
    compiled = json.loads(rendered.stdout)
    assert [(d["name"], d["slot"], d["backend"]) for d in report["devices"]] == \
        [(d["name"], d["slot"], d["backend"]) for d in compiled["devices"]]
    launch = AcrnEngine().plan(vm, host, VmState(vm.name))
    assert launch.main.argv[1:] == compiled["argv"][1:]  # the engine runs acrn-dm from where the host has it
    argv_line = cli("render", str(example), "--engine", "acrn", "--host", str(SOS), "--no-check-paths").stdout
    assert shlex.split(argv_line) == compiled["argv"]
    xml = cli("export", str(example), "--flavor", "acrn", "--host", str(SOS), "--no-check-paths")
    assert xml.exit_code == 0, xml.output
    _assert_domain_matches(ET.fromstring(xml.stdout), report["devices"])


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_qemu_engine_plan_render_up_and_export_agree(example):
    # the live host, as `up` plans for it (the KVM probe included)
    planned = cli("plan", str(example), "--engine", "qemu", "--no-check-paths", "--output", "json")
    rendered = cli("render", str(example), "--engine", "qemu", "--no-check-paths", "--format", "json")
    report = json.loads(planned.stdout)
    vm = vm_from_spec(load_spec(example, check_paths=False))
    engine = QemuEngine()
    if not report["ok"]:
        assert rendered.exit_code == 1
        with pytest.raises(PlanError) as exc:
            engine.plan(vm, HostProfile.detect(), VmState(vm.name))
        for error in report["errors"]:
            assert error["message"] in rendered.stderr and error["message"] in str(exc.value)
        return
    out = json.loads(rendered.stdout)
    assert [(d["name"], d["slot"], d["backend"]) for d in report["devices"]] == \
        [(d["name"], d["slot"], d["backend"]) for d in out["devices"]]
    launch = engine.plan(vm, HostProfile.detect(), VmState(vm.name))
    assert launch.main.argv == out["argv"]
    assert [(p.name, p.argv) for p in launch.processes if p.role != "main"] == \
        [(h["name"], h["argv"]) for h in out["helpers"]]
    # the libvirt engine defines the domain `export` prints (the same sockets for the embedded devices)
    box = dataclasses.replace(HostProfile.from_file(BOX), kvm=False)
    exported = cli("export", str(example), "--flavor", "qemu", "--host", str(BOX), "--no-check-paths")
    domain = LibvirtEngine("test:///default").planned_lines(vm, box)
    assert exported.exit_code == 0, exported.output
    root = ET.fromstring(exported.stdout)
    assert ET.tostring(ET.fromstring("\n".join(domain)).find("devices")) == ET.tostring(root.find("devices"))
    box_report = json.loads(cli("plan", str(example), "--engine", "qemu", "--host", str(BOX), "--no-check-paths",
                                "--output", "json").stdout)
    _assert_domain_matches(root, box_report["devices"])


def _assert_domain_matches(root: ET.Element, devices: list[dict]) -> None:
    """Every PCI address in the domain is a planned slot, and embedded devices are vhost-user elements."""
    slots = {d["slot"] for d in devices}
    addresses = {int(a.get("slot"), 16) for a in root.iter("address") if a.get("type") == "pci"}
    assert addresses <= slots
    embedded = sum(1 for d in devices if d["backend"] == "embedded" and d["type"] in ("virtio-blk", "virtio-net"))
    vhost_user = sum(1 for el in root.find("devices") if el.get("type") in ("vhostuser",))
    assert vhost_user == embedded
