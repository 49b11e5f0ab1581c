"""The example playbook (examples/fleet/site.yml) against localhost (connection: local) on the qemu
engine with real guests (tests/guest): a spec repository in git with a shared base and a per-host
overlay; the first run creates, a second identical run reports changed=0, check mode changes nothing,
a changed spec updates only that VM, removing a spec with prune stops it. Then acrnmgr.acrn.vm on
one more guest."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
import yaml

from tests.ansible.conftest import ACRNMGR, EXAMPLE, git

pytestmark = [pytest.mark.guest, pytest.mark.slow]


@pytest.fixture(scope="module")
def guest():
    from tests.guest.build import build_guest_image
    from tests.guest.qemu import pick_accel

    image = build_guest_image()
    return image, pick_accel(image)


def spec(name: str, memory: str, kernel, initrd) -> str:
    return textwrap.dedent(f"""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {{name: {name}}}
        spec:
          cpu: {{affinity: [0]}}
          memory: {memory}
          boot:
            kernel: {{path: {kernel}, initrd: {initrd}, cmdline: "console=ttyS0 panic=-1 quiet"}}
          console:
            lpc: [{{port: com1, backend: stdio}}]
        """)


def test_example_playbook_rollout(ansible, tmp_path, guest):
    from tests.guest.build import initrd_with_script

    image, accel = guest
    initrd = initrd_with_script("echo FLEET-UP\nwhile :; do sleep 1; done\n", tmp_path)
    # The spec repository: base/ for every host, hosts/localhost/ gives fleet1 CPUs 0 and 1
    # (an overlay patch; on the qemu engine, -smp 2).
    repo = tmp_path / "specs-repo"
    (repo / "base").mkdir(parents=True)
    (repo / "hosts" / "localhost").mkdir(parents=True)
    for name in ("fleet1", "fleet2"):
        (repo / "base" / f"{name}.yaml").write_text(spec(name, "128M", image.kernel, initrd))
    (repo / "hosts" / "localhost" / "kustomization.yaml").write_text(
        "resources: [../../base]\npatches:\n  - patch: {metadata: {name: fleet1}, spec: {cpu: {affinity: [0, 1]}}}\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fleet1 and fleet2")

    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"acrn_hosts": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
        "vars": {
            "acrnmgr_install": False, "acrnmgr_become": False,
            "acrnmgr_specs_repo": f"file://{repo}", "acrnmgr_specs_dir": str(tmp_path / "checkout"),
            "acrnmgr_engine": "qemu", "acrnmgr_executable": ACRNMGR,
            "acrnmgr_host_profile": {"kvm": accel == "kvm", "net_tun": True, "lapic_ids": [0, 1]},
        }}}}}))

    def play(*extra: str):
        out = ansible.run("ansible-playbook", "-i", str(inventory), str(EXAMPLE / "site.yml"), *extra)
        assert out.rc == 0, out.out
        vms = dict(re.findall(r'"msg": "(fleet\d): (\w+ -> \w+)', out.out))
        return out, out.recap()["changed"], vms

    def status(name: str) -> dict:
        return json.loads(ansible.acrnmgr("status", name, "--output", "json", code=None).stdout)  # 3: not running

    out, changed, vms = play()
    assert changed == 1 and vms == {"fleet1": "create -> running", "fleet2": "create -> running"}, out.out
    assert "-smp 2" in (ansible.state / "fleet1" / "argv").read_text()  # the host's overlay
    assert "-smp 1" in (ansible.state / "fleet2" / "argv").read_text()  # the base
    pids = {n: status(n)["pid"] for n in ("fleet1", "fleet2")}
    assert all(pids.values()), pids

    out, changed, vms = play()
    assert changed == 0 and vms == {"fleet1": "unchanged -> running", "fleet2": "unchanged -> running"}, out.out

    # fleet2 gets more memory in git; check mode (with --diff) shows it and changes nothing.
    (repo / "base" / "fleet2.yaml").write_text(spec("fleet2", "160M", image.kernel, initrd))
    git(repo, "commit", "-q", "-am", "fleet2: 160M")
    out, changed, vms = play("--check", "--diff")
    assert changed == 1 and vms == {"fleet1": "unchanged -> running", "fleet2": "update -> running"}, out.out
    assert re.search(r"^-.*128", out.out, re.M) and re.search(r"^\+.*160", out.out, re.M), out.out
    assert {n: status(n)["pid"] for n in pids} == pids
    assert "128" in (ansible.state / "fleet2" / "argv").read_text()

    out, changed, vms = play("--diff")  # the real run with --diff: the same argv difference
    assert changed == 1 and vms == {"fleet1": "unchanged -> running", "fleet2": "update -> running"}, out.out
    assert re.search(r"^-.*128", out.out, re.M) and re.search(r"^\+.*160", out.out, re.M), out.out
    assert status("fleet1")["pid"] == pids["fleet1"]  # only fleet2 restarted
    assert status("fleet2")["pid"] != pids["fleet2"]
    assert "160" in (ansible.state / "fleet2" / "argv").read_text()

    # fleet2 leaves git: prune stops it, fleet1 keeps running.
    git(repo, "rm", "-q", "base/fleet2.yaml")
    git(repo, "commit", "-q", "-m", "no fleet2")
    out, changed, vms = play()
    assert changed == 1 and vms == {"fleet1": "unchanged -> running", "fleet2": "prune -> stopped"}, out.out
    assert status("fleet2")["state"] == "stopped" and status("fleet1")["pid"] == pids["fleet1"]

    # acrnmgr.acrn.vm: one VM, its spec inline (from the module's JSON args).
    def vm(args: dict, *extra: str, rc: int = 0) -> dict:
        out = ansible.module("acrnmgr.acrn.vm", json.dumps({"engine": "qemu", **args}), *extra)
        assert out.rc == rc, out.out
        return json.loads(out.out.split("=>", 1)[1])

    fleet3 = yaml.safe_load(spec("fleet3", "128M", image.kernel, initrd))
    r = vm({"spec": fleet3}, "--check")
    assert (r["changed"], r["action"]) == (True, "create") and not (ansible.state / "fleet3").exists()
    r = vm({"spec": fleet3, "wait": True})
    assert (r["changed"], r["action"], r["state"]) == (True, "create", "running"), r
    assert vm({"spec": fleet3})["changed"] is False
    assert vm({"name": "fleet3", "state": "stopped"}, "--check")["changed"] is True
    assert status("fleet3")["state"] == "running"
    r = vm({"name": "fleet3", "state": "stopped", "timeout": 5})
    assert (r["changed"], r["state"]) == (True, "stopped"), r
    assert vm({"name": "fleet3", "state": "stopped"})["changed"] is False
    r = vm({"name": "fleet3", "state": "absent"})
    assert (r["changed"], r["state"]) == (True, "absent") and not (ansible.state / "fleet3").exists()
    assert vm({"name": "fleet3", "state": "absent"})["changed"] is False

    # A spec given as a path: fleet1 runs its overlay (two CPUs), so its base spec is an update; check mode.
    r = vm({"spec": str(repo / "base" / "fleet1.yaml")}, "--check")
    assert (r["changed"], r["action"], r["name"]) == (True, "update", "fleet1"), r
    assert status("fleet1")["pid"] == pids["fleet1"]
    r = vm({"spec": str(repo / "base" / "fleet1.yaml"), "allow_restart": False}, "--check", rc=2)
    assert "its spec changed and allow_restart is false" in r["msg"], r
