"""Desired state loading: recursion, multi-document YAML with real line numbers, overlays with
JSON merge patches (RFC 7386), and the plan against an empty live state."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from acrnmgr.cli import app
from acrnmgr.gitops.desired import load_desired, merge_patch

runner = CliRunner()
KERNEL = Path(__file__).resolve().parents[2] / "examples/images/bzImage"


def vm(name: str, memory: str = "512M", cpu: int = 0) -> str:
    return textwrap.dedent(f"""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {{name: {name}}}
        spec:
          cpu: {{affinity: [{cpu}]}}
          memory: {memory}
          boot: {{kernel: {{path: {KERNEL}}}}}
        """)


def test_merge_patch_rfc7386():
    merged = merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}})
    assert merged == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert merge_patch({"a": 1}, {"b": {"c": None}}) == {"a": 1, "b": {}}


def test_recursive_and_multi_document(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.yaml").write_text(vm("one"))
    (tmp_path / "many.yaml").write_text(vm("two") + "---\n" + vm("three", "1G"))
    desired = load_desired(tmp_path)
    assert desired.errors == []
    assert sorted(v.name for v in desired.vms) == ["one", "three", "two"]
    three = next(v for v in desired.vms if v.name == "three")
    assert three.source.endswith("many.yaml#2") and three.vm.memory == 1 << 30


def test_errors_in_a_multi_document_file_name_file_and_line(tmp_path):
    (tmp_path / "many.yaml").write_text(vm("two") + "---\n" + vm("three").replace("memory: 512M", "memory: lots"))
    desired = load_desired(tmp_path)
    (err,) = [d for d in desired.errors if "memory" in d.json_path]
    assert err.file == str(tmp_path / "many.yaml")
    assert err.line == 8 + 6  # document 2 starts on line 9; memory is its 6th line


def test_duplicate_names_are_an_error(tmp_path):
    (tmp_path / "x.yaml").write_text(vm("same"))
    (tmp_path / "y.yaml").write_text(vm("same"))
    assert any("defined twice" in d.message for d in load_desired(tmp_path).errors)


def test_overlay_patches_its_resources(tmp_path):
    base = tmp_path / "base"
    host = tmp_path / "hosts" / "box1"
    base.mkdir()
    host.mkdir(parents=True)
    (base / "web.yaml").write_text(vm("web"))
    (base / "db.yaml").write_text(vm("db"))
    (host / "kustomization.yaml").write_text("resources: [../../base]\npatches:\n  - path: web-memory.yaml\n"
                                             "  - patch: {metadata: {name: db}, spec: {cpu: {affinity: [1]}}}\n")
    (host / "web-memory.yaml").write_text("metadata: {name: web, labels: {host: box1}}\nspec: {memory: 2G}\n")
    desired = load_desired(tmp_path)
    assert desired.errors == []
    by = {v.name: v for v in desired.vms}
    assert sorted(by) == ["db", "web"]  # base/ is claimed by the overlay: not loaded twice
    assert by["web"].vm.memory == 2 << 30 and by["web"].vm.labels == {"host": "box1"}
    assert by["db"].vm.affinity == (1,)


def test_overlay_patch_for_an_unknown_vm_is_an_error(tmp_path):
    (tmp_path / "base.yaml").write_text(vm("web"))
    o = tmp_path / "o"
    o.mkdir()
    (o / "kustomization.yaml").write_text("resources: [../base.yaml]\npatches:\n  - patch: {metadata: {name: wbe}}\n")
    errors = load_desired(tmp_path).errors
    assert any("no such VM" in d.message and d.file.endswith("kustomization.yaml") for d in errors)


def test_cli_plan_against_empty_live_state(tmp_path, monkeypatch):
    monkeypatch.setenv("ACRNMGR_STATE_DIR", str(tmp_path / "state"))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "one.yaml").write_text(vm("one"))
    host = tmp_path / "host.yaml"
    host.write_text("kvm: false\nnet_tun: true\nlapic_ids: [0, 1]\nqemu: /usr/bin/qemu-system-x86_64\n")
    res = runner.invoke(app, ["apply", str(specs), "--dry-run", "--output", "json", "--engine", "qemu",
                              "--host", str(host)])
    assert res.exit_code == 0, res.output
    (change,) = json.loads(res.stdout)["changes"]
    assert change["action"] == "create" and change["result"] is None
    assert any(line.startswith("+-m ") for line in change["diff"])
    res = runner.invoke(app, ["diff", str(specs), "--exit-code", "--engine", "qemu", "--host", str(host)])
    assert res.exit_code == 3 and "# one: create" in res.stdout
    res = runner.invoke(app, ["diff", str(specs), "--engine", "qemu", "--host", str(host)])
    assert res.exit_code == 0


def test_cli_invalid_dir_is_exit_1(tmp_path):
    (tmp_path / "bad.yaml").write_text("apiVersion: acrnmgr/v1\nkind: VM\nmetadata: {name: x}\nspec: {memroy: 1G}\n")
    res = runner.invoke(app, ["apply", str(tmp_path)])
    assert res.exit_code == 1 and "bad.yaml:4" in res.stderr and "nothing was changed" in res.stderr
