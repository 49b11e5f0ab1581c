"""apply / diff / prune end to end on the qemu engine with the real test guest (tests/guest):
create, then change the memory and see an update, then remove the file and see a prune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest
ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))


@pytest.fixture(scope="module")
def guest():
    from tests.guest.build import build_guest_image
    from tests.guest.qemu import pick_accel

    image = build_guest_image()
    return image, pick_accel(image)


def test_create_update_prune(tmp_path, guest):
    from tests.guest.build import initrd_with_script

    image, accel = guest
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "disk.img").write_bytes(bytes(8 << 20))
    initrd = initrd_with_script("echo GITOPS-UP\nwhile :; do sleep 1; done\n", tmp_path)
    host = tmp_path / "host.yaml"
    host.write_text(f"kvm: {str(accel == 'kvm').lower()}\nnet_tun: true\nlapic_ids: [0, 1]\n")
    spec = specs / "gitops1.yaml"

    def write(memory: str) -> None:
        spec.write_text(textwrap.dedent(f"""\
            apiVersion: acrnmgr/v1
            kind: VM
            metadata: {{name: gitops1}}
            spec:
              cpu: {{affinity: [0]}}
              memory: {memory}
              boot:
                kernel: {{path: {image.kernel}, initrd: {initrd}, cmdline: "console=ttyS0 panic=-1 quiet"}}
              console:
                lpc: [{{port: com1, backend: stdio}}]
              devices:
                - {{type: virtio-blk, name: root, path: disk.img, mode: legacy, backend: vbs-u}}
            """))

    env = {**os.environ, "ACRNMGR_STATE_DIR": str(tmp_path / "state")}

    def run(*args, code=0):
        proc = subprocess.run([ACRNMGR, *args], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == code or (args[0] == "status" and proc.returncode == 3), \
            f"acrnmgr {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def apply(*extra, code=0) -> dict:
        out = run("apply", str(specs), "--engine", "qemu", "--host", str(host), "--output", "json", *extra, code=code)
        return {c["name"]: c for c in json.loads(out.stdout)["changes"]}

    try:
        write("256M")
        run("diff", str(specs), "--exit-code", "--engine", "qemu", "--host", str(host), code=3)
        c = apply("--wait")["gitops1"]
        assert (c["action"], c["result"]) == ("create", "done")
        assert json.loads(run("status", "gitops1", "--output", "json").stdout)["state"] == "running"
        run("diff", str(specs), "--exit-code", "--engine", "qemu", "--host", str(host))  # in sync: 0
        assert apply()["gitops1"]["action"] == "unchanged"

        write("384M")
        diff = run("diff", str(specs), "--exit-code", "--engine", "qemu", "--host", str(host), code=3).stdout
        assert "# gitops1: update" in diff
        lines = diff.splitlines()
        assert any(ln.startswith("-") and not ln.startswith("---") and "256" in ln for ln in lines), diff
        assert any(ln.startswith("+") and not ln.startswith("+++") and "384" in ln for ln in lines), diff
        c = apply()["gitops1"]
        assert (c["action"], c["result"], c["blocked"] is not None) == ("update", "skipped", True)
        c = apply("--allow-restart", "--wait")["gitops1"]
        assert (c["action"], c["result"]) == ("update", "done")
        st = json.loads(run("status", "gitops1", "--output", "json").stdout)
        assert st["state"] == "running"
        assert "384" in (tmp_path / "state" / "gitops1" / "argv").read_text()

        # A folder left with no spec is an error, not a reason to prune everything; the VM keeps running.
        text = spec.read_text()
        spec.unlink()
        empty = run("apply", str(specs), "--engine", "qemu", "--host", str(host), "--prune", code=1)
        assert "no VM specs" in empty.stderr and "nothing was changed" in empty.stderr
        assert json.loads(run("status", "gitops1", "--output", "json").stdout)["state"] == "running"
        (specs / "disk2.img").write_bytes(bytes(8 << 20))
        (specs / "gitops2.yaml").write_text(text.replace("gitops1", "gitops2").replace("disk.img", "disk2.img"))
        changes = apply("--wait")
        assert (changes["gitops1"]["action"], changes["gitops1"]["result"]) == ("prune", "skipped")
        assert (changes["gitops2"]["action"], changes["gitops2"]["result"]) == ("create", "done")
        c = apply("--prune")["gitops1"]
        assert (c["action"], c["result"]) == ("prune", "done")
        assert json.loads(run("status", "gitops1", "--output", "json").stdout)["state"] == "stopped"
        assert set(apply()) == {"gitops2"}
    finally:
        subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=env, capture_output=True)
