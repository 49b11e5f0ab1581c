"""The libvirt engine (engine.py) and its domain watcher (watch.py), which need libvirt-python: the `libvirt`
extra.  Domain XML itself is written by acrnmgr.render.libvirt and read by acrnmgr.importers.libvirt_domain
(standard library only)."""

from __future__ import annotations

from types import ModuleType

from acrnmgr.lifecycle.errors import LifecycleError


def libvirt_python() -> ModuleType:
    """libvirt-python's `libvirt` module; a LifecycleError that says how to install it when it is missing."""
    try:
        import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no py.typed
    except ImportError as exc:
        raise LifecycleError(f"the libvirt engine needs libvirt-python ({exc}): "
                             "pip install 'acrnmgr[libvirt]'") from None
    return libvirt
