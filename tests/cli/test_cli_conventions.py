"""Help, errors, completion, `acrnmgr host` and folders of specs, as people expect them from virsh, kubectl and
systemctl."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from acrnmgr.host import HostProfile

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))
ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["validate", "plan", "render", "schema", "up", "down", "status", "list", "logs", "console", "forget",
            "systemd", "apply", "diff", "import", "export", "host", "image build", "devmodel serve", "gpio get",
            "gpio set", "i2c list", "i2c get", "i2c set"]


def run(*args: str, env: dict | None = None, columns: int = 100) -> subprocess.CompletedProcess:
    return subprocess.run([ACRNMGR, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", **(env or {})})


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_python_type_names_and_one_metavar_style(command):
    out = run(*command.split(), "--help").stdout
    for python in ("<bool>", "<list[", "<int range>", "<float>", "<str>", "<path>", "<Path>"):
        assert python not in out, (python, out)
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert not re.search(r"[{}]|\[[a-z]+\]", usage), usage  # FILE..., [NAME]...: not {files}... or [names]
    assert "--help" in out


def test_docstring_paragraphs_are_rewrapped():
    out = run("import", "--help", columns=80).stdout
    assert "Nothing in a launch script is executed." in out.replace("\n ", " ")
    assert not re.search(r"a spec\s*\n\s*does not validate", out), out  # no break where the source had one


def test_bad_values_are_said_plainly():
    for args, words in ((("status", "--output", "yaml"), "'yaml' is not one of 'text', 'json'"),
                        (("down", "--timeout", "abc", "x"), "'abc' is not a number"),
                        (("devmodel", "serve", "--device", "blk", "--socket", "/tmp/x", "--queues", "100"),
                         "it must be at most 64")):
        proc = run(*args, columns=200)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert "Value error" not in proc.stderr and "Input should" not in proc.stderr


def test_shell_completion_and_vm_names(tmp_path):
    assert "--install-completion" in run("--help").stdout
    script = run("--show-completion", "bash", env={"SHELL": "/bin/bash"}).stdout
    assert "_ACRNMGR_COMPLETE=complete_bash" in script
    for name in ("web1", "db1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "launch.json").write_text("{}")
    env = {"ACRNMGR_STATE_DIR": str(tmp_path), "_ACRNMGR_COMPLETE": "complete_bash", "COMP_CWORD": "2"}
    for command in ("down", "status", "logs", "console", "forget"):
        proc = run(command, env={**env, "COMP_WORDS": f"acrnmgr {command} w"})
        assert proc.stdout.split() == ["web1"], (command, proc.stdout, proc.stderr)


def test_host_prints_a_profile_usable_as_host_that_explains_itself(tmp_path):
    proc = run("host")
    assert proc.returncode == 0, proc.stderr
    profile = tmp_path / "host.yaml"
    profile.write_text(proc.stdout)
    assert HostProfile.from_file(profile) == HostProfile.detect()
    assert re.search(r"^vhost_net: (true|false)  # .*vhost", proc.stdout, re.M)
    assert re.search(r"^lapic_ids: \[.*\]  # ", proc.stdout, re.M)
    assert json.loads(run("host", "--output", "json").stdout) == HostProfile.detect().to_dict()
    spec = ROOT / "examples" / "linux-qemu.yaml"
    assert run("plan", str(spec), "--engine", "qemu", "--host", str(profile)).returncode == 0


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "specs"
    (d / "hosts").mkdir(parents=True)
    (d / "hosts" / "box.yaml").write_text("kvm: false\nlapic_ids: [0, 1]\n")  # a host profile
    (d / "other.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    (d / "drafts").mkdir()
    (d / "drafts" / "broken.yaml").write_text("kind: VM\nspec: {nonsense: 1}\n")
    (tmp_path / "bzImage").write_bytes(bytes(512))
    (d / "vm.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {{name: folder1}}
        spec:
          cpu: {{affinity: [0]}}
          memory: 128M
          boot: {{kernel: {{path: {tmp_path / 'bzImage'}}}}}
        """))
    return d


def test_apply_and_diff_skip_non_vm_yaml_honour_the_ignore_file_and_say_what_they_would_do(tmp_path):
    d = _folder(tmp_path)
    host = d / "hosts" / "box.yaml"
    env = {"ACRNMGR_STATE_DIR": str(tmp_path / "state")}
    broken = run("apply", str(d), "--engine", "qemu", "--host", str(host), "--dry-run", env=env)
    assert broken.returncode == 1 and "drafts/broken.yaml" in broken.stderr  # a VM spec that is wrong still counts
    (d / ".acrnmgrignore").write_text("# drafts are not applied\ndrafts/\n")
    dry = run("apply", str(d), "--engine", "qemu", "--host", str(host), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"{d / 'hosts' / 'box.yaml'}: skipped, a host profile" in dry.stderr
    assert f"{d / 'other.yaml'}: skipped, its kind is not VM" in dry.stderr
    assert "broken" not in dry.stderr
    assert "dry run: would 1 create, 0 update, 0 prune; 0 unchanged" in dry.stderr
    diff = run("diff", str(d), "--engine", "qemu", "--host", str(host), env=env)
    assert diff.returncode == 0 and "# folder1: create" in diff.stdout and "skipped" in diff.stderr


def test_apply_refuses_a_folder_without_specs(tmp_path):
    (tmp_path / "hosts.yaml").write_text("kvm: false\n")
    for args in (("apply", str(tmp_path), "--prune"), ("diff", str(tmp_path))):
        proc = run(*args, "--engine", "qemu", env={"ACRNMGR_STATE_DIR": str(tmp_path / "state")})
        assert proc.returncode == 1 and f"no VM specs in {tmp_path}" in proc.stderr, proc.stderr


def test_plan_on_the_live_host_checks_its_cpus_as_up_does(tmp_path):
    (tmp_path / "bzImage").write_bytes(bytes(512))
    spec = tmp_path / "cpu99.yaml"
    spec.write_text(textwrap.dedent("""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {name: cpu99}
        spec:
          cpu: {affinity: [99]}
          memory: 128M
          boot: {kernel: {path: bzImage}}
        """))
    env = {"ACRNMGR_STATE_DIR": str(tmp_path / "state")}
    for command in ("plan", "render"):
        live = run(command, str(spec), "--engine", "qemu", env=env, columns=300)
        assert live.returncode == 1 and "LAPIC ID 99 is not a CPU of this host" in live.stderr, live.stderr
    up = run("up", str(spec), "--engine", "qemu", env=env, columns=300)
    assert up.returncode == 1 and "LAPIC ID 99 is not a CPU of this host" in up.stderr
    other = tmp_path / "big.yaml"
    other.write_text("kvm: false\nlapic_ids: [0, 99]\n")  # planning for another machine: its CPUs count
    assert run("plan", str(spec), "--engine", "qemu", "--host", str(other), env=env).returncode == 0
