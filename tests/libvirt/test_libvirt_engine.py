"""up / status / down through libvirt on test:///default (in-process: the test driver keeps its
domains only while a connection to it is open, and the engine caches its connection)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acrnmgr.cli import app
from acrnmgr.host import HostProfile
from acrnmgr.libvirt.engine import LibvirtEngine, connect
from acrnmgr.spec.loader import load_spec

ROOT = Path(__file__).resolve().parents[2]
URI = "test:///default"
runner = CliRunner()
engine = LibvirtEngine(URI)


def up(path) -> dict:
    return engine.up(load_spec(path), HostProfile.detect())


@pytest.fixture
def conn():
    c = connect(URI)
    yield c
    for dom in c.listAllDomains():
        if dom.name() in ("linux-demo", "linux-qemu"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def test_up_status_down_through_the_cli(conn):
    spec = str(ROOT / "examples/linux-vm.yaml")
    res = runner.invoke(app, ["up", spec, "--connect", URI])
    assert res.exit_code == 0, res.output
    assert "defined linux-demo" in res.stderr
    dom = conn.lookupByName("linux-demo")
    assert dom.isActive()

    res = runner.invoke(app, ["status", "linux-demo", "--connect", URI, "--output", "json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    assert st["state"] == "running" and st["engine"] == "libvirt" and len(st["spec_hash"]) == 64

    # idempotent: same spec -> unchanged
    res = runner.invoke(app, ["up", spec, "--engine", "libvirt", "--connect", URI])
    assert res.exit_code == 0 and "already running" in res.stderr

    res = runner.invoke(app, ["down", "linux-demo", "--connect", URI, "--timeout", "5"])
    assert res.exit_code == 0, res.output
    assert "stopped (graceful)" in res.stderr
    assert not dom.isActive()
    assert engine.status("linux-demo")["state"] == "stopped"

    # down of a stopped VM succeeds
    res = runner.invoke(app, ["down", "linux-demo", "--connect", URI])
    assert res.exit_code == 0 and "not running" in res.stderr


def test_force_destroys(conn):
    up(ROOT / "examples/linux-qemu.yaml")
    result = engine.down("linux-qemu", force=True)
    assert result == {"name": "linux-qemu", "action": "stopped", "how": "forced"}
    assert not conn.lookupByName("linux-qemu").isActive()


def test_running_with_another_spec_is_refused(conn, tmp_path):
    up(ROOT / "examples/linux-vm.yaml")
    changed = tmp_path / "vm.yaml"
    changed.write_text((ROOT / "examples/linux-vm.yaml").read_text().replace("memory: 1G", "memory: 2G")
                       .replace("images/", str(ROOT / "examples/images") + "/"))
    res = runner.invoke(app, ["up", str(changed), "--connect", URI])
    assert res.exit_code == 1 and "different spec" in res.stderr and "Traceback" not in res.stderr


def test_unknown_domain_and_bad_uri_are_clear_errors():
    res = runner.invoke(app, ["status", "nope", "--connect", URI])
    assert res.exit_code == 1 and "no domain named nope" in res.stderr
    res = runner.invoke(app, ["status", "x", "--connect", "bogus:///nothing"])
    assert res.exit_code == 1 and "cannot connect to libvirt" in res.stderr


def test_up_again_after_down_redefines_the_same_domain(conn):
    # The domain stays defined after down; defining it again must keep its UUID or libvirt refuses it.
    spec = str(ROOT / "examples/linux-vm.yaml")
    up(spec)
    uuid = conn.lookupByName("linux-demo").UUIDString()
    engine.down("linux-demo", force=True)
    assert up(spec)["action"] == "started"
    assert conn.lookupByName("linux-demo").UUIDString() == uuid
