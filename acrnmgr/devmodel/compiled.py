"""The device model's compiled data path: which modules setup.py compiles with mypyc, and when to run their source.

setup.py compiles COMPILED_MODULES, as one group, into C extensions (in place for an editable install). Python
imports an extension before a .py of the same name, so a checkout whose virtqueue.py was edited after the build
would run the old compiled code. :func:`use_source_when_needed`, called when the package is imported, prevents
that: with ``ACRNMGR_PURE_PYTHON=1``, when a compiled module of a checkout is older than its source, or when the build
is unusable (a module's extension or the group's library missing - each extension is optional, so a build can lose
any of them - or the library failing to load), every module of the group is imported from its .py file. All or none:
compiled code calls the other modules of its group directly, so it would refuse an object of a class that was loaded
from source.

No imports beyond the standard library: setup.py reads this module before anything is installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

GROUP = "acrnmgr.devmodel.hotpath"
COMPILED_MODULES = ("virtqueue", "memory", "blk")
PURE_ENV = "ACRNMGR_PURE_PYTHON"
# mypyc puts a group's code in one library, <group>__mypyc; each module's extension is a shim that loads it
_LIBRARY = GROUP.rpartition(".")[2] + "__mypyc"

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE = __name__.rpartition(".")[0]
# Only a checkout has sources that change after the build; an installed wheel's file times are those of its
# unpacking, in no particular order.
_CHECKOUT = os.path.exists(os.path.join(_HERE, os.pardir, os.pardir, "setup.py"))


def _extension(name: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_HERE, name + suffix)
        if os.path.exists(path):
            return path
    return None


def _stale() -> list[str]:
    """Modules whose compiled extension is older than their source, in a checkout; and the group's library if it is
    older than any of them (a rebuild whose library failed to compile, being optional, leaves the old one)."""
    if not _CHECKOUT:
        return []
    sources = {name: os.path.getmtime(os.path.join(_HERE, name + ".py")) for name in COMPILED_MODULES}
    out = [name for name in COMPILED_MODULES
           if (ext := _extension(name)) is not None and os.path.getmtime(ext) < sources[name]]
    if (library := _extension(_LIBRARY)) is not None and os.path.getmtime(library) < max(sources.values()):
        out.append(_LIBRARY)
    return out


def _unusable() -> str | None:
    """Why a build of the group that is partly or wholly here cannot run (None: it can, or there is none)."""
    found = {name: _extension(name) for name in (*COMPILED_MODULES, _LIBRARY)}
    if not any(found.values()):
        return None
    if missing := [name for name, path in found.items() if path is None]:
        return f"incomplete build: no compiled {', '.join(missing)}"
    try:
        importlib.import_module(f"{_PACKAGE}.{_LIBRARY}")
    except ImportError as exc:  # e.g. not an extension of this Python, or a symbol its libpython lacks
        return f"the compiled code does not load: {exc}"
    return None


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the group's modules as their .py files, ahead of the extensions next to them."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != _PACKAGE or name not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, os.path.join(_HERE, name + ".py"))


_source_reason: str | None = None


def use_source_when_needed() -> None:
    """Import the group from source when asked to (ACRNMGR_PURE_PYTHON=1), or when its build is stale or unusable."""
    global _source_reason
    if _source_reason is not None or any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return
    if os.environ.get(PURE_ENV) == "1":
        _source_reason = f"{PURE_ENV}=1"
    elif stale := _stale():
        _source_reason = (f"compiled {', '.join(stale)} older than the source (rebuild: "
                          f"pip install -e . or scripts/setup.sh)")
    elif unusable := _unusable():
        _source_reason = unusable
    else:
        return
    sys.meta_path.insert(0, _SourceFinder())


def data_path() -> str:
    """How the ring code runs in this process: 'compiled (mypyc)' or 'pure Python (why)'."""
    module = sys.modules.get(f"{_PACKAGE}.virtqueue")
    if module is None:
        importlib.import_module(f"{_PACKAGE}.virtqueue")
        module = sys.modules[f"{_PACKAGE}.virtqueue"]
    if not (module.__file__ or "").endswith(".py"):
        return "compiled (mypyc)"
    if _source_reason is not None:
        return f"pure Python ({_source_reason})"
    return "pure Python (not compiled at install: no mypyc or no C compiler)"
