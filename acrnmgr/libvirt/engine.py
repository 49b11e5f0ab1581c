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
import builtins
import signal
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from acrnmgr.host import HostProfile
from acrnmgr.libvirt import libvirt_python
from acrnmgr.lifecycle.accel import with_usable_kvm
from acrnmgr.lifecycle.acrn import prepare_taps
from acrnmgr.lifecycle.engine import Console, LaunchPlan, Progress, Running, quiet, send_signal
from acrnmgr.lifecycle.errors import LifecycleError
from acrnmgr.lifecycle.manager import SupervisedEngine
from acrnmgr.lifecycle.qemu_argv import qemu_launch
from acrnmgr.lifecycle.state import VM_NAME, ProcessSpec, VmState, wait_until
from acrnmgr.model import VmSpec
from acrnmgr.paths import state_root
from acrnmgr.plan import make_plan
from acrnmgr.render.libvirt import ACRNMGR_NS, ExportError, render_domain

DEFAULT_URI = "qemu:///system"
_CONNECTIONS: dict = {}
# Drop them while libvirt's module is intact: one left to the interpreter's teardown is closed by
# virConnect.__del__ after libvirtmod is gone ("Exception ignored ... 'NoneType' object is not callable").
atexit.register(_CONNECTIONS.clear)


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


class DevmodelEngine(SupervisedEngine):
    """The supervised engine of a libvirt domain's embedded device models, so the supervisor runs
    them exactly like the qemu engine's helpers: the helpers are the `acrnmgr devmodel serve`
    processes behind the domain's vhost-user sockets, the main process is the domain watcher
    (acrnmgr.libvirt.watch), and stopping "the VM" is shutting down or destroying the domain. Its
    state folder's launch record names the libvirt engine with its URI, so `engine_of` of the VM is
    the LibvirtEngine."""

    name = "libvirt"

    def __init__(self, uri: str, sockets: frozenset[str] = frozenset()):
        super().__init__()
        self.options = {"uri": uri}
        self.uri, self.sockets = uri, sockets

    def plan(self, vm: VmSpec, host: HostProfile, state: VmState) -> LaunchPlan:
        # QEMU's plan names the same sockets as the exported domain; keep the helpers the domain uses
        launch = qemu_launch(make_plan(vm, host, "qemu", state_dir=state.dir))
        helpers = [h for h in launch.helpers if h.wait_socket in self.sockets]
        watcher = ProcessSpec("libvirt-domain", [sys.executable, "-m", "acrnmgr.libvirt.watch", self.uri, vm.name],
                              role="main")
        return LaunchPlan("libvirt", [*helpers, watcher],
                          cleanup=[h.wait_socket for h in helpers if h.wait_socket is not None],
                          info={"uri": self.uri, "vm": vm.name})

    def prepare(self, vm: VmSpec, host: HostProfile, plan: LaunchPlan, progress: Progress) -> None:
        prepare_taps(vm, plan, progress)  # the net device model's tap, made and bridged as for the qemu engine

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


class LibvirtEngine:
    """The libvirt engine (acrnmgr.lifecycle.engine.Engine) on one connection URI."""

    name = "libvirt"
    spec_host_checks = False  # the domain's host is libvirt's, not necessarily the one acrnmgr probes

    def __init__(self, uri: str = DEFAULT_URI):
        self.uri = uri
        self.options = {"uri": uri}

    def _domain(self, name: str):
        dom = _lookup(connect(self.uri), name)
        if dom is None:
            raise LifecycleError(f"no domain named {name} on {self.uri}")
        return dom

    def _devmodels(self) -> DevmodelEngine:
        return DevmodelEngine(self.uri)

    def _has_devmodels(self, name: str) -> bool:
        """The domain has device models in a state folder (a domain acrnmgr did not define may have a
        name that cannot name a state folder: it has none)."""
        if not VM_NAME.fullmatch(name):
            return False
        launch = VmState(name).read_launch()
        return launch is not None and launch.engine == self.name and launch.engine_options.get("uri") == self.uri

    # up ----------------------------------------------------------------------------------------
    def up(self, vm: VmSpec, host: HostProfile, *, wait_ready: bool = False, progress: Progress = quiet) -> dict:
        """Define and start the domain (libvirt returns once it runs: `wait_ready` has nothing to add)."""
        libvirt = libvirt_python()

        xml = self._export(vm, host, progress)
        conn = connect(self.uri)
        dom = _lookup(conn, vm.name)
        if dom is not None and dom.isActive():
            if domain_hash(dom) == vm.hash:
                progress(f"{vm.name} is already running with this spec")
                return {"name": vm.name, "action": "unchanged", "engine": self.name}
            raise LifecycleError(f"{vm.name} is running with a different spec; run `acrnmgr down {vm.name} "
                                 f"--connect {self.uri}` first")
        if dom is not None:  # redefining a defined domain must keep its UUID, else libvirt refuses it
            if vm.uuid and vm.uuid != dom.UUIDString().lower():
                raise LifecycleError(f"{vm.name}: the domain defined on {self.uri} has UUID {dom.UUIDString()}, "
                                     f"spec.uuid is {vm.uuid}, and libvirt cannot change a domain's UUID; "
                                     f"`virsh -c {self.uri} undefine {vm.name}` (its disks stay) and up again, or "
                                     "set spec.uuid to the domain's")
            xml = _with_uuid(xml, dom.UUIDString())
        # The test driver runs nothing (and its domains live in this process only): no device models for it.
        devmodels = not self.uri.startswith("test:") and self._start_devmodels(vm, xml, host, progress)
        try:
            dom = conn.defineXML(xml)
            progress(f"defined {vm.name} on {self.uri}; starting it")
            dom.create()
        except libvirt.libvirtError as exc:
            if devmodels:
                self._stop_devmodels(vm.name, progress, force=True)
            raise LifecycleError(f"{vm.name}: libvirt refused it: {exc.get_error_message()}") from None
        return {"name": vm.name, "action": "started", "engine": self.name, "uri": self.uri, "id": dom.ID()}

    def _export(self, vm: VmSpec, host: HostProfile, progress: Progress) -> str:
        if self.uri.startswith("qemu:///"):  # a local QEMU: its domain type follows whether KVM really works here
            host, fallback = with_usable_kvm(host, state_root())
            if fallback:
                progress(f"warning: {fallback}")
        try:
            plan = make_plan(vm, host, "acrn" if flavor_for(self.uri) == "acrn" else "qemu",
                             state_dir=state_root() / vm.name)
            xml, warnings = render_domain(plan, host)
        except ExportError as exc:
            raise LifecycleError(f"{vm.name}: {exc}") from None
        for w in warnings:
            progress(f"warning: {w}")
        return xml

    def _start_devmodels(self, vm: VmSpec, xml: str, host: HostProfile, progress: Progress) -> bool:
        """Start the device models behind the domain's vhost-user sockets under the lifecycle supervisor
        (state folder <state>/<vm>, as for the qemu engine). False when the domain has none."""
        others = {getattr(d, "socket", None) for d in vm.devices if d.backend == "vhost-user"}  # not ours to serve
        sockets = frozenset(path for el in ET.fromstring(xml).iter("source")
                            if el.get("type") == "unix" and (path := el.get("path")) is not None
                            and path not in others)
        if not sockets:
            return False
        self._stop_devmodels(vm.name, progress, force=True)  # leftovers of an earlier run of this domain
        DevmodelEngine(self.uri, sockets).up(vm, host, progress=lambda m: progress(f"device models: {m}"))
        return True

    def _stop_devmodels(self, name: str, progress: Progress, force: bool = False) -> None:
        """Once the domain is gone, its watcher exits and the supervisor stops the device models; wait
        for that, and stop them ourselves when it does not happen."""
        if not self._has_devmodels(name):
            return
        devmodels = self._devmodels()
        if not devmodels.active(name):
            return
        if force or not wait_until(lambda: not devmodels.active(name), 10.0, 0.1):
            devmodels.down(name, timeout=5.0, force=True, progress=progress)
        progress(f"{name}: device models stopped")

    # down --------------------------------------------------------------------------------------
    def down(self, name: str, *, timeout: float = 30.0, force: bool = False, progress: Progress = quiet) -> dict:
        libvirt = libvirt_python()

        dom = self._domain(name)
        how: str | None = "not running"
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
        except libvirt.libvirtError as exc:
            raise LifecycleError(f"{name}: {exc.get_error_message()}") from None
        self._stop_devmodels(name, progress)
        progress(f"{name} stopped ({how})")
        return {"name": name, "action": "none" if how == "not running" else "stopped", "how": how}

    # status ------------------------------------------------------------------------------------
    def status(self, name: str) -> dict:
        dom = self._domain(name)
        state, reason = dom.state()
        result = {"name": name, "engine": self.name, "uri": self.uri, "state": _STATES.get(state, str(state)),
                  "reason": reason, "id": dom.ID() if dom.isActive() else None, "spec_hash": domain_hash(dom),
                  "pid": None, "spec": None}
        if self._has_devmodels(name):  # the supervisor's view of the device models
            models = self._devmodels().status(name)
            result["processes"] = models["processes"]
            if result["state"] == "running" and models.get("degraded"):
                result["state"], result["degraded"] = "degraded", models["degraded"]
        return result

    def list(self) -> list[str]:
        return sorted(dom.name() for dom in connect(self.uri).listAllDomains() if domain_hash(dom) is not None)

    def active(self, name: str) -> bool:
        dom = _lookup(connect(self.uri), name)
        return (bool(dom is not None and dom.isActive())
                or (self._has_devmodels(name) and self._devmodels().active(name)))

    def launch_lines(self, name: str) -> builtins.list[str]:
        return self._domain(name).XMLDesc().splitlines()

    def planned_lines(self, vm: VmSpec, host: HostProfile) -> builtins.list[str]:
        return self._export(vm, host, quiet).splitlines()

    def log_files(self, name: str) -> builtins.list[Path]:
        """libvirt's log of a local QEMU domain (its stdio console, through virtlogd), then the device models'."""
        self._domain(name)
        files = [Path(f"/var/log/libvirt/qemu/{name}.log")] if self.uri == "qemu:///system" else []
        if self._has_devmodels(name):
            files += self._devmodels().log_files(name)
        return [f for f in files if f.exists()]

    def console(self, name: str, port: str | None = None) -> Console:
        self._domain(name)
        raise LifecycleError(f"acrnmgr cannot attach to a libvirt domain's console yet: use "
                             f"`virsh -c {self.uri} console {name}`")
