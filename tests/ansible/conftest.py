"""Fixtures for the Ansible collection's tests: the collection built by scripts/build-collection.sh and
installed with ansible-galaxy into a temporary collections path, and a runner for ansible-playbook,
ansible and ansible-doc with an isolated Ansible home and acrnmgr state folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACRNMGR = str(BIN / "acrnmgr")
EXAMPLE = REPO / "ansible_collections" / "acrnmgr" / "acrn" / "examples" / "fleet"

if not (BIN / "ansible-playbook").exists():
    pytest.skip("ansible-core is not installed (pip install -e '.[test]')", allow_module_level=True)


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> Path:
    """The collections path the built tarball was installed into."""
    out = tmp_path_factory.mktemp("collection")
    build = subprocess.run(["bash", str(REPO / "scripts" / "build-collection.sh"), str(out / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    tarball = Path(build.stdout.strip().splitlines()[-1])
    assert tarball.is_file(), build.stdout
    path = out / "collections"
    inst = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", str(tarball), "-p", str(path)],
                          capture_output=True, text=True, timeout=300, cwd=out,
                          env=_env(out / "home", out / "state", path))
    assert inst.returncode == 0, inst.stdout + inst.stderr
    assert (path / "ansible_collections" / "acrnmgr" / "acrn" / "plugins" / "modules" / "apply.py").is_file()
    return path


def _env(home: Path, state: Path, collections: Path) -> dict:
    """No ansible.cfg is read: the commands run in a temporary folder and ANSIBLE_CONFIG is dropped."""
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG" and not k.startswith("ANSIBLE_")}
    return {**env, "ANSIBLE_HOME": str(home), "ANSIBLE_COLLECTIONS_PATH": str(collections),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ACRNMGR_STATE_DIR": str(state), "PATH": f"{BIN}:{os.environ['PATH']}"}


@dataclass
class Run:
    rc: int
    out: str

    def recap(self, host: str = "localhost") -> dict[str, int]:
        m = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", self.out.split("PLAY RECAP", 1)[-1], re.M)
        assert m, self.out
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


class Ansible:
    """ansible / ansible-playbook / ansible-doc against localhost (connection: local), with this
    interpreter, the installed collection, and acrnmgr state in `state`."""

    def __init__(self, tmp: Path, collections: Path):
        self.tmp = tmp
        self.state = tmp / "state"
        self.env = _env(tmp / "ansible-home", self.state, collections)

    def run(self, tool: str, *args: str, timeout: float = 600) -> Run:
        proc = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=self.tmp)
        return Run(proc.returncode, proc.stdout + proc.stderr)

    def module(self, name: str, args: str, *extra: str) -> Run:
        return self.run("ansible", "localhost", "-c", "local", "-i", "localhost,", "-e",
                        f"ansible_python_interpreter={sys.executable}", "-m", name, "-a", args, *extra)

    def acrnmgr(self, *args: str, code: int | None = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run([ACRNMGR, *args], capture_output=True, text=True, env=self.env, timeout=300)
        assert code is None or proc.returncode == code, f"acrnmgr {args}: {proc.returncode}\n{proc.stderr}"
        return proc

    def down_all(self) -> None:
        if self.state.exists():
            subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=self.env,
                           capture_output=True, timeout=120)


@pytest.fixture
def ansible(tmp_path, collection):
    a = Ansible(tmp_path, collection)
    yield a
    a.down_all()


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest)
    return dest
