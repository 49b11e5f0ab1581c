"""A hostile or broken apply folder (issue 11): resources and patches stay inside the folder,
no file that is not a spec is ever quoted, anything that cannot be read stops the whole apply
(and so never gets a VM pruned), and no malformed kustomization raises."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from acrnmgr.gitops.desired import load_desired
from tests.gitops.test_desired import vm
from tests.lifecycle.conftest import ACRNMGR, Env, acrn_env  # noqa: F401  (fixture)

SECRET = "root:$6$SECRETHASH$abcdef:19000:0:99999:7:::"


def messages(desired) -> str:
    return "\n".join(str(d) for d in desired.errors)


@pytest.fixture
def tree(tmp_path):
    """root/ (the applied folder) with base/web.yaml, and outside/ next to it holding a secret."""
    root = tmp_path / "root"
    (root / "base").mkdir(parents=True)
    (root / "base" / "web.yaml").write_text(vm("web"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text(SECRET + "\n")
    (outside / "spec.yaml").write_text(vm("evil"))
    (outside / "patch.yaml").write_text("metadata: {name: web}\nspec: {memory: 2G}\n")
    return root, outside


def overlay(root: Path, text: str) -> Path:
    o = root / "o"
    o.mkdir(exist_ok=True)
    (o / "kustomization.yaml").write_text(textwrap.dedent(text))
    return o


@pytest.mark.parametrize("resource", ["{outside}/shadow", "{outside}/spec.yaml", "../../outside/shadow",
                                      "../../outside/spec.yaml", "../../outside", "link-out", "link-out-dir",
                                      "/etc/passwd", "/dev/zero", "~/x.yaml", "../base/../../outside/spec.yaml"])
def test_resources_are_confined_to_the_folder(tree, resource):
    root, outside = tree
    o = overlay(root, f"resources: [{resource.format(outside=outside)}]\n")
    (o / "link-out").symlink_to(outside / "shadow")
    (o / "link-out-dir").symlink_to(outside)
    desired = load_desired(root)
    assert desired.errors, resource
    assert "evil" not in {v.name for v in desired.vms}
    assert "SECRETHASH" not in messages(desired) and "root:" not in messages(desired)
    assert any("outside the applied folder" in d.message or "absolute path" in d.message for d in desired.errors)


@pytest.mark.parametrize("patch", ["{outside}/patch.yaml", "../../outside/patch.yaml", "../../outside/shadow",
                                   "link-out", "/etc/shadow", "/dev/zero"])
def test_patches_are_confined_to_the_folder(tree, patch):
    root, outside = tree
    o = overlay(root, f"resources: [../base]\npatches:\n  - path: {patch.format(outside=outside)}\n")
    (o / "link-out").symlink_to(outside / "patch.yaml")
    desired = load_desired(root)
    assert any("outside the applied folder" in d.message or "absolute path" in d.message for d in desired.errors)
    assert "SECRETHASH" not in messages(desired)


def test_resources_and_patches_inside_the_folder_still_work(tree):
    root, _ = tree
    o = overlay(root, "resources: [../base/web.yaml]\npatches:\n  - path: p.yaml\n")
    (o / "p.yaml").write_text("metadata: {name: web}\nspec: {memory: 2G}\n")
    desired = load_desired(root)
    assert desired.errors == [] and [v.vm.memory for v in desired.vms] == [2 << 30]


@pytest.mark.parametrize("content", [
    SECRET + "\n",
    f"password: {SECRET}\n",
    f"{SECRET}: 1\n{SECRET}: 2\n",  # a duplicate key: the loader would quote it
    f'{{"token": "{SECRET}"}}\n',
    f"- {SECRET}\n",
    f"kind: VM\nmetadata: {{name: '{SECRET}'}}\n",
    "\x00\x01\x02" + SECRET,
    SECRET.encode("utf-16").decode("latin-1"),
])
@pytest.mark.parametrize("how", ["in the folder", "as a resource"])
def test_a_file_that_is_not_a_spec_is_never_quoted(tree, content, how):
    root, _ = tree
    target = root / "notes.yaml" if how == "in the folder" else root / "o" / "data" / "x.yaml"
    if how == "as a resource":
        overlay(root, "resources: [data/x.yaml]\n")
        target.parent.mkdir()
    target.write_bytes(content.encode("utf-8", "surrogateescape"))
    desired = load_desired(root)
    assert desired.errors
    assert "SECRETHASH" not in messages(desired)
    assert any("not a VM spec" in d.message for d in desired.errors), messages(desired)


def _unreadable(root: Path, kind: str) -> Path:
    """Something under root that cannot be read, in place of the spec of VM db."""
    spec = root / "db.yaml"
    if kind == "dangling spec symlink":
        spec.symlink_to(root / "gone.yaml")
    elif kind == "self-looping spec symlink":
        spec.symlink_to(spec)
    elif kind == "symlink loop of two":
        (root / "a.yaml").symlink_to(root / "b.yaml")
        (root / "b.yaml").symlink_to(root / "a.yaml")
    elif kind == "dangling folder symlink":
        (root / "vms").symlink_to(root / "moved-away")
    elif kind == "self-looping folder symlink":
        (root / "vms").symlink_to(root / "vms")
    elif kind == "FIFO named like a spec":
        os.mkfifo(spec)
    elif kind == "spec symlink to a device":
        spec.symlink_to("/dev/zero")
    elif kind == "kustomization that is a FIFO":
        (root / "o").mkdir()
        os.mkfifo(root / "o" / "kustomization.yaml")
    elif kind == "resource that is a dangling symlink":
        overlay(root, "resources: [db.yaml]\n")
        (root / "o" / "db.yaml").symlink_to(root / "gone.yaml")
    else:
        raise AssertionError(kind)
    return spec


UNREADABLE = ["dangling spec symlink", "self-looping spec symlink", "symlink loop of two", "dangling folder symlink",
              "self-looping folder symlink", "FIFO named like a spec", "spec symlink to a device",
              "kustomization that is a FIFO", "resource that is a dangling symlink"]


@pytest.mark.parametrize("kind", UNREADABLE)
def test_anything_unreadable_under_the_folder_is_an_error(tmp_path, kind):
    (tmp_path / "web.yaml").write_text(vm("web"))
    _unreadable(tmp_path, kind)
    desired = load_desired(tmp_path)
    assert desired.errors, kind


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to an unprivileged user")
def test_a_folder_an_unprivileged_user_cannot_list_is_an_error():
    """chmod 000 means nothing to root: load the folder in a child that drops to nobody (after a
    first load has imported everything, since the interpreter lives under /root)."""
    top = Path(tempfile.mkdtemp(prefix="acrnmgr-unlistable-"))
    try:
        top.chmod(0o755)
        (top / "web.yaml").write_text(vm("web"))
        (top / "web.yaml").chmod(0o644)
        (top / "locked").mkdir()
        (top / "locked" / "db.yaml").write_text(vm("db"))
        (top / "locked").chmod(0o000)
        code = textwrap.dedent(f"""\
            import os
            from acrnmgr.gitops.desired import load_desired
            assert len(load_desired({str(top)!r}).vms) == 2  # as root, locked/ is readable
            os.setgid(65534)
            os.setuid(65534)
            d = load_desired({str(top)!r})
            print([str(e) for e in d.errors])
            print([v.name for v in d.vms])
            """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2])
        assert proc.returncode == 0, proc.stderr
        errors, _ = proc.stdout.splitlines()
        assert "locked" in errors and "cannot list" in errors, errors
    finally:
        (top / "locked").chmod(0o700)
        shutil.rmtree(top)


KUSTOMIZATIONS = [
    "resources: 5\n",
    "resources: web.yaml\n",
    "resources: [5]\n",
    "resources: [null]\n",
    "resources: [{path: ../base}]\n",
    "resources: [[../base]]\n",
    "resources: ['']\n",
    "patches: 5\n",
    "patches: {path: p.yaml}\n",
    "resources: [../base]\npatches: [7]\n",
    "resources: [../base]\npatches: [{path: null}]\n",
    "resources: [../base]\npatches: [{path: 5}]\n",
    "resources: [../base]\npatches: [{path: [a]}]\n",
    "resources: [../base]\npatches: [{path: missing.yaml}]\n",
    "resources: [../base]\npatches: [{path: .}]\n",
    "resources: [../base]\npatches: [{path: list.yaml}]\n",
    "resources: [../base]\npatches: [{path: bad.yaml}]\n",
    "resources: [../base]\npatches: [{patch: [1, 2]}]\n",
    "resources: [../base]\npatches: [{patch: 5}]\n",
    "resources: [../base]\npatches: [{patch: null}]\n",
    "resources: [../base]\npatches: [{patch: {metadata: 5}}]\n",
    "resources: [../base]\npatches: [{patch: {metadata: {name: [1]}}}]\n",
    "resources: [../base]\npatches: [{patch: {metadata: {name: web}}, target: 5}]\n",
    "resources: [../base]\npatches: [{patch: {metadata: {name: web}}, target: {name: 5}}]\n",
    "resources: [../base]\npatches: [{patch: {metadata: {name: web}, spec: {memory: [1]}}}]\n",
    "resources: [../base]\npatches: [{patch: {metadata: {name: web}, spec: 5}}]\n",
    "resources: [../base]\npatches: [{patch: {metadata: {name: web}, spec: {memory: 0x" + "f" * 3600 + "}}}]\n",
    "resources: [../base]\npatches: [{patch: {metadata: {name: web, labels: {a: 2020-01-01}}, bogus: 1}}]\n",
    "resources: [../base]\npatches:\n  - patch: &a {metadata: {name: web}}\n    path: x\n",
    "resources: [/dev/zero]\n",
    "resources: [zero]\n",
    "resources: [fifo.yaml]\n",
    "- a list\n",
    "just text\n",
    "{1: 2}\n",
    "resources: [../base]\nnope: {'" + SECRET + "': 1}\n",
    "resources: [: bad\n",
    "\x00\xff binary",
    "a: &a [" + ",".join(["x"] * 10) + "]\n" + "".join(
        f"{n}: &{n} [" + ",".join([f"*{p}"] * 10) + "]\n" for p, n in zip("abcdef", "bcdefg", strict=False))
    + "resources: [../base]\npatches: [{patch: {metadata: {name: web}, x: *g}}]\n",
    "[" * 5000 + "]" * 5000,
]


@pytest.mark.parametrize("text", KUSTOMIZATIONS, ids=range(len(KUSTOMIZATIONS)))
def test_a_malformed_kustomization_is_a_clear_error(tree, text):
    root, _ = tree
    o = root / "o"
    o.mkdir()
    (o / "kustomization.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    (o / "list.yaml").write_text("- 1\n- 2\n")
    (o / "bad.yaml").write_text("a: [\n")
    (o / "zero").symlink_to("/dev/zero")
    os.mkfifo(o / "fifo.yaml")
    desired = load_desired(root)  # never raises
    errors = [d for d in desired.errors if d.file.startswith(str(o))]
    assert errors, messages(desired)
    assert "SECRETHASH" not in messages(desired)
    assert all(len(str(d)) < 1000 for d in desired.errors)


def test_cli_apply_shows_no_secret_and_no_traceback(tree):
    root, outside = tree
    overlay(root, f"resources: [{outside}/shadow, ../../outside/shadow]\n")
    proc = subprocess.run([ACRNMGR, "apply", str(root), "--dry-run"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ACRNMGR_STATE_DIR": str(root.parent / "state")})
    assert proc.returncode == 1
    assert "nothing was changed" in proc.stderr
    assert "SECRETHASH" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["dangling spec symlink", "self-looping spec symlink", "FIFO named like a spec",
                                  "dangling folder symlink"])
def test_apply_prune_never_prunes_what_it_could_not_read(acrn_env, kind):  # noqa: F811
    env: Env = acrn_env
    specs = env.root / "specs"
    specs.mkdir()
    for name, cpu in (("web", 2), ("db", 4)):
        (specs / f"{name}.yaml").write_text(env.spec(name).read_text().replace("[2]", f"[{cpu}]")
                                            .replace("path: bzImage", f"path: {env.root}/bzImage")
                                            .replace("path: disk.img", f"path: {env.root}/disk.img"))
    env.run("apply", str(specs), "--engine", "acrn", "--host", str(env.host), "--wait")
    assert env.status("db")["state"] == "running"
    (specs / "db.yaml").unlink()
    if kind == "dangling folder symlink":
        (specs / "db.yaml").write_text("")  # a folder of specs moved away instead: db.yaml lived in it
        (specs / "db.yaml").unlink()
    _unreadable(specs, kind)
    proc = env.run("apply", str(specs), "--engine", "acrn", "--host", str(env.host), "--prune", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nothing was changed" in proc.stderr and "Traceback" not in proc.stderr
    assert env.status("db")["state"] == "running"
    assert env.status("web")["state"] == "running"


def test_an_editor_lock_file_is_not_an_error(tmp_path):
    """Emacs keeps `.#web.yaml` as a dangling symlink while web.yaml is edited: hidden, never read."""
    (tmp_path / "web.yaml").write_text(vm("web"))
    (tmp_path / ".#web.yaml").symlink_to("root@host.1234:1700000000")
    desired = load_desired(tmp_path)
    assert desired.errors == [] and [v.name for v in desired.vms] == ["web"]
