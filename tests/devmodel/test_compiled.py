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


LIBRARY = compiled.GROUP.rpartition(".")[2] + "__mypyc"  # the group's code; each module's extension loads it
BUILD = (*compiled.COMPILED_MODULES, LIBRARY)


def copy_with_fake_build(tmp_path: Path, built: tuple[str, ...], *, checkout: bool) -> Path:
    """A copy of the package whose `built` extensions are files no Python can load (an interpreter that tried would
    fail to import the module), written now: newer than the sources.  Returns the devmodel folder."""
    shutil.copytree(PACKAGE, tmp_path / "acrnmgr", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    if checkout:
        shutil.copy(ROOT / "setup.py", tmp_path)  # a checkout, not an installed wheel
    devmodel = tmp_path / "acrnmgr" / "devmodel"
    for name in built:
        (devmodel / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not an extension")
    return devmodel


def runs_the_group_from_source(tmp_path: Path) -> bool:
    """Every module of the group imports, from its .py file (blk too, which imports the two others)."""
    probe = ("import acrnmgr.devmodel.blk as b, acrnmgr.devmodel.virtqueue as v, acrnmgr.devmodel.memory as m; "
             "print(all(x.__file__.endswith('.py') for x in (b, v, m)))")
    out = subprocess.run([sys.executable, "-S", "-c", probe], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split() == ["True"]


def test_an_edited_source_wins_over_its_older_build(tmp_path):
    """A checkout edited after the build runs its source, all of the group, and says why (an installed wheel is
    not checked: test_packaging's wheel runs compiled whatever order pip unpacked it in)."""
    devmodel = copy_with_fake_build(tmp_path, BUILD, checkout=True)
    old = time.time() - 60
    for name in compiled.COMPILED_MODULES:
        os.utime(devmodel / f"{name}.py", (old - 60, old - 60))
    for name in BUILD:
        os.utime(devmodel / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}", (old, old))
    (devmodel / "memory.py").touch()
    assert data_path(pythonpath=tmp_path) == (f"pure Python (compiled memory, {LIBRARY} older than the source "
                                              "(rebuild: pip install -e . or scripts/setup.sh))")
    assert runs_the_group_from_source(tmp_path)


def test_a_library_left_by_an_earlier_build_is_stale(tmp_path):
    """Each extension is optional: a rebuild whose library (the group's code) fails to compile writes fresh module
    shims next to the old library, which holds the code as it was before the edit."""
    devmodel = copy_with_fake_build(tmp_path, BUILD, checkout=True)
    old = time.time() - 60
    os.utime(devmodel / f"{LIBRARY}{importlib.machinery.EXTENSION_SUFFIXES[0]}", (old, old))
    (devmodel / "virtqueue.py").touch()
    for name in compiled.COMPILED_MODULES:  # rebuilt after the edit
        os.utime(devmodel / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}")
    assert data_path(pythonpath=tmp_path) == (
        f"pure Python (compiled {LIBRARY} older than the source (rebuild: pip install -e . or scripts/setup.sh))")
    assert runs_the_group_from_source(tmp_path)


@pytest.mark.parametrize("checkout", [False, True], ids=["installed", "checkout"])
def test_a_build_without_its_library_runs_the_source(tmp_path, checkout):
    """A build whose library failed to compile (an optional extension: say the compiler ran out of memory on its
    large C file) still has the small module shims; importing one would fail for want of the library."""
    copy_with_fake_build(tmp_path, compiled.COMPILED_MODULES, checkout=checkout)
    assert data_path(pythonpath=tmp_path) == f"pure Python (incomplete build: no compiled {LIBRARY})"
    assert runs_the_group_from_source(tmp_path)


@pytest.mark.skipif(not can_compile(), reason="no mypyc or no C compiler: the package was installed as pure Python")
def test_a_build_missing_one_module_runs_all_from_source(tmp_path):
    """Without virtqueue's shim, virtqueue would load from source while compiled blk holds its own compiled
    VirtQueue: two classes of one name, and compiled blk would refuse the queues the transport makes."""
    shutil.copytree(PACKAGE, tmp_path / "acrnmgr", ignore=shutil.ignore_patterns("__pycache__"))  # the real build
    (tmp_path / "acrnmgr" / "devmodel" / f"virtqueue{importlib.machinery.EXTENSION_SUFFIXES[0]}").unlink()
    assert data_path(pythonpath=tmp_path) == "pure Python (incomplete build: no compiled virtqueue)"
    probe = ("import acrnmgr.devmodel.vhost_user, acrnmgr.devmodel.blk as b, acrnmgr.devmodel.virtqueue as v; "
             "print(b.VirtQueue is v.VirtQueue)")
    out = subprocess.run([sys.executable, "-S", "-c", probe], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True"]
    assert runs_the_group_from_source(tmp_path)


def test_a_build_that_does_not_load_runs_the_source(tmp_path):
    """An extension of the right name that this Python cannot load (a damaged file, a libpython it was not linked
    for): the source runs, and says why."""
    copy_with_fake_build(tmp_path, BUILD, checkout=False)
    assert data_path(pythonpath=tmp_path).startswith("pure Python (the compiled code does not load: ")
    assert runs_the_group_from_source(tmp_path)


@pytest.mark.slow
def test_core_suite_in_pure_python():
    """The ring and device tests, hostile rings included, against the source of the compiled modules."""
    env = {**os.environ, compiled.PURE_ENV: "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/devmodel/core"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
