"""The libvirt engine: up / down / status through libvirt-python (define, create, shutdown,
destroy, state) on any connection URI (qemu:///system, acrn:///system, test:///default).

libvirt supervises the VM itself: the spec hash lives in the domain's <metadata><acrnmgr:vm
hash=...>, which is what `up` compares for idempotence and `apply` for drift. Only a QEMU domain with
embedded-DM devices (vhost-user disks/interfaces) has an acrnmgr state folder: `up` starts their
`acrnmgr devmodel serve` processes under the lifecycle supervisor (DevmodelEngine) before it creates
the domain, and they stop when the domain stops.

Connections are cached per URI for the life of the process: the test driver (test:///default)
keeps its domains only while a connection to it is open."""

from __future__ import annotations

import atexit
import signal
import sys
import xml.etree.ElementTree as ET
from typing import Callable

from acrnmgr.libvirt import libvirt_python
from acrnmgr.lifecycle.engine import Engine, LaunchPlan, LifecycleError, PlanError, ProcessSpec, Running, send_signal
from acrnmgr.lifecycle.state import VmState, wait_until

Progress = Callable[[str], None]
_CONNECTIONS: dict = {}
# Drop them while libvirt's module is intact: one left to the interpreter's teardown is closed by
# virConnect.__del__ after libvirtmod is gone ("Exception ignored ... 'NoneType' object is not callable").
atexit.register(_CONNECTIONS.clear)


def _quiet(_: str) -> None:
    pass


def connect(uri: str):
    libvirt = libvirt_python()

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
    libvirt = libvirt_python()

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "stopped", 6: "crashed",
           7: "suspended"}


def domain_hash(dom) -> str | None:
    from acrnmgr.render.libvirt import ACRNMGR_NS

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


class DevmodelEngine(Engine):
    """The lifecycle engine for a libvirt domain's embedded device models, so the manager and the
    supervisor run them exactly like the qemu engine's helpers: the helpers are the `acrnmgr devmodel
    serve` processes behind the domain's vhost-user sockets, the main process is the domain watcher
    (acrnmgr.libvirt.watch), and stopping "the VM" is shutting down or destroying the domain."""

    name = "libvirt"

    def __init__(self, uri: str | None = None, xml: str | None = None):
        self.uri, self.xml = uri, xml

    def plan(self, spec, host, state) -> LaunchPlan:
        from acrnmgr.lifecycle.qemu_argv import compile_qemu

        if self.uri is None:
            raise PlanError(f"{spec.name}: start libvirt domains with `acrnmgr up --engine libvirt --connect URI`")
        sockets = {el.get("path") for el in ET.fromstring(self.xml).iter("source") if el.get("type") == "unix"}
        # QEMU's plan names the same sockets as the exported domain; keep the helpers the domain uses
        helpers = [h for h in compile_qemu(spec, host, state.dir).helpers if h.wait_socket in sockets]
        watcher = ProcessSpec("libvirt-domain", [sys.executable, "-m", "acrnmgr.libvirt.watch", self.uri, spec.name],
                              role="main")
        return LaunchPlan("libvirt", [*helpers, watcher], cleanup=[h.wait_socket for h in helpers],
                          info={"uri": self.uri, "vm": spec.name})

    def prepare(self, spec, host, plan, progress) -> None:
        from acrnmgr.lifecycle.acrn import prepare_taps

        prepare_taps(spec, plan, progress)  # the net device model's tap, made and bridged as for the qemu engine

    def _domain(self, vm: Running):
        try:
            return _lookup(connect(vm.info["uri"]), vm.info["vm"])
        except LifecycleError:
            return None

    def query(self, vm: Running) -> str | None:
        dom = self._domain(vm)
        return _STATES.get(dom.state()[0]) if dom is not None else None

    def _call(self, method: str, what: str):
        def action(vm: Running) -> str | None:
            libvirt = libvirt_python()

            dom = self._domain(vm)
            try:
                if dom is None or not dom.isActive():
                    return None
                getattr(dom, method)()
            except libvirt.libvirtError:
                return None
            return what

        return action

    def graceful_actions(self, vm: Running):
        return [self._call("shutdown", "shutdown (ACPI power button) through libvirt")]

    def force_actions(self, vm: Running):
        return [self._call("destroy", "destroy through libvirt"), send_signal(signal.SIGTERM)]


def _start_devmodels(spec_path: str, spec, xml: str, uri: str, host, progress: Progress) -> bool:
    """Start the device models behind the domain's vhost-user sockets under the lifecycle supervisor
    (state folder <state>/<vm>, as for the qemu engine). False when the domain has none."""
    from acrnmgr.lifecycle import manager

    if not any(el.get("type") == "unix" for el in ET.fromstring(xml).iter("source")):
        return False
    _stop_devmodels(spec.name, progress, force=True)  # leftovers of an earlier run of this domain
    manager.up(spec_path, DevmodelEngine(uri, xml), False, host, lambda m: progress(f"device models: {m}"))
    return True


def _stop_devmodels(name: str, progress: Progress, force: bool = False) -> None:
    """Once the domain is gone, its watcher exits and the supervisor stops the device models; wait
    for that, and stop them ourselves when it does not happen."""
    from acrnmgr.lifecycle import manager

    state = VmState(name)
    launch = state.read_json("launch.json")
    if launch is None or launch.get("engine") != "libvirt":
        return

    def gone() -> bool:
        vm = manager._running(state)
        return vm is None or not manager._active(vm)

    if gone():
        return
    if force or not wait_until(gone, 10.0, 0.1):
        manager.down(name, 5.0, True, progress)
    progress(f"{name}: device models stopped")


def up(spec_path: str, uri: str, host=None, progress: Progress = _quiet, spec=None) -> dict:
    libvirt = libvirt_python()

    from acrnmgr.host import HostProfile
    from acrnmgr.render.libvirt import ExportError, export_domain
    from acrnmgr.lifecycle.accel import with_usable_kvm
    from acrnmgr.lifecycle.state import state_root
    from acrnmgr.spec.validation import load_spec

    host = host or HostProfile.detect()
    if uri.startswith("qemu:///"):  # a local QEMU: its domain type follows whether KVM really works here
        host, fallback = with_usable_kvm(host, state_root())
        if fallback:
            progress(f"warning: {fallback}")
    spec = spec or load_spec(spec_path, host=None)
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
    # The test driver runs nothing (and its domains live in this process only): no device models for it.
    devmodels = not uri.startswith("test:") and _start_devmodels(spec_path, spec, xml, uri, host, progress)
    try:
        dom = conn.defineXML(xml)
        progress(f"defined {spec.name} on {uri}; starting it")
        dom.create()
    except libvirt.libvirtError as exc:
        if devmodels:
            _stop_devmodels(spec.name, progress, force=True)
        raise LifecycleError(f"{spec.name}: libvirt refused it: {exc.get_error_message()}") from None
    return {"name": spec.name, "action": "started", "engine": "libvirt", "uri": uri, "id": dom.ID()}


def down(name: str, uri: str, timeout: float = 30.0, force: bool = False, progress: Progress = _quiet,
         undefine: bool = False) -> dict:
    libvirt = libvirt_python()

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
                if wait_until(lambda: not dom.isActive(), timeout, 0.1):
                    how = "graceful"
            if how is None:
                progress(f"{name}: destroy (forced power-off)")
                dom.destroy()
                how = "forced"
        if undefine:
            dom.undefine()
    except libvirt.libvirtError as exc:
        raise LifecycleError(f"{name}: {exc.get_error_message()}") from None
    if not uri.startswith("test:"):
        _stop_devmodels(name, progress)
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
