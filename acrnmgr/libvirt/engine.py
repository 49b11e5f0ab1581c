"""The libvirt engine: up / down / status through libvirt-python (define, create, shutdown,
destroy, state) on any connection URI (qemu:///system, acrn:///system, test:///default).

libvirt supervises the VM itself, so unlike the acrn/qemu engines there is no acrnmgr supervisor
and no state folder: the spec hash lives in the domain's <metadata><acrnmgr:vm hash=...>, which is
what `up` compares for idempotence and `apply` for drift.

Connections are cached per URI for the life of the process: the test driver (test:///default)
keeps its domains only while a connection to it is open."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Callable

from acrnmgr.lifecycle.engine import LifecycleError

Progress = Callable[[str], None]
_CONNECTIONS: dict = {}


def _quiet(_: str) -> None:
    pass


def connect(uri: str):
    import libvirt

    conn = _CONNECTIONS.get(uri)
    if conn is not None:
        try:
            if conn.isAlive():
                return conn
        except libvirt.libvirtError:
            pass
    # libvirt's default handler prints every error to stderr, also the ones we expect (a lookup of a
    # domain that does not exist yet); they still raise libvirtError, which is reported once.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LifecycleError(f"cannot connect to libvirt at {uri}: {exc.get_error_message()}") from None
    _CONNECTIONS[uri] = conn
    return conn


def _lookup(conn, name: str):
    import libvirt

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "stopped", 6: "crashed",
           7: "suspended"}


def domain_hash(dom) -> str | None:
    from acrnmgr.libvirt.domain import ACRNMGR_NS

    meta = ET.fromstring(dom.XMLDesc()).find(f"metadata/{{{ACRNMGR_NS}}}vm")
    return meta.get("hash") if meta is not None else None


def flavor_for(uri: str) -> str:
    return "acrn" if uri.startswith("acrn") else "qemu"


def _with_uuid(xml: str, uuid: str) -> str:
    root = ET.fromstring(xml)
    el = root.find("uuid")
    if el is None:
        el = ET.Element("uuid")
        root.insert(1, el)
    el.text = uuid
    return ET.tostring(root, encoding="unicode")


def up(spec_path: str, uri: str, host=None, progress: Progress = _quiet, spec=None) -> dict:
    import libvirt

    from acrnmgr.host import HostProfile
    from acrnmgr.libvirt.domain import ExportError, export_domain
    from acrnmgr.spec.loader import load_spec

    host = host or HostProfile.detect()
    spec = spec or load_spec(spec_path, host=None)
    if not uri.startswith("test:"):
        from acrnmgr.compiler.backends import choose

        embedded = [d.get("name") or d["type"] for d in spec.devices
                    if choose(d, host, flavor_for(uri)).backend == "embedded"]
        if embedded and flavor_for(uri) == "qemu":
            raise LifecycleError(f"{spec.name}: {', '.join(embedded)} would be served by the embedded device model, "
                                 "which the libvirt engine does not start; set backend: vbs-u on them, or use "
                                 "--engine qemu")
    try:
        xml, warnings = export_domain(spec, host, flavor_for(uri))
    except ExportError as exc:
        raise LifecycleError(f"{spec.name}: {exc}") from None
    for w in warnings:
        progress(f"warning: {w}")
    conn = connect(uri)
    dom = _lookup(conn, spec.name)
    if dom is not None and dom.isActive():
        if domain_hash(dom) == spec.hash:
            progress(f"{spec.name} is already running with this spec")
            return {"name": spec.name, "action": "unchanged", "engine": "libvirt"}
        raise LifecycleError(f"{spec.name} is running with a different spec; run `acrnmgr down {spec.name} "
                             f"--engine libvirt --connect {uri}` first")
    if dom is not None:  # redefining a defined domain must keep its UUID, else libvirt refuses it
        xml = _with_uuid(xml, dom.UUIDString())
    try:
        dom = conn.defineXML(xml)
        progress(f"defined {spec.name} on {uri}; starting it")
        dom.create()
    except libvirt.libvirtError as exc:
        raise LifecycleError(f"{spec.name}: libvirt refused it: {exc.get_error_message()}") from None
    return {"name": spec.name, "action": "started", "engine": "libvirt", "uri": uri, "id": dom.ID()}


def down(name: str, uri: str, timeout: float = 30.0, force: bool = False, progress: Progress = _quiet,
         undefine: bool = False) -> dict:
    import libvirt

    conn = connect(uri)
    dom = _lookup(conn, name)
    if dom is None:
        raise LifecycleError(f"no domain named {name} on {uri}")
    how = "not running"
    try:
        if dom.isActive():
            how = None
            if not force:
                progress(f"{name}: shutdown (ACPI power button); waiting up to {timeout:g} s")
                try:
                    dom.shutdown()
                except libvirt.libvirtError as exc:
                    progress(f"{name}: shutdown refused ({exc.get_error_message()})")
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and dom.isActive():
                    time.sleep(0.1)
                if not dom.isActive():
                    how = "graceful"
            if how is None:
                progress(f"{name}: destroy (forced power-off)")
                dom.destroy()
                how = "forced"
        if undefine:
            dom.undefine()
    except libvirt.libvirtError as exc:
        raise LifecycleError(f"{name}: {exc.get_error_message()}") from None
    progress(f"{name} stopped ({how})")
    return {"name": name, "action": "none" if how == "not running" else "stopped", "how": how}


def status(name: str, uri: str) -> dict:
    conn = connect(uri)
    dom = _lookup(conn, name)
    if dom is None:
        raise LifecycleError(f"no domain named {name} on {uri}")
    state, reason = dom.state()
    return {"name": name, "engine": "libvirt", "uri": uri, "state": _STATES.get(state, str(state)),
            "reason": reason, "id": dom.ID() if dom.isActive() else None, "spec_hash": domain_hash(dom)}


def list_vms(uri: str) -> list[dict]:
    conn = connect(uri)
    out = []
    for dom in conn.listAllDomains():
        if domain_hash(dom) is None:
            continue  # not ours
        out.append(status(dom.name(), uri))
    return out
