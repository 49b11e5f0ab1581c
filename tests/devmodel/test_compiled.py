"""The device model's ring code compiled with mypyc (setup.py, acrnmgr/devmodel/compiled.py), and its source.

Both forms must work: the compiled one is what scripts/setup.sh installs (and what bench/blk_loadgen.py
measures), the source is what runs without a C compiler, with ACRNMGR_PURE_PYTHON=1, or after an edit."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import acrnmgr
from acrnmgr.devmodel import compiled

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(acrnmgr.__file__).resolve().parent


def data_path(env: dict[str, str] | None = None, pythonpath: Path | None = None) -> str:
    """compiled.data_path() as a fresh interpreter sees it."""
    full_env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    full_env.update(env or {})
    if pythonpath is not None:
        full_env["PYTHONPATH"] = str(pythonpath)
    # -S: no site-packages, so no editable-install finder that would map acrnmgr to the checkout instead
    argv = [sys.executable, *(["-S"] if pythonpath else []), "-c",
            "from acrnmgr.devmodel.compiled import data_path; print(data_path())"]
    out = subprocess.run(argv, env=full_env, cwd=pythonpath or ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    return out.stdout.strip()


def can_compile() -> bool:
    return importlib.util.find_spec("mypyc") is not None and shutil.which("cc") is not None


@pytest.mark.skipif(not can_compile(), reason="no mypyc or no C compiler: the package was installed as pure Python")
def test_the_installed_ring_code_is_compiled():
    """scripts/setup.sh installs the package with mypyc and a C compiler at hand: the ring code runs compiled
    (a stale or missing build would show up here, not as a slower benchmark)."""
    assert data_path() == "compiled (mypyc)"


def test_pure_python_on_request():
    assert data_path({compiled.PURE_ENV: "1"}) == f"pure Python ({compiled.PURE_ENV}=1)"


def test_an_edited_source_wins_over_its_older_build(tmp_path):
    """A checkout edited after the build runs its source, all of the group, and says why (an installed wheel is
    not checked: test_packaging's wheel runs compiled whatever order pip unpacked it in)."""
    shutil.copytree(PACKAGE, tmp_path / "acrnmgr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", tmp_path)  # a checkout, not an installed wheel
    devmodel = tmp_path / "acrnmgr" / "devmodel"
    for name in compiled.COMPILED_MODULES:  # a build, whether or not this install has one
        (devmodel / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not an extension")
    old = time.time() - 60
    for ext in devmodel.glob("*.so"):
        os.utime(ext, (old, old))
    (devmodel / "memory.py").touch()
    assert data_path(pythonpath=tmp_path) == (
        "pure Python (compiled memory older than the source (rebuild: pip install -e . or scripts/setup.sh))")
    probe = ("import acrnmgr.devmodel.virtqueue as v, acrnmgr.devmodel.memory as m; "
             "print(v.__file__.endswith('.py'), m.__file__.endswith('.py'))")
    out = subprocess.run([sys.executable, "-S", "-c", probe], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.slow
def test_core_suite_in_pure_python():
    """The ring and device tests, hostile rings included, against the source of the compiled modules."""
    env = {**os.environ, compiled.PURE_ENV: "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/devmodel/core"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
