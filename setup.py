"""Build hook: the embedded device model's ring and guest-memory code, compiled with mypyc when it can be.

The modules of acrnmgr.devmodel.compiled.COMPILED_MODULES are the per-request path of the embedded devices (the
chain walk, the used ring, guest memory, virtio-blk's requests). They are plain typed Python; mypyc (part of mypy,
which already type-checks them) compiles the same files into C extensions that take half the instructions per
request (bench/blk_loadgen.py measures the effect).
There is no second implementation: without mypyc or a C compiler, or with ACRNMGR_PURE_PYTHON=1 set, the
package is pure Python and behaves the same, slower. acrnmgr/devmodel/__init__.py also falls back to the source
at run time when it is set, or when a compiled module is older than its source (an edited checkout).
Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from setuptools import setup


def _compiled_group() -> tuple[tuple[str, ...], str]:
    """COMPILED_MODULES and GROUP, read from the file alone: importing it as acrnmgr.devmodel.compiled would run
    the package's __init__, which loads the current build - the very files this build is about to replace."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "acrnmgr", "devmodel", "compiled.py")
    spec = importlib.util.spec_from_file_location("_acrnmgr_compiled", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.COMPILED_MODULES, module.GROUP


COMPILED_MODULES, GROUP = _compiled_group()


def compiled_extensions() -> list:
    if os.environ.get("ACRNMGR_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("acrnmgr: mypyc is not installed; the device model stays pure Python", file=sys.stderr)
        return []
    paths = [f"acrnmgr/devmodel/{name}.py" for name in COMPILED_MODULES]
    extensions = mypycify(paths, group_name=GROUP, opt_level="3")
    for ext in extensions:
        ext.optional = True  # no C compiler or headers: warn and install pure Python
    return extensions


setup(ext_modules=compiled_extensions())
