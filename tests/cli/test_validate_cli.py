"""`acrnmgr validate` and `acrnmgr schema` through the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.spec.helpers import HEAD, devices_text, pos

ACRNMGR = Path(sys.executable).with_name("acrnmgr")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str, cwd=None, stdin: str | None = None) -> subprocess.CompletedProcess:
    exe = [str(ACRNMGR)] if ACRNMGR.exists() else [sys.executable, "-m", "acrnmgr.cli"]
    return subprocess.run(exe + list(args), capture_output=True, text=True, cwd=cwd, timeout=60, input=stdin)


def test_valid_file_exit_0(tmp_path):
    f = tmp_path / "vm.yaml"
    f.write_text(devices_text("- type: virtio-rnd"))
    r = run("validate", str(f), "--no-check-paths")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1 of 1 file valid"


def test_examples_validate_via_cli():
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    r = run("validate", *files)
    assert r.returncode == 0, r.stderr
    r = run("validate", *files, "--host", str(EXAMPLES / "hosts" / "acrn-service-vm.yaml"), "--output", "json")
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["ok"] is True


def test_invalid_spec_gcc_style_lines(tmp_path):
    text = devices_text("- type: virtio-blkk\n  path: a.img\n- type: virtio-rnd\n  slot: 1")
    f = tmp_path / "vm.yaml"
    f.write_text(text)
    r = run("validate", str(f), "--no-check-paths")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    line, col = pos(text, "virtio-blkk")
    assert lines[0] == (f"{f}:{line}:{col}: error: spec.devices[0].type: unknown device type `virtio-blkk` "
                        "(hint: did you mean `virtio-blk`?)")
    assert lines[1].startswith(f"{f}:{pos(text, 'slot: 1', '1')[0]}:")
    assert "slot 1 is reserved for the LPC bridge" in lines[1]
    assert lines[-1] == "0 of 1 file valid; 2 errors, 0 warnings"
    assert "Traceback" not in r.stderr + r.stdout


def test_json_output(tmp_path):
    f = tmp_path / "vm.yaml"
    f.write_text(HEAD.replace("memory: 1G", "memory: 64M"))
    r = run("validate", str(f), "--no-check-paths", "--output", "json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["errors"] == 1 and report["warnings"] == 0
    assert report["files"] == [{"file": str(f), "ok": False}]
    d = report["diagnostics"][0]
    assert (d["line"], d["col"], d["json_path"]) == (8, 11, "spec.memory")
    assert "below acrn-dm's minimum of 128M" in d["message"]


def test_cross_file_via_cli(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(devices_text("- type: vhost-vsock\n  cid: 7"))
    b.write_text(devices_text("- type: vhost-vsock\n  cid: 7").replace("name: t1", "name: t2"))
    r = run("validate", str(a), str(b), "--no-check-paths")
    assert r.returncode == 1
    assert f"{b}:14:12: error: spec.devices[0].cid: vsock CID 7 is also used by VM `t1` ({a}:14)" in r.stderr
    assert "1 of 2 files valid" in r.stderr


def test_host_profile_affinity(tmp_path):
    f = tmp_path / "vm.yaml"
    f.write_text(HEAD.replace("affinity: [1, 2]", "affinity: [1, 9]"))
    host = tmp_path / "host.yaml"
    host.write_text("lapic_ids: [0, 1, 2, 3]\n")
    r = run("validate", str(f), "--no-check-paths", "--host", str(host))
    assert r.returncode == 1
    assert ("spec.cpu.affinity[1]: LAPIC ID 9 is not a CPU of this host (hint: the host's LAPIC IDs are 0, 1, 2, 3)"
            in r.stderr)


def test_paths_are_checked_unless_disabled(tmp_path):
    f = tmp_path / "vm.yaml"
    f.write_text(HEAD)
    r = run("validate", str(f))
    assert r.returncode == 1 and "spec.boot.kernel.path: `bzImage` does not exist" in r.stderr
    (tmp_path / "bzImage").write_bytes(b"")
    assert run("validate", str(f)).returncode == 0


BAD_INPUTS = {
    "malformed.yaml": b"apiVersion: acrnmgr/v1\nkind: [VM\n",
    "wrong-types.yaml": b"apiVersion: 1\nkind: true\nmetadata: []\nspec: 5\n",
    "garbage.yaml": bytes(range(256)) * 4,
    "random.bin": os.urandom(2048),
    "empty.yaml": b"",
    "list.yaml": b"- a\n- b\n",
    "huge-int.yaml": b"apiVersion: " + b"7" * 6000 + b"\n",
    "latin1.yaml": "metadata: {name: caf\u00e9}\n".encode("latin-1"),
    "tabs.yaml": b"spec:\n\tcpu: 1\n",
    "bad.json": b'{"apiVersion": "acrnmgr/v1",,}',
    "dup.json": b'{"kind": "VM", "kind": "VM"}',
    "nul.yaml": b"apiVersion: acrnmgr/v1\0\n",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_exit_1_no_traceback(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(BAD_INPUTS[name])
    for extra in ((), ("--output", "json")):
        r = run("validate", str(f), *extra)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        out = r.stdout if extra else r.stderr
        assert str(f) in out


def test_missing_file_directory_and_bad_host(tmp_path):
    for target in (tmp_path / "missing.yaml", tmp_path):
        r = run("validate", str(target))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert ("no such file" in r.stderr) or ("is a directory" in r.stderr)
    f = tmp_path / "vm.yaml"
    f.write_text(HEAD)
    for host_text in (None, "lapic_idz: [1]\n", ": :\n"):
        host = tmp_path / "host.yaml"
        if host_text is None:
            host = tmp_path / "nohost.yaml"
        else:
            host.write_text(host_text)
        r = run("validate", str(f), "--host", str(host))
        assert r.returncode == 1 and "Traceback" not in r.stderr and "host" in r.stderr


def test_usage_errors_exit_2():
    assert run("validate").returncode == 2
    assert run("validate", "x.yaml", "--output", "xml").returncode == 2


def test_schema_command():
    r = run("schema")
    assert r.returncode == 0
    s = json.loads(r.stdout)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "virtio-blk" in s["$defs"]["device"]["properties"]["type"]["enum"]


def test_cli_module_does_not_import_heavy_libraries():
    code = ("import sys, acrnmgr.cli.spec; "
            "print(','.join(m for m in ('jsonschema', 'yaml') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == ""


def test_dash_reads_standard_input_with_positions_and_cwd_relative_paths():
    text = (EXAMPLES / "linux-vm.yaml").read_text()
    r = run("validate", "-", cwd=EXAMPLES, stdin=text)
    assert r.returncode == 0, r.stderr
    r = run("validate", "-", "--output", "json", cwd=EXAMPLES,
            stdin=text.replace("type: virtio-blk", "type: virtio-blkk"))
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["files"] == [{"file": "<stdin>", "ok": False}]
    (d,) = report["diagnostics"]
    assert (d["file"], d["line"], d["json_path"]) == ("<stdin>", 25, "spec.devices[0].type"), d
    # relative image paths resolve against the working directory, as for a file there
    r = run("validate", "-", cwd="/", stdin=text)
    assert r.returncode == 1 and "<stdin>" in r.stderr and "images/linux-demo.img" in r.stderr


def test_devices_that_are_not_a_list_do_not_crash_the_cross_file_checks(tmp_path):
    # found by hypothesis (test_mutated_specs_across_files): the cross-file checks walked `devices: true`
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(devices_text("- type: virtio-rnd"))
    b.write_text(devices_text("").replace("name: t1", "name: t2").replace("devices:\n", "devices: true\n"))
    r = run("validate", str(a), str(b), "--no-check-paths")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "b.yaml" in r.stderr and "spec.devices" in r.stderr
