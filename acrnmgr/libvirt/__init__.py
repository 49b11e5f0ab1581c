"""acrnmgr and libvirt: domain XML export and import (domain.py, standard library only), and the libvirt
engine (engine.py) with its domain watcher (watch.py), which need libvirt-python: the `libvirt` extra."""

from __future__ import annotations

from types import ModuleType


def libvirt_python() -> ModuleType:
    """libvirt-python's `libvirt` module; a LifecycleError that says how to install it when it is missing."""
    from acrnmgr.lifecycle.engine import LifecycleError

    try:
        import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no py.typed
    except ImportError as exc:
        raise LifecycleError(f"the libvirt engine needs libvirt-python ({exc}): "
                             "pip install 'acrnmgr[libvirt]'") from None
    return libvirt
