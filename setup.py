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

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from acrnmgr.devmodel.compiled import COMPILED_MODULES, GROUP  # noqa: E402  (plain data, no imports)


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
