"""The test tree is one package (tests/__init__.py in every folder), so pytest puts only the repository
root on sys.path, never tests/ itself: tests/libvirt/ cannot stand in for libvirt-python's `libvirt`."""

import importlib.machinery
import site
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_folder_is_a_package():
    folders = {p.parent for p in TESTS.rglob("test_*.py")} | {p.parent for p in TESTS.rglob("conftest.py")}
    missing = sorted(str(f.relative_to(TESTS.parent)) for f in folders if not (f / "__init__.py").exists())
    assert missing == [], f"add an __init__.py to {', '.join(missing)}"


def test_no_test_folder_shadows_a_top_level_module():
    """Look `libvirt` up on sys.path without the site-packages folders, as in a venv without
    libvirt-python: nothing else may answer (a tests/ entry would make tests/libvirt a namespace package)."""
    site_dirs = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    path = [p for p in sys.path if Path(p or ".").resolve() not in site_dirs]
    assert TESTS not in {Path(p or ".").resolve() for p in path}
    assert importlib.machinery.PathFinder.find_spec("libvirt", path) is None
