"""Without libvirt-python (the `libvirt` extra) the libvirt engine says how to install it, never a
traceback; export and import of domain XML need only the standard library and keep working."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acrnmgr.cli import app
from acrnmgr.libvirt import watch

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "examples/linux-vm.yaml")
HOST = str(ROOT / "examples/hosts/acrn-service-vm.yaml")
URI = "test:///default"
HINT = "pip install 'acrnmgr[libvirt]'"
runner = CliRunner()


@pytest.fixture(autouse=True)
def no_libvirt_python(monkeypatch):
    """`import libvirt` fails as in a venv without libvirt-python (None in sys.modules halts the import)."""
    monkeypatch.setitem(sys.modules, "libvirt", None)


@pytest.mark.parametrize("argv", [
    ["up", SPEC, "--host", HOST, "--connect", URI],
    ["down", "linux-demo", "--connect", URI],
    ["down", "--all", "--connect", URI],
    ["status", "linux-demo", "--connect", URI],
    ["status", "--connect", URI],
], ids=["up", "down", "down-all", "status", "status-all"])
def test_the_engine_asks_for_the_extra(argv):
    res = runner.invoke(app, argv)
    assert res.exit_code == 1
    why = "import of libvirt halted; None in sys.modules"  # what Python says for a None in sys.modules
    assert res.stderr == f"error: the libvirt engine needs libvirt-python ({why}): {HINT}\n"


def test_the_domain_watcher_asks_for_the_extra(capsys):
    assert watch.main([URI, "linux-demo"]) == 1
    assert HINT in capsys.readouterr().out


def test_export_and_import_need_no_libvirt_python(tmp_path):
    res = runner.invoke(app, ["export", SPEC, "--host", HOST, "--no-check-paths"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("<domain")
    xml = tmp_path / "linux-demo.xml"
    xml.write_text(res.stdout)
    res = runner.invoke(app, ["import", str(xml)])
    assert res.exit_code == 0, res.output
    assert "name: linux-demo" in res.stdout
