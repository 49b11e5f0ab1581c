"""`acrnmgr render` and `acrnmgr plan` through the real CLI entry point."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from acrnmgr.cli import app

from tests.specs import EXAMPLES, HOSTS

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
SOS = str(HOSTS / "acrn-service-vm.yaml")
BOX = str(HOSTS / "plain-box.yaml")


def run(*args):
    return runner.invoke(app, list(args))


def test_render_argv_is_one_shell_line():
    result = run("render", str(EXAMPLES / "linux-vm.yaml"), "--host", SOS)
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.stdout)
    assert argv[0] == "acrn-dm" and argv[-1] == "linux-demo"
    assert "tap=tap_linux0,vhost,mac=00:16:3e:00:00:01" in result.stdout


def test_render_script_and_json():
    script = run("render", str(EXAMPLES / "rtvm.yaml"), "--host", SOS, "--format", "script")
    assert script.exit_code == 0 and script.stdout.startswith("#!/bin/bash")
    data = json.loads(run("render", str(EXAMPLES / "rtvm.yaml"), "--host", SOS, "--format", "json").stdout)
    assert data["argv"][:2] == ["acrn-dm", "--rtvm"] and data["errors"] == []


def test_render_v27():
    result = run("render", str(EXAMPLES / "windows-gpu.yaml"), "--host", SOS, "--target-version", "2.7")
    assert result.exit_code == 0 and "--mac_seed win-gpu-lan" in result.stdout


def test_plan_table_and_json():
    result = run("plan", str(EXAMPLES / "linux-vm.yaml"), "--host", BOX, "--engine", "acrn")
    assert result.exit_code == 0
    assert "lan     virtio-net      4     vbs-u    host has no /dev/vhost-net" in result.stdout
    data = json.loads(run("plan", str(EXAMPLES / "linux-vm.yaml"), "--host", SOS, "--output", "json").stdout)
    assert [(d["name"], d["slot"], d["backend"]) for d in data["devices"]] == [
        ("rootfs", 3, "vbs-u"), ("lan", 4, "vhost"), ("hvc", 5, "vbs-u"), ("rng", 6, "vbs-u")]


def test_plan_errors_exit_1_and_say_why():
    result = run("plan", str(EXAMPLES / "linux-qemu.yaml"), "--host", SOS)
    assert result.exit_code == 1
    assert "acrn-dm has no vhost-user frontend" in result.stderr
    assert "linux-qemu.yaml:25:7" in result.stderr
    assert run("plan", str(EXAMPLES / "linux-qemu.yaml"), "--host", SOS, "--engine", "qemu").exit_code == 0
    result = run("render", str(EXAMPLES / "linux-qemu.yaml"), "--host", SOS)
    assert result.exit_code == 1 and result.stdout == ""


def test_plan_and_render_default_to_auto_as_up_does():
    """auto is acrn on an ACRN Service VM, qemu anywhere else: plan, render and up pick the same engine."""
    on_sos = json.loads(run("plan", str(EXAMPLES / "linux-vm.yaml"), "--host", SOS, "--output", "json").stdout)
    on_box = json.loads(run("plan", str(EXAMPLES / "linux-vm.yaml"), "--host", BOX, "--output", "json").stdout)
    assert (on_sos["engine"], on_box["engine"]) == ("acrn", "qemu")
    argv = run("render", str(EXAMPLES / "linux-qemu.yaml"), "--host", BOX).stdout
    assert shlex.split(argv)[0].endswith("qemu-system-x86_64")
    assert "vhost-user-blk-pci" in argv
    script = run("render", str(EXAMPLES / "linux-qemu.yaml"), "--host", BOX, "--format", "script")
    assert script.exit_code == 1 and "--engine acrn" in script.stderr


def test_a_comma_in_a_disk_path_is_an_acrn_plan_error_only(tmp_path):
    """acrn-dm splits its options on commas; QEMU escapes them. Every command that plans agrees on that."""
    (tmp_path / "a,b.img").write_bytes(b"\0" * 512)
    (tmp_path / "bzImage").write_bytes(b"\0" * 512)
    spec = tmp_path / "vm.yaml"
    spec.write_text("apiVersion: acrnmgr/v1\nkind: VM\nmetadata: {name: comma}\nspec:\n  cpu: {affinity: [2]}\n"
                    "  memory: 512M\n  boot: {kernel: {path: bzImage}}\n"
                    "  devices:\n    - {type: virtio-blk, path: 'a,b.img', backend: vbs-u}\n")
    for command in ("plan", "render"):
        acrn = run(command, str(spec), "--host", SOS, "--engine", "acrn")
        assert acrn.exit_code == 1 and "which acrn-dm uses to split this option" in acrn.stderr
        assert run(command, str(spec), "--host", SOS, "--engine", "qemu").exit_code == 0
    argv = json.loads(run("render", str(spec), "--host", SOS, "--engine", "qemu", "--format", "json").stdout)["argv"]
    blockdev = json.loads(argv[argv.index("-blockdev") + 1])  # JSON syntax: the comma needs no escaping
    assert blockdev["file"]["filename"] == str(tmp_path / "a,b.img")
    validate = run("validate", str(spec), "--host", SOS, "--engine", "acrn")
    assert validate.exit_code == 1 and "which acrn-dm uses to split this option" in validate.stderr
    assert run("validate", str(spec), "--host", SOS, "--engine", "qemu").exit_code == 0


def test_bad_input_exit_codes(tmp_path):
    assert run("render", str(tmp_path / "missing.yaml")).exit_code == 1
    bad_host = tmp_path / "h.yaml"
    bad_host.write_text("frobnicate: 1\n")
    result = run("plan", str(EXAMPLES / "linux-vm.yaml"), "--host", str(bad_host))
    assert result.exit_code == 1 and "unknown key" in result.stderr
    garbage = tmp_path / "g.yaml"
    garbage.write_bytes(b"\xff\xfe\x00garbage")
    assert run("render", str(garbage)).exit_code == 1
    assert run("render", str(EXAMPLES / "linux-vm.yaml"), "--format", "xml").exit_code == 2
    assert run("plan", str(EXAMPLES / "linux-vm.yaml"), "--target-version", "1.0").exit_code == 2


def test_console_script_runs():
    # the installed `acrnmgr` entry point, in a fresh process
    acrnmgr = str(Path(sys.executable).with_name("acrnmgr"))
    proc = subprocess.run([acrnmgr, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "render" in proc.stdout and "plan" in proc.stdout
