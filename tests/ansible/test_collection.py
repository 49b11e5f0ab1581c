"""The acrnmgr.acrn collection without a guest: it builds and installs with ansible-galaxy, its docs render,
the example spec repository's overlays plan on the example hosts, errors are task failures with acrnmgr's
message, and the install role puts acrnmgr into a venv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import BIN, EXAMPLE, REPO


def test_docs_render(ansible):
    out = ansible.run("ansible-doc", "--json", "acrnmgr.acrn.apply", "acrnmgr.acrn.vm")
    assert out.rc == 0, out.out
    docs = json.loads(out.out)
    apply = docs["acrnmgr.acrn.apply"]
    assert {"path", "prune", "allow_restart", "engine", "host_profile"} <= set(apply["doc"]["options"])
    assert {"vms", "changed_vms"} <= set(apply["return"])
    assert set(apply["return"]["vms"]["contains"]) >= {"name", "action", "state", "reason"}
    assert docs["acrnmgr.acrn.vm"]["doc"]["options"]["state"]["choices"] == ["started", "stopped", "absent"]
    for args in (["acrnmgr.acrn.apply"], ["-t", "role", "acrnmgr.acrn.install"], ["-l", "acrnmgr.acrn"]):
        out = ansible.run("ansible-doc", *args)
        assert out.rc == 0 and "ERROR" not in out.out and "WARNING" not in out.out, out.out
    assert "acrnmgr.acrn.vm" in out.out


def test_example_overlays_plan(ansible, tmp_path):
    """Each host's overlay in the example spec repository plans on that host's profile: its own CPU
    affinity and tap. The images are stand-ins: the example names /var/lib/acrnmgr/images/."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("bzImage", "gateway-initrd.img", "gateway.img", "historian.img"):
        (images / name).write_bytes(b"\0" * 4096)
    repo = tmp_path / "specs"
    for src in (EXAMPLE / "specs-repo").rglob("*"):
        if src.is_file():
            dst = repo / src.relative_to(EXAMPLE / "specs-repo")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(src.read_text().replace("/var/lib/acrnmgr/images", str(images)))
    inventory = yaml.safe_load((EXAMPLE / "inventory.yml").read_text())
    hosts = inventory["all"]["children"]["acrn_hosts"]["hosts"]
    (tmp_path / "edge-02.yaml").write_text(json.dumps(hosts["edge-02"]["acrnmgr_host_profile"]))
    profiles = {"edge-01": REPO / "examples" / "hosts" / "acrn-service-vm.yaml", "edge-02": tmp_path / "edge-02.yaml"}
    expect = {"edge-01": {"gateway": ("tap_gw_e01", "2,4"), "historian": ("tap_hist0", "6")},
              "edge-02": {"gateway": ("tap_gw_e02", "6")}}
    for host, vms in expect.items():
        out = ansible.acrnmgr("diff", str(repo / "hosts" / host), "--root", str(repo), "--engine", "acrn",
                              "--host", str(profiles[host]),
                              "--output", "json")
        changes = {c["name"]: c for c in json.loads(out.stdout)["changes"]}
        assert set(changes) == set(vms), out.stdout
        for name, (tap, affinity) in vms.items():
            argv = "\n".join(changes[name]["diff"])
            assert tap in argv and f"--cpu_affinity {affinity}" in argv, argv


def test_errors_are_task_failures(ansible, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vm.yaml").write_text("apiVersion: acrnmgr/v1\nkind: VM\nmetadata: {name: x}\nspec: {memory: lots}\n")
    out = ansible.module("acrnmgr.acrn.apply", f"path={bad} engine=qemu")
    assert out.rc == 2 and "FAILED" in out.out, out.out
    assert "vm.yaml:4" in out.out and "nothing was changed" in out.out, out.out
    assert "Traceback" not in out.out and "MODULE FAILURE" not in out.out, out.out

    out = ansible.module("acrnmgr.acrn.apply", f"path={tmp_path / 'missing'}")
    assert out.rc == 2 and "not a directory" in out.out and "Traceback" not in out.out, out.out

    out = ansible.module("acrnmgr.acrn.vm", f"spec={tmp_path / 'nope.yaml'}")
    assert out.rc == 2 and "no such file" in out.out and "Traceback" not in out.out, out.out

    out = ansible.module("acrnmgr.acrn.vm", "state=started")
    assert out.rc == 2 and "spec" in out.out, out.out

    out = ansible.module("acrnmgr.acrn.vm", "name=nosuch state=stopped")
    assert out.rc == 0 and '"changed": false' in out.out, out.out

    empty = tmp_path / "empty"
    empty.mkdir()
    # a folder with no specs is an error (it would prune every VM), in check mode too
    out = ansible.module("acrnmgr.acrn.apply", f"path={empty} engine=qemu", "--check")
    assert out.rc == 2 and "no VM specs" in out.out and "Traceback" not in out.out, out.out


def test_a_vm_that_fails_fails_the_task(ansible, tmp_path):
    """The acrn engine on a machine that is not an ACRN Service VM: the VM's create fails; the task fails
    with acrnmgr's reason and still returns the per-VM results."""
    (tmp_path / "bzImage").write_bytes(b"\0" * 4096)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "failvm.yaml").write_text(
        "apiVersion: acrnmgr/v1\nkind: VM\nmetadata: {name: failvm}\nspec:\n  cpu: {affinity: [2]}\n"
        f"  memory: 256M\n  boot:\n    kernel: {{path: {tmp_path / 'bzImage'}}}\n")
    host = REPO / "examples" / "hosts" / "acrn-service-vm.yaml"
    out = ansible.module("acrnmgr.acrn.apply", f"path={specs} engine=acrn host_profile={host}")
    assert out.rc == 2 and "Traceback" not in out.out, out.out
    result = json.loads(out.out.split("=>", 1)[1])
    assert result["msg"].startswith("acrnmgr apply: failvm: create failed: ") and "acrn-dm" in result["msg"]
    assert [(v["name"], v["action"], v["result"]) for v in result["vms"]] == [("failvm", "create", "failed")]
    assert result["changed"] is False


@pytest.mark.slow
def test_install_role(ansible, tmp_path):
    """The role installs the collection's bundled wheel (this checkout's acrnmgr) into a venv; twice is
    no change."""
    venv = tmp_path / "venv"
    play = tmp_path / "install.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False,
        "roles": [{"role": "acrnmgr.acrn.install", "acrnmgr_venv": str(venv), "acrnmgr_python": sys.executable}],
    }]))
    args = ("-c", "local", "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}", str(play))
    first = ansible.run("ansible-playbook", *args)
    assert first.rc == 0 and first.recap()["changed"] >= 1, first.out
    version = subprocess.run([str(venv / "bin" / "acrnmgr"), "--version"], capture_output=True, text=True)
    ours = subprocess.run([str(BIN / "acrnmgr"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout == ours.stdout
    second = ansible.run("ansible-playbook", *args)
    assert second.rc == 0 and second.recap()["changed"] == 0, second.out


def test_build_script_bundles_the_wheel(collection: Path):
    files = collection / "ansible_collections" / "acrnmgr" / "acrn" / "roles" / "install" / "files"
    assert [p.name.split("-")[0] for p in files.glob("*.whl")] == ["acrnmgr"]


@pytest.mark.slow
def test_ansible_test_sanity():
    """`ansible-test sanity` (every test that runs without containers) through scripts/ansible-sanity.sh.
    The first run builds ansible-test's venvs (about 80 s), later runs reuse them (about 10 s)."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "ansible-sanity.sh")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert 'Running sanity test "validate-modules"' in proc.stdout + proc.stderr
