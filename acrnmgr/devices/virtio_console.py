"""virtio-console: acrn-dm's VBS-U console (legacy) or, on QEMU, its virtio-serial (QEMU 7.2 has no vhost-user
console frontend, so the embedded console is reachable only through our own frontend)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import (
    AcrnArgs,
    CheckContext,
    Choice,
    GrammarError,
    LibvirtIn,
    LibvirtOut,
    QemuArgs,
    SlotDevice,
    VirtioDevice,
    esc,
    qemu_mode,
    xml_alias,
    xml_int,
    xml_pci,
    xml_sub,
)
from acrnmgr.host import HostProfile
from acrnmgr.model import JsonPath, common_fields, resolve
from acrnmgr.spec.diagnostics import format_path

DEFAULT_SOCKET_MODE = "server"
_LIBVIRT_PORT = {"pty": "pty", "socket": "unix", "stdio": "stdio", "tty": "dev", "file": "file"}
_PORT_OF_LIBVIRT = {v: k for k, v in _LIBVIRT_PORT.items()}


@dataclass(frozen=True)
class ConsolePort:
    kind: str  # pty | socket | stdio | tty | file
    name: str
    console: bool = False
    path: str | None = None
    socket_mode: str = DEFAULT_SOCKET_MODE
    where: JsonPath = ()


@dataclass(frozen=True)
class VirtioConsole(VirtioDevice):
    KIND: ClassVar[str] = "virtio-console"
    EMBEDDED: ClassVar[bool] = True

    ports: tuple[ConsolePort, ...] = ()

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioConsole:
        ports = tuple(
            ConsolePort(p["kind"], p["name"], bool(p.get("console")),
                        resolve(base_dir, p["path"]) if p.get("path") else None,
                        p.get("socketMode", DEFAULT_SOCKET_MODE), ("spec", "devices", index, "ports", n))
            for n, p in enumerate(raw["ports"]))
        return cls(**common_fields(index, raw), ports=ports)

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        super().check_spec(ctx, spec, items)
        for path, dev in items:
            names: dict[str, JsonPath] = {}
            console_port: JsonPath | None = None
            for j, port in enumerate(dev.get("ports") or []):
                if not isinstance(port, dict):
                    continue
                ppath = (*path, "ports", j)
                name = port.get("name")
                if isinstance(name, str):
                    if name in names:
                        ctx.error((*ppath, "name"), f"port name `{name}` is already used by {format_path(names[name])} "
                                                    f"({ctx.where(names[name])})",
                                  "port names must be unique per device")
                    else:
                        names[name] = ppath
                if port.get("console") is True:
                    if console_port is not None:
                        ctx.error((*ppath, "console"), f"{format_path(console_port)} is already this device's console "
                                  f"port ({ctx.where(console_port)})",
                                  "only one port per virtio-console device can be the console (hvc)")
                    else:
                        console_port = ppath

    def choose_qemu(self, host: HostProfile) -> Choice:
        if self.backend == "auto":
            return Choice("vbs-u", "QEMU has no vhost-user console frontend: QEMU's own virtio-serial")
        return super().choose_qemu(host)

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        return {"type": cls.KIND, "ports": [
            {k: v for k, v in port.items() if not (k == "console" and not v)} for port in dev.params["ports"]]}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        items = []
        for port in self.ports:
            item = ("@" if port.console else "") + f"{port.kind}:{port.name}"
            if port.path:
                item += "=" + ctx.path(port.path, (*port.where, "path"), ",:")
            elif port.kind in ("tty", "file", "socket"):
                ctx.diags.error(port.where, f"a {port.kind} console port needs `path`")
            if port.kind == "socket":
                item += ":" + port.socket_mode
            items.append(item)
        return ",".join(items)

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        nid = ctx.node(slot)
        ctx.argv += ["-device", f"virtio-serial-pci,id={nid},{ctx.addr(slot)}{qemu_mode(self)}"]
        for i, port in enumerate(self.ports):
            cid = f"{nid}p{i}"
            if port.kind == "stdio":
                chardev = ctx.stdio_socket(port.name, cid)
            elif port.kind == "pty":
                chardev = f"pty,id={cid}"
                ctx.consoles.append({"name": port.name, "kind": "pty", "path": None})
            elif port.kind == "socket":
                server = port.socket_mode == "server"
                chardev = f"socket,id={cid},path={esc(port.path)}" + (",server=on,wait=off" if server else "")
                if server and port.path:
                    ctx.sockets.append(port.path)
                ctx.consoles.append({"name": port.name, "kind": "socket", "path": port.path})
            elif port.kind == "tty":
                chardev = f"tty,id={cid},path={esc(port.path)}"
            else:
                chardev = f"file,id={cid},path={esc(port.path)}"
            frontend = "virtconsole" if port.console else "virtserialport"
            ctx.argv += ["-chardev", chardev, "-device", f"{frontend},bus={nid}.0,chardev={cid},name={esc(port.name)}"]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("controller", "console", "channel")

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        if el.tag == "controller":
            if el.get("type") != "virtio-serial":
                return False
            d: dict[str, Any] = {"type": cls.KIND, "ports": []}
            if imp.mode_of(el):
                d["mode"] = imp.mode_of(el)
            imp.consoles[xml_int(el.get("index"), 0) or 0] = d
            imp.add(imp.slot_of(el), d, el)
            return True
        tag = el.tag
        target = el.find("target")
        if target is None or target.get("type") != "virtio":
            ttype = target.get("type") if target is not None else None
            if tag == "console" and ttype in (None, "serial"):
                # on x86 a console without a virtio target is libvirt's view of the first <serial>
                if imp.serials:
                    return True  # imported with that <serial>
                imp.warnings.append(f"<console type='{el.get('type')}'> on a serial target, with no <serial> in "
                                    "the domain: add it as <serial> to import it; skipped")
                return True
            imp.warnings.append(f"<{tag} type='{el.get('type')}'> with target type {ttype!r}: only virtio consoles "
                                "and channels (virtio-console) map; skipped")
            return True
        addr = el.find("address")
        ctrl = xml_int(addr.get("controller"), 0) if addr is not None else 0
        ctrl = ctrl or 0
        kind = _PORT_OF_LIBVIRT.get(el.get("type") or "")
        if kind is None:
            imp.warnings.append(f"<{tag} type='{el.get('type')}'>: no acrn-dm console backend; skipped")
            return True
        if tag == "console" and any(p.get("console") for p in imp.consoles.get(ctrl, {}).get("ports", [])):
            # a virtio-console device has one console port: another console gets a device of its own
            ctrl = min(k for k in range(-1, -1000, -1) if k not in imp.consoles)
        if ctrl not in imp.consoles:
            imp.consoles[ctrl] = {"type": cls.KIND, "ports": []}
            imp.add(None, imp.consoles[ctrl])
        ports = imp.consoles[ctrl]["ports"]
        taken = {p["name"] for d in imp.consoles.values() for p in d["ports"]}
        name = target.get("name")
        if not name or name in taken:
            name = next(f"{'console' if tag == 'console' else 'port'}{n}" for n in range(1000)
                        if f"{'console' if tag == 'console' else 'port'}{n}" not in taken)
        port: dict[str, Any] = {"kind": kind, "name": name}
        if tag == "console":
            port["console"] = True
        src = el.find("source")
        if src is not None and src.get("path"):
            port["path"] = src.get("path")
        elif kind == "socket":
            port["path"] = f"/run/acrnmgr/{imp.name}/{name}.sock"
            imp.warnings.append(f"<{tag} type='unix'> {name}: libvirt generates its socket path; set to {port['path']}")
        elif kind in ("tty", "file"):
            imp.warnings.append(f"<{tag} type='{el.get('type')}'> {name} has no path; skipped")
            return True
        if kind == "socket" and src is not None and src.get("mode") == "connect":
            port["socketMode"] = "client"  # server is the default
        pos = xml_int(addr.get("port"), None) if addr is not None else None
        port["_pos"] = pos if pos is not None else 1000 + len(ports)
        ports.append(port)
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        extra, model = self.libvirt_extra()
        index = out.serial_controllers
        out.serial_controllers += 1
        ctrl = xml_sub(out.devices, "controller", type="virtio-serial", index=index)
        if model != "virtio":
            ctrl.set("model", model)
        xml_alias(ctrl, self.name)
        xml_pci(ctrl, slot)
        for n, port in enumerate(self.ports):
            if port.console:
                extra["consolePort"] = port.name  # libvirt drops a <console>'s target name
            el = xml_sub(out.devices, "console" if port.console else "channel", type=_LIBVIRT_PORT[port.kind])
            if port.kind == "socket":
                xml_sub(el, "source", mode="bind" if port.socket_mode == "server" else "connect", path=port.path)
            elif port.path:
                xml_sub(el, "source", path=port.path)
            xml_sub(el, "target", type="virtio", name=port.name)
            xml_sub(el, "address", type="virtio-serial", controller=index, bus=0, port=n + 1)
        return extra



# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
_CONSOLE_RE = re.compile(r"^(@?)(stdio|tty|pty|file|socket):([^=:]+)(?:=([^:]*))?(?::(server|client))?\Z")


def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    if not body:
        raise GrammarError("virtio-console: at least one port is needed")
    ports, names = [], set()
    for item in body.split(","):
        match = _CONSOLE_RE.match(item)
        if not match:
            raise GrammarError(f"virtio-console: invalid port {item!r}: [@]kind:name[=path][:server|client]")
        at, kind, name, path, mode = match.groups()
        if kind in ("tty", "file", "socket") and not path:
            raise GrammarError(f"virtio-console: {kind} port {name!r} needs =<path>")
        if mode and kind != "socket":
            raise GrammarError(f"virtio-console: :{mode} only applies to socket ports")
        if name in names:
            raise GrammarError(f"virtio-console: port name {name!r} used twice")
        names.add(name)
        port = {"kind": kind, "name": name, "console": bool(at)}
        if path:
            port["path"] = path
        if kind == "socket":
            port["socketMode"] = mode or DEFAULT_SOCKET_MODE
        ports.append(port)
    if sum(1 for p in ports if p["console"]) > 1:
        raise GrammarError("virtio-console: only one port can be the console (@)")
    return {"ports": ports}
