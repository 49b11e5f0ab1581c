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
from acrnmgr.devices import vm_from_spec
from acrnmgr.spec.validation import load_spec

ROOT = Path(__file__).resolve().parents[2]
URI = "test:///default"
runner = CliRunner()
engine = LibvirtEngine(URI)


def up(path) -> dict:
    return engine.up(vm_from_spec(load_spec(path)), HostProfile.detect())


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


def test_list_apply_and_diff_work_with_the_libvirt_engine(conn, tmp_path, monkeypatch):
    monkeypatch.setenv("ACRNMGR_STATE_DIR", str(tmp_path / "state"))
    specs = tmp_path / "specs"
    specs.mkdir()
    one = (ROOT / "examples/linux-vm.yaml").read_text().replace("images/", str(ROOT / "examples/images") + "/")
    # two documents in one file: up takes the loaded specs, nothing is written to disk for them
    (specs / "vms.yaml").write_text(one + "---\n" + one.replace("name: linux-demo", "name: linux-qemu"))
    res = runner.invoke(app, ["diff", str(specs), "--connect", URI, "--exit-code"])
    assert res.exit_code == 3 and "# linux-demo: create" in res.stdout and "+<domain" in res.stdout, res.output
    res = runner.invoke(app, ["apply", str(specs), "--connect", URI, "--output", "json"])
    assert res.exit_code == 0, res.output
    assert {c["name"]: (c["action"], c["engine"], c["result"]) for c in json.loads(res.stdout)["changes"]} == {
        "linux-demo": ("create", "libvirt", "done"), "linux-qemu": ("create", "libvirt", "done")}
    assert conn.lookupByName("linux-demo").isActive() and conn.lookupByName("linux-qemu").isActive()
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["apply.lock"]
    res = runner.invoke(app, ["diff", str(specs), "--connect", URI, "--exit-code"])
    assert res.exit_code == 0, res.output

    res = runner.invoke(app, ["list", "--connect", URI, "--output", "json"])
    assert res.exit_code == 0, res.output
    listed = {v["name"]: (v["engine"], v["state"]) for v in json.loads(res.stdout)}
    assert listed == {"linux-demo": ("libvirt", "running"), "linux-qemu": ("libvirt", "running")}

    (specs / "vms.yaml").write_text(one)
    res = runner.invoke(app, ["apply", str(specs), "--connect", URI, "--prune", "--output", "json"])
    assert res.exit_code == 0, res.output
    assert {c["name"]: (c["action"], c["result"]) for c in json.loads(res.stdout)["changes"]} == {
        "linux-demo": ("unchanged", None), "linux-qemu": ("prune", "done")}
    assert not conn.lookupByName("linux-qemu").isActive()


def test_connect_is_an_option_of_the_libvirt_engine_only(tmp_path):
    res = runner.invoke(app, ["up", str(ROOT / "examples/linux-vm.yaml"), "--engine", "qemu", "--connect", URI])
    assert res.exit_code == 1 and "the qemu engine does not take uri" in res.stderr


def test_spec_uuid_is_the_domains_and_a_different_one_is_refused_not_ignored(conn, tmp_path):
    from acrnmgr.lifecycle.errors import LifecycleError

    text = (ROOT / "examples/linux-vm.yaml").read_text()
    (tmp_path / "images").symlink_to(ROOT / "examples" / "images")
    first = tmp_path / "a.yaml"
    first.write_text(text.replace("spec:\n", "spec:\n  uuid: 3e3fce45-4f53-4fa7-bb32-11f34168b82b\n", 1))
    up(first)
    dom = conn.lookupByName("linux-demo")
    assert dom.UUIDString() == "3e3fce45-4f53-4fa7-bb32-11f34168b82b"
    dom.destroy()
    other = tmp_path / "b.yaml"
    other.write_text(text.replace("spec:\n", "spec:\n  uuid: 11111111-2222-3333-4444-555555555555\n", 1))
    with pytest.raises(LifecycleError, match="libvirt cannot change a domain's UUID"):
        up(other)
    assert conn.lookupByName("linux-demo").UUIDString() == "3e3fce45-4f53-4fa7-bb32-11f34168b82b"
