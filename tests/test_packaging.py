"""The package data (schemas/ -> acrnmgr.schemas, templates/ -> acrnmgr.templates) is found through
importlib.resources in every install mode: the editable install these tests run from, and a wheel
installed with `pip install --target DIR` (built and installed offline, run from DIR alone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest
from typer.testing import CliRunner

import acrnmgr
from acrnmgr.devmodel.compiled import data_path
from acrnmgr.cli import app
from acrnmgr.resources import SCHEMAS, TEMPLATES, schema_text, template_loader

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
SPEC = "examples/linux-vm.yaml"
HOST = "examples/hosts/acrn-service-vm.yaml"
RENDER = ["render", SPEC, "--host", HOST, "--format", "script"]


def test_pyproject_lists_every_package():
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "acrnmgr").rglob("__init__.py")}
    assert set(PYPROJECT["packages"]) == on_disk | {SCHEMAS, TEMPLATES}, "update [tool.setuptools] packages"
    assert PYPROJECT["package-dir"] == {SCHEMAS: "schemas", TEMPLATES: "templates"}


@pytest.mark.skipif(not acrnmgr.__file__.startswith(str(ROOT)), reason="acrnmgr is not installed from this checkout")
def test_a_checkout_reads_the_top_level_folders():
    """Editable install: an edit to schemas/ or templates/ is live, with no reinstall."""
    assert Path(str(files(SCHEMAS))) == ROOT / "schemas"
    assert Path(str(files(TEMPLATES))) == ROOT / "templates"
    assert json.loads(schema_text()) == json.loads((ROOT / "schemas/vm.schema.json").read_text())
    source, filename, _ = template_loader().get_source(None, "launch_user_vm.sh.j2")
    assert source == (ROOT / "templates/launch_user_vm.sh.j2").read_text()
    assert Path(filename) == ROOT / "templates/launch_user_vm.sh.j2"


def _pip(*args: str | Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"pip {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"


def _build_wheel(tmp_path_factory, env: dict[str, str] | None = None) -> Path:
    """A wheel built offline (no build isolation) from a copy of what an sdist holds."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src)
    for name in ("acrnmgr", "schemas", "templates"):  # not the checkout's own build of the compiled modules
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    dist = tmp_path_factory.mktemp("dist")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", dist, src, env=env)
    (built,) = dist.glob("acrnmgr-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory)


@pytest.mark.slow
def test_without_a_c_compiler_the_wheel_is_pure_python_and_works(tmp_path_factory, tmp_path):
    """setup.py's compiled modules are optional: a build whose C compiler fails still installs, as source."""
    built = _build_wheel(tmp_path_factory, env={**os.environ, "CC": "false"})
    assert not [n for n in zipfile.ZipFile(built).namelist() if n.endswith(".so")]
    target = tmp_path / "target"
    _pip("install", "--no-deps", "--no-index", "--target", target, built)
    probe = ("from acrnmgr.devmodel.compiled import data_path; print(data_path()); "
             "import acrnmgr.devmodel.blk, acrnmgr.devmodel.virtqueue as v; print(v.__file__)")
    out = subprocess.run([sys.executable, "-P", "-c", probe], env={**os.environ, "PYTHONPATH": str(target)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["pure Python (not compiled at install: no mypyc or no C compiler)",
                                       str(target / "acrnmgr/devmodel/virtqueue.py")]


@pytest.mark.slow
def test_the_wheel_ships_every_module_and_the_data_inside_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "acrnmgr").rglob("*.py")}
    assert sources <= names
    assert {"acrnmgr/schemas/vm.schema.json", "acrnmgr/templates/launch_user_vm.sh.j2"} <= names
    assert not [n for n in names if not n.startswith("acrnmgr")], "nothing outside the package (no data-files)"
    assert wheel.name.startswith(f"acrnmgr-{acrnmgr.__version__}-")


@pytest.mark.slow
def test_pip_install_target_runs_from_that_folder_alone(wheel, tmp_path):
    target = tmp_path / "target"
    _pip("install", "--no-deps", "--no-index", "--target", target, wheel)
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*argv: str) -> subprocess.CompletedProcess:
        # cwd is the checkout for the example files; -P keeps it off sys.path, so acrnmgr comes from target
        return subprocess.run([sys.executable, "-P", *argv], cwd=ROOT, env=env, capture_output=True, text=True)

    where = run("-c", "import acrnmgr, acrnmgr.resources as r; print(acrnmgr.__file__); print(r.files(r.SCHEMAS))")
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [str(target / "acrnmgr/__init__.py"), str(target / "acrnmgr/schemas")]

    cli = "import sys; from acrnmgr.cli import main; sys.argv[0] = 'acrnmgr'; main()"
    schema = run("-c", cli, "schema")
    assert schema.returncode == 0, schema.stderr
    assert json.loads(schema.stdout) == json.loads(schema_text())
    validate = run("-c", cli, "validate", SPEC)
    assert validate.returncode == 0, validate.stderr
    render = run("-c", cli, *RENDER)
    assert render.returncode == 0, render.stderr
    assert render.stdout == CliRunner().invoke(app, RENDER).stdout
    ring = run("-c", "from acrnmgr.devmodel.compiled import data_path; print(data_path())")
    assert ring.returncode == 0, ring.stderr
    # setup.py compiled the ring code into the wheel wherever this checkout's own install was compiled
    assert ring.stdout.strip() == data_path()
    assert render.stdout.startswith("#!/bin/bash\n# Launch script for the ACRN post-launched VM linux-demo")
