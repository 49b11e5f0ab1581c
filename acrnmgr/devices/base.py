"""What every device-kind module builds on: the backend choice, and the contexts the renderers hand a device.

Backends: ``vbs-u`` (the VMM's own user-space virtio device: acrn-dm's VBS-U, or QEMU's built-in device on the
qemu engine), ``vhost`` (kernel vhost), ``embedded`` (our Python device model over vhost-user), ``vhost-user`` (a
vhost-user socket another process serves: SPDK, qemu-storage-daemon, OVS-DPDK), ``passthru`` (a host
PCI function), ``acrn-dm`` (a non-virtio device acrn-dm emulates itself) and ``hypervisor`` (an hv:/ ivshmem
region).  acrn-dm has no vhost-user frontend, so an ``embedded`` device cannot attach to an acrn-dm VM.

A device kind is a :class:`~acrnmgr.model.Device` subclass in ``acrnmgr/devices/<kind>.py`` that implements
``from_spec`` (typed fields, defaults applied), ``choose`` (backend and reason per engine), ``acrn_args`` (the
acrn-dm ``-s`` config) and ``qemu`` (QEMU arguments).
"""

from __future__ import annotations

import json
import shutil
import stat
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from acrnmgr.host import HostProfile
from acrnmgr.model import Device, JsonPath
from acrnmgr.spec.diagnostics import Diagnostic, format_path

NO_VHOST_USER = "acrn-dm has no vhost-user frontend, so the embedded device model cannot attach to an acrn-dm VM"
MAX_SOCKET_PATH = 107


class CheckContext(Protocol):
    """Where a device kind's semantic checks report (acrnmgr.spec.checks gives one per spec)."""

    def error(self, path: JsonPath, message: str, hint: str | None = None, *, key: bool = False) -> None: ...

    def warn(self, path: JsonPath, message: str, hint: str | None = None) -> None: ...

    def where(self, path: JsonPath) -> str: ...


class GrammarError(ValueError):
    """An acrn-dm argv acrn-dm would refuse (usage error, or a device config that fails to parse)."""


def acrn_int(text: str, what: str, lo: int | None = None, hi: int | None = None, base: int = 10) -> int:
    """A number in an acrn-dm option, range-checked as acrn-dm checks it."""
    try:
        value = int(text, base)
    except (TypeError, ValueError):
        raise GrammarError(f"{what}: {text!r} is not a number") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise GrammarError(f"{what}: {value} out of range {lo}..{hi}")
    return value


@dataclass(frozen=True)
class SlotDevice:
    """One acrn-dm `-s [bus:]slot[:func],emul[,config]`, parsed (params: what the emulation's parser read)."""

    bus: int
    slot: int
    func: int
    emul: str
    config: str  # everything after "emul," (including a leading "b," boot flag)
    boot: bool = False
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def bdf(self) -> str:
        return f"{self.bus}:{self.slot}:{self.func}"


@dataclass(frozen=True)
class Choice:
    backend: str | None  # None when there is no valid choice (see error)
    reason: str
    error: str | None = None
    suggestion: str | None = None


class Diagnostics:
    """Collects diagnostics pinned to the spec's file:line:col."""

    def __init__(self, locate: Any) -> None:
        self._locate = locate
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def _diag(self, path: JsonPath, message: str, suggestion: str | None, severity: str) -> Diagnostic:
        file, line, col = self._locate(path)
        return Diagnostic(file, line, col, format_path(path), message, suggestion, severity)

    def error(self, path: JsonPath, message: str, suggestion: str | None = None) -> None:
        self.errors.append(self._diag(path, message, suggestion, "error"))

    def warn(self, path: JsonPath, message: str, suggestion: str | None = None) -> None:
        self.warnings.append(self._diag(path, message, suggestion, "warning"))


class AcrnArgs:
    """What a device needs to write its acrn-dm config: the grammar family and a diagnostics sink."""

    def __init__(self, diags: Diagnostics, family: str) -> None:
        self.diags = diags
        self.family = family

    def path(self, value: str, where: JsonPath, separators: str = ",") -> str:
        """``value`` (already absolute) for acrn-dm; acrn-dm splits its option strings on ``separators``, so a
        path containing one cannot be expressed."""
        bad = [c for c in separators if c in value]
        if bad:
            self.diags.error(where, f"path {value!r} contains {bad[0]!r}, which acrn-dm uses to split this option",
                             "rename or symlink the file to a path without it")
        return value


@dataclass(frozen=True)
class Helper:
    """A process the VM needs running before it starts (an embedded device model)."""

    name: str
    argv: list[str]
    socket: str
    device: str


@dataclass
class QemuArgs:
    """The QEMU argv being built, and what it needs around it (helpers, sockets, consoles, copies)."""

    vm_name: str
    state_dir: Path
    diags: Diagnostics
    argv: list[str] = field(default_factory=list)
    helpers: list[Helper] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)  # every unix socket to remove after stop
    consoles: list[dict[str, Any]] = field(default_factory=list)  # {"name", "kind": socket|pty|tty, "path"}
    copies: list[tuple[str, str]] = field(default_factory=list)  # (source, per-run copy) made before start
    function: int = 0  # the PCI function of the device being written (set by the planner for each device)
    multifunction: set[int] = field(default_factory=set)  # slots with more than one function in use
    qemu_version: tuple[int, int] | None = None  # (major, minor) of the QEMU the argv is for, when known

    def addr(self, slot: int) -> str:
        """QEMU's PCI address property of the device being written: function 0 of a slot with more
        functions says multifunction=on (QEMU refuses function N beside a single-function function 0)."""
        if self.function:
            return f"addr={slot:#x}.{self.function:#x}"
        return f"addr={slot:#x}.0x0,multifunction=on" if slot in self.multifunction else f"addr={slot:#x}"

    def node(self, slot: int) -> str:
        """A QEMU id for the device being written, unique per slot and function."""
        return f"dev{slot}" + (f"f{self.function}" if self.function else "")

    def stdio_socket(self, name: str, chardev_id: str | None = None) -> str:
        """A console that would be stdio under acrn-dm: a unix socket in the state folder, logged."""
        path = self.state_dir / f"{name}.console.sock"
        self.sockets.append(str(path))
        self.consoles.append({"name": name, "kind": "socket", "path": str(path)})
        log = self.state_dir / "console.log"
        return f"socket,id={chardev_id or name},path={esc(path)},server=on,wait=off,logfile={esc(log)},logappend=on"

    def helper(self, device: Device, model: str, extra: list[str], control: Path | None = None) -> Path:
        """Start ``acrnmgr devmodel serve --device MODEL`` for ``device``, with its host control socket
        ``control`` if it has one; returns its vhost-user socket."""
        name = device.display_name
        sock = vhost_socket_path(self.state_dir, name)
        self.sockets.append(str(sock))
        if control is not None:
            self.sockets.append(str(control))
            extra = ["--control-socket", str(control), *extra]
        self.helpers.append(Helper(f"devmodel-{name}", [*devmodel_command(), "--device", model, "--socket",
                                                        str(sock), *extra], str(sock), name))
        return sock

    def vhost_user(self, slot: int, sock: Path | str, frontend: str, *, before: str = "", after: str = "",
                   chardev: str = "") -> None:
        """QEMU's vhost-user front-end ``frontend`` on a chardev to ``sock``: ``-device
        FRONTEND,chardev=..,BEFOREaddr=..AFTER``; ``chardev`` adds options to the chardev (",reconnect=1")."""
        nid = self.node(slot)
        self.argv += ["-chardev", f"socket,id=c{nid},path={esc(sock)}{chardev}",
                      "-device", f"{frontend},chardev=c{nid},{before}{self.addr(slot)}{after}"]


# -- libvirt domain XML ---------------------------------------------------------------------------------------
LIBVIRT_MODEL = {"modern": "virtio-non-transitional", "transitional": "virtio-transitional"}


def xml_sub(parent: ET.Element, tag: str, text: object = None, **attrs: object) -> ET.Element:
    """A child element; attributes that are None are left out, a trailing _ in a name is dropped (type_)."""
    elem = ET.SubElement(parent, tag, {k.rstrip("_"): str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = str(text)
    return elem


def xml_pci(parent: ET.Element, slot: int | None) -> None:
    if slot is not None:
        xml_sub(parent, "address", type="pci", domain="0x0000", bus="0x00", slot=f"0x{slot:02x}", function="0x0")


def xml_alias(parent: ET.Element, name: str | None) -> None:
    if name:
        xml_sub(parent, "alias", name=f"ua-{name}")


@dataclass
class LibvirtOut:
    """The domain's <devices> being written, and what devices tell the domain around them."""

    flavor: str  # qemu | acrn
    devices: ET.Element
    bridge: str
    state_dir: Path
    warnings: list[str] = field(default_factory=list)
    needs_shared_memory: bool = False  # a vhost-user device: guest RAM must be a shared memfd
    serial_controllers: int = 0
    disks: int = 0
    bridge_given: bool = False  # the spec names network.bridge: NICs are <interface type='bridge'> on it
    boot_order: int = 0  # the last <boot order> given
    iothreads: int = 0  # the domain's <iothreads>: one per disk that has an iothread

    def new_iothread(self) -> int:
        self.iothreads += 1
        return self.iothreads

    def socket(self, device: Device) -> str:
        return str(vhost_socket_path(self.state_dir, device.display_name))


MODE_OF_LIBVIRT_MODEL = {v: k for k, v in LIBVIRT_MODEL.items()}


def xml_int(text: str | None, default: int | None = None) -> int | None:
    """An integer attribute of hostile XML (0x.. allowed); ``default`` when absent or not a number."""
    if text is None:
        return default
    try:
        return int(text, 0)
    except ValueError:
        return default


def xml_memory_bytes(el: ET.Element) -> int:
    """A libvirt size element (<memory unit='KiB'>, <size unit='M'>) in bytes."""
    units = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
             "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40}
    unit = (el.get("unit") or "KiB").lower()
    text = (el.text or "").strip()
    if unit not in units:
        raise ValueError(f"<{el.tag} unit='{el.get('unit')}'>: not a unit libvirt knows")
    if not text.isdigit():
        raise ValueError(f"<{el.tag}>{text}</{el.tag}>: not a whole number of {el.get('unit') or 'KiB'}")
    return int(text) * units[unit]


@dataclass
class LibvirtIn:
    """A domain being imported: what device kinds read from its elements and hand back as spec devices.

    ``errors`` are refusals: what would change what the VM touches (a disk format acrn-dm would misread, an
    encrypted or transient disk) makes the whole import fail with every reason listed. ``foreign`` is a
    domain acrnmgr did not export (no acrnmgr metadata): its PCI addresses are libvirt's, not ours, and are
    dropped (the planner re-slots) unless ``keep_addresses``."""

    name: str  # the domain's
    spec: dict[str, Any]  # the spec being built (a kind may set spec.network.bridge)
    add: Any  # add(slot, device mapping, element) records a device in the domain's order
    warnings: list[str] = field(default_factory=list)
    consoles: dict[int, dict[str, Any]] = field(default_factory=dict)  # virtio-serial controller index -> device
    errors: list[str] = field(default_factory=list)
    foreign: bool = False
    keep_addresses: bool = False
    taps: set[str] = field(default_factory=set)  # interface names given so far
    boot_disk: bool = False  # a disk with <boot order='1'> was seen
    serials: int = 0  # the domain's <serial> elements (a serial-target <console> is the first one's view)

    def slot_of(self, el: ET.Element) -> int | None:
        addr = el.find("address")
        if addr is None or addr.get("type") != "pci":
            return None
        if self.foreign and not self.keep_addresses:
            return None
        if (xml_int(addr.get("bus"), 0) or 0) != 0 or (xml_int(addr.get("domain"), 0) or 0) != 0:
            self.warnings.append(f"<{el.tag}> at PCI {addr.get('domain') or 0}:{addr.get('bus')}:{addr.get('slot')}: "
                                 "acrn-dm has one PCI bus; its slot is assigned anew")
            return None
        slot = xml_int(addr.get("slot"))
        return slot if slot is not None and 0 <= slot <= 31 else None

    def tap(self, wanted: str | None, what: str, why: str = "") -> str:
        """A distinct interface name (1-15 characters): ``wanted`` when free, else one made from the VM's name."""
        if wanted and wanted not in self.taps and len(wanted) <= 15:
            self.taps.add(wanted)
            return wanted
        n = 0
        while True:
            suffix = str(n)
            name = f"tap_{self.name[:15 - 4 - len(suffix)]}{suffix}"
            if name not in self.taps:
                break
            n += 1
        self.taps.add(name)
        if wanted:
            self.warnings.append(f"{what}: interface name {wanted!r} is taken or too long; set to {name}")
        else:
            self.warnings.append(f"{what}: {why or 'no <target dev>'}: tap name set to {name}")
        return name

    def check_disk(self, el: ET.Element, label: str, path: str | None) -> None:
        """Refuse a disk whose contents acrn-dm would present differently: not raw, encrypted, or transient."""
        if el.find("transient") is not None:
            self.errors.append(f"{label} {path}: <transient/> (writes are thrown away at shutdown) has no acrn-dm "
                               "form; imported as is, the guest's writes would become permanent. Use a copy of the "
                               "image, and remove <transient/>")
        enc = el.find("encryption")
        if enc is None:
            enc = el.find("source/encryption")
        if enc is not None:
            self.errors.append(f"{label} {path}: <encryption format='{enc.get('format')}'>: acrn-dm cannot open "
                               "LUKS or qcow encrypted images; the guest would see ciphertext. Decrypt it to a raw "
                               "image (or a dm-crypt block device) and import that")
        drv = el.find("driver")
        fmt = drv.get("type") if drv is not None else None
        if fmt not in (None, "raw", "iso"):  # (an ISO image is raw)
            self.errors.append(f"{label} {path}: format {fmt}: acrn-dm reads raw images only and would present "
                               f"the {fmt} container to the guest as its disk. Convert it first (qemu-img convert "
                               f"-O raw {path} IMAGE.raw) and point the domain at the raw image")

    @staticmethod
    def mode_of(el: ET.Element | None, attr: str = "model") -> str | None:
        return MODE_OF_LIBVIRT_MODEL.get(el.get(attr) or "") if el is not None else None


def vhost_user_missing(socket: str | None, server: bool = False) -> str | None:
    """Why QEMU could not attach to another process's vhost-user ``socket`` on this machine, or None. As a
    server the VMM creates the socket itself: its folder must exist."""
    if not socket:
        return "backend: vhost-user without a socket"
    path = Path(socket)
    if server:
        return None if path.parent.is_dir() else (f"the folder of the vhost-user socket {socket} does not exist "
                                                  "(QEMU creates the socket there)")
    try:
        mode = path.stat().st_mode
    except OSError:
        return (f"the vhost-user socket {socket} does not exist: start the process that serves it first (acrnmgr "
                "neither starts it nor owns it)")
    return None if stat.S_ISSOCK(mode) else f"{socket} is not a unix socket (a vhost-user backend listens on one)"


def vhost_user_reconnect(el: ET.Element | None, label: str, imp: LibvirtIn) -> int | None:
    """<source><reconnect enabled='yes' timeout='N'/> of another process's vhost-user socket: N seconds."""
    rec = el.find("reconnect") if el is not None else None
    if rec is None or rec.get("enabled") != "yes":
        return None
    timeout = xml_int(rec.get("timeout"))
    if timeout is None or not 1 <= timeout <= 3600:
        imp.warnings.append(f"{label}: <reconnect timeout='{rec.get('timeout')}'> is not 1-3600 seconds; QEMU will "
                            "not reconnect when the serving process restarts")
        return None
    return timeout


def vhost_user_source(el: ET.Element, imp: LibvirtIn, label: str, d: dict[str, Any], skipped: str) -> bool:
    """A vhostuser disk's or interface's <source type='unix' path='/...'> (another process's socket) as backend:
    vhost-user, with its reconnect, into ``d``; False, with the warning ``skipped``, when there is none."""
    src = el.find("source")
    sock = src.get("path") if src is not None else None
    if src is None or not sock or not sock.startswith("/") or src.get("type", "unix") != "unix":
        imp.warnings.append(f"{label}: {skipped}")
        return False
    d.update(backend="vhost-user", socket=sock)
    reconnect = vhost_user_reconnect(src, label, imp)
    if reconnect:
        d["reconnect"] = reconnect
    return True


def esc(value: object) -> str:
    """QEMU's key=value option syntax: a comma inside a value is written twice."""
    return str(value).replace(",", ",,")


def blockdev(node: Mapping[str, Any]) -> str:
    return json.dumps(node)


def devmodel_command() -> list[str]:
    script = Path(sys.executable).with_name("acrnmgr")
    return [str(script) if script.exists() else (shutil.which("acrnmgr") or "acrnmgr"), "devmodel", "serve"]


def vhost_socket_path(state_dir: Path, name: str) -> Path:
    """Where the embedded device model of device ``name`` listens (the libvirt domain export names the same)."""
    return state_dir / f"{name}.vhost.sock"


_QEMU_MODES = {"legacy": ("off", "on"), "transitional": ("off", "off"), "modern": ("on", "off")}


def qemu_mode(device: Device) -> str:
    """mode legacy|transitional|modern -> QEMU's disable-legacy / disable-modern."""
    if not device.mode:
        return ""
    legacy, modern = _QEMU_MODES[device.mode]
    return f",disable-legacy={legacy},disable-modern={modern}"


def parse_bdf(text: str) -> tuple[int, int, int, int]:
    """A PCI address as (domain, bus, device, function): ``00:1f.3``, ``00/1f/3`` or ``0000:00:1f.3``."""
    parts = text.replace("/", ":").replace(".", ":").split(":")
    if len(parts) == 3:
        parts.insert(0, "0")
    if len(parts) != 4:
        raise ValueError(f"not a PCI address: {text!r}")
    domain, bus, dev, func = (int(p, 16) for p in parts)
    if not (0 <= domain <= 0xFFFF and 0 <= bus <= 0xFF and 0 <= dev <= 0x1F and 0 <= func <= 7):
        raise ValueError(f"not a PCI address: {text!r}")
    return domain, bus, dev, func


class DeviceKind(Device):
    """What a device kind does where it has nothing of its own to say (each kind module overrides the rest)."""

    # The domain elements this kind reads back (tags), and how: from_libvirt returns True when it took the
    # element (having added a device or said why it skipped it), False to leave it to another kind.
    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ()

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        return ""

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        ctx.diags.error(self.where, f"the qemu engine has no mapping for {self.KIND}")

    def missing_on_host(self) -> str | None:
        """Why this device cannot run on this machine (a host probe), or None."""
        return None

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        """Write this device's domain element; returns its acrnmgr-only fields, or None when the domain has no
        element for it (the device is then kept whole in the acrnmgr metadata)."""
        return None

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        return False


def _embedded_kinds() -> str:
    """The kinds the embedded device model serves, for messages (every kind module has loaded by then)."""
    from acrnmgr.devices import KINDS

    names = [kind for kind, cls in KINDS.items() if getattr(cls, "EMBEDDED", False)]
    return ", ".join(names[:-1]) + " and " + names[-1]


class VirtioDevice(DeviceKind):
    """A virtio device kind.  Class attributes say what serves it:

    - ``ACRN_MODE``: the one transport acrn-dm's own device offers (``legacy``: PIO BAR0, ``modern``: MMIO BAR4);
    - ``EMBEDDED``: our embedded device model serves it (over vhost-user);
    - ``QEMU_VHOST_USER``: QEMU 7.2 has a vhost-user frontend for it.
    """

    VIRTIO: ClassVar[bool] = True
    ACRN_MODE: ClassVar[str] = "legacy"
    EMBEDDED: ClassVar[bool] = False
    QEMU_VHOST_USER: ClassVar[bool] = False
    VHOST: ClassVar[bool] = False  # the kernel has a vhost backend for it
    # backend: vhost-user: another process serves it on a vhost-user socket (`socket`), which QEMU attaches to
    VHOST_USER_SOCKET: ClassVar[bool] = False

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        """The backend and mode rules that hold on every engine; the engines' own limits are plan errors.

        ``items`` are this kind's devices of one spec as (JSON path, mapping): schema-valid unless the schema
        already failed, when a check that trips over malformed data is skipped by the caller."""
        rtvm = spec.get("vmType") == "rtvm"
        for path, dev in items:
            backend, mode = dev.get("backend", "auto"), dev.get("mode")
            if backend == "vhost" and not cls.VHOST:
                ctx.error((*path, "backend"), f"there is no kernel vhost backend for {cls.KIND} (only virtio-net and "
                          "vhost-vsock)", "use `backend: vbs-u`" + (" or `embedded`" if cls.EMBEDDED else "")
                          + ", or `auto`")
            elif backend == "embedded" and not cls.EMBEDDED:
                ctx.error((*path, "backend"), f"the embedded device model does not serve {cls.KIND} "
                          f"(it serves {_embedded_kinds()})",
                          "use `backend: vhost`" if cls.VHOST else "use `backend: vbs-u` or `auto`")
            elif backend == "vhost-user" and not cls.VHOST_USER_SOCKET:
                ctx.error((*path, "backend"), f"backend: vhost-user (a socket another process serves) is for "
                          f"virtio-blk and virtio-net; QEMU has no vhost-user frontend for {cls.KIND} to attach to one",
                          "use `backend: auto`" + (" or `embedded`" if cls.EMBEDDED else ""))
            elif backend == "vhost-user" and rtvm:
                ctx.error((*path, "backend"), f"an RTVM runs on acrn-dm, which has no vhost-user frontend, so the "
                          f"vhost-user socket of another process cannot serve its {cls.KIND}",
                          "give acrn-dm the image or tap itself")
            elif backend == "embedded" and rtvm:
                ctx.error((*path, "backend"), "an RTVM runs on acrn-dm, which has no vhost-user frontend, so an "
                          "embedded backend cannot serve it", "use `backend: vbs-u` or `auto`")
            if mode is None:
                continue
            # Whether acrn-dm's own backend can give the mode is the acrn engine's plan to say: QEMU's can.
            if cls.ACRN_MODE == "legacy" and mode != "legacy" and not cls.EMBEDDED:
                ctx.error((*path, "mode"), f"acrn-dm's {cls.KIND} is legacy-only and no other backend serves it, so "
                          f"mode `{mode}` cannot be given", "use `mode: legacy` or remove `mode`")
            elif cls.ACRN_MODE == "modern" and mode != "modern":
                ctx.error((*path, "mode"), f"acrn-dm's {cls.KIND} is modern-only, so mode `{mode}` cannot be given",
                          "use `mode: modern` or remove `mode`")

    def choose(self, host: HostProfile, engine: str, family: str) -> Choice:
        if self.backend == "vhost-user":
            return self.vhost_user_choice(engine)
        if engine == "acrn":
            return self.choose_acrn(host, family)
        return self.choose_qemu(host)

    def vhost_user_choice(self, engine: str) -> Choice:
        """backend: vhost-user: the device is another process's, on its socket; only a VMM with a vhost-user
        frontend (QEMU, also under libvirt) can attach to it."""
        socket = getattr(self, "socket", None)
        if engine == "acrn":
            return Choice("vhost-user", "", f"backend: vhost-user asks acrn-dm to attach to the vhost-user socket "
                          f"{socket} that another process serves; acrn-dm has no vhost-user frontend",
                          "run the VM with the qemu or libvirt engine, or let acrn-dm serve the device itself "
                          "(virtio-blk: `path` of the image; virtio-net: a `tap`)")
        return Choice("vhost-user", f"served by another process on the vhost-user socket {socket} (backend: "
                      "vhost-user)")

    # -- acrn-dm ---------------------------------------------------------------------------------------------
    def acrn_mode_choice(self) -> Choice | None:
        """The embedded-or-refuse decision every acrn-dm virtio device makes first (None: acrn-dm serves it)."""
        native_mode = self.ACRN_MODE
        mode_ok = self.mode is None or self.mode == native_mode
        wanted = self.backend
        if wanted == "embedded" or (wanted == "auto" and not mode_ok and self.EMBEDDED):
            why = ("backend: embedded asked for" if wanted == "embedded"
                   else f"mode: {self.mode} asked for, and acrn-dm's {self.KIND} is {native_mode}-only")
            native = "vhost" if self.KIND == "vhost-vsock" else "vbs-u"
            return Choice("embedded", f"{why}: needs the embedded device model",
                          f"{why}, which needs the embedded device model over vhost-user; {NO_VHOST_USER}",
                          f"use mode: {native_mode} with backend: auto ({native}, acrn-dm's own {self.KIND}), "
                          "or run the VM with the qemu engine")
        if not mode_ok:
            return Choice(None, "", f"acrn-dm's {self.KIND} is {native_mode}-only; it cannot give mode: {self.mode}",
                          f"use mode: {native_mode} (or drop `mode`)")
        return None

    def choose_acrn(self, host: HostProfile, family: str) -> Choice:
        early = self.acrn_mode_choice()
        if early is not None:
            return early
        if self.backend == "vhost":
            return Choice(None, "", f"acrn-dm has kernel vhost only for virtio-net and vhost-vsock, not {self.KIND}",
                          "remove `backend` (or set it to auto or vbs-u)")
        return Choice("vbs-u", f"acrn-dm's user-space {self.KIND} (VBS-U, {self.ACRN_MODE})"
                      + (" (backend: vbs-u asked for)" if self.backend == "vbs-u" else ""))

    # -- QEMU ------------------------------------------------------------------------------------------------
    def choose_qemu(self, host: HostProfile) -> Choice:
        wanted = self.backend
        if wanted == "embedded" or (wanted == "auto" and self.EMBEDDED and self.QEMU_VHOST_USER):
            if not self.EMBEDDED:
                return Choice(None, "", f"the embedded device model does not serve {self.KIND}",
                              "remove `backend` (or set it to auto)")
            if not self.QEMU_VHOST_USER:
                return Choice(None, "", f"QEMU has no vhost-user frontend for {self.KIND}, so backend: embedded "
                              "cannot serve it on the qemu engine", "remove `backend` (QEMU's own device is used)")
            return Choice("embedded", "served by the embedded device model over vhost-user"
                          + (" (backend: embedded asked for)" if wanted == "embedded" else " (qemu engine default)"))
        if wanted == "vhost":
            return Choice(None, "", f"there is no kernel vhost for {self.KIND}", "remove `backend`")
        return Choice("vbs-u", f"QEMU's user-space {self.KIND}")

    # -- renderers -------------------------------------------------------------------------------------------
    def libvirt_extra(self) -> tuple[dict[str, Any], str]:
        """The acrnmgr-only fields every virtio element carries in the metadata, and its libvirt model."""
        extra = {k: self.raw[k] for k in ("backend",) if k in self.raw}
        if self.mode == "legacy":
            extra["mode"] = "legacy"  # libvirt has no legacy-only virtio model
        return extra, LIBVIRT_MODEL.get(self.mode or "", "virtio")



class EmulatedDevice(DeviceKind):
    """A non-virtio device that acrn-dm emulates itself (or passes through)."""

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        for path, dev in items:
            if "backend" in dev and dev["backend"] != "auto":
                ctx.error((*path, "backend"), f"`backend` applies to virtio devices; {cls.KIND} is always emulated "
                          "or passed through by acrn-dm itself", "remove `backend`")

    def choose(self, host: HostProfile, engine: str, family: str) -> Choice:
        if self.backend != "auto":
            return Choice(None, "", f"backend: {self.backend} only applies to virtio devices; {self.KIND} is not one",
                          "remove `backend` (or set it to auto)")
        return self.choose_native(engine)

    def choose_native(self, engine: str) -> Choice:
        if engine != "acrn":
            return Choice(None, "", f"{self.KIND} is an acrn-dm device; the {engine} engine cannot provide it",
                          "use the acrn engine")
        return Choice("acrn-dm", f"{self.KIND} is emulated by acrn-dm itself")

