"""virtio-net: kernel vhost-net, acrn-dm's VBS-U (legacy), QEMU's virtio-net-pci, the embedded device model, or a
vhost-user socket another process serves (backend: vhost-user: OVS-DPDK, VPP, snabb)."""

from __future__ import annotations

import hashlib
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
    vhost_user_missing,
    vhost_user_source,
    xml_alias,
    xml_pci,
    xml_sub,
)
from acrnmgr.host import HostProfile
from acrnmgr.model import JsonPath, common_fields
from acrnmgr.spec.diagnostics import format_path

# In a macSeed, the Service VM's NIC address at launch: ACRN's generated scripts seed each NIC with
# `${mac:0:17}-<VM name>`, mac being `cat /sys/class/net/e*/address` (so: the first e* interface's
# address, in the shell's glob order). The launch script and `up` replace it (resolve_host_mac).
HOST_MAC = "{hostMac}"

# The schema's pattern for a MAC, as Python's re reads it (fullmatch: `$` would accept a final newline).
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def mac_problem(mac: str) -> str | None:
    """Why a well-formed MAC cannot be a NIC's, or None."""
    octets = [int(x, 16) for x in mac.split(":")]
    if not any(octets):
        return "is the all-zero MAC address"
    if octets[0] & 1:
        return "is a multicast address; a NIC needs a unicast MAC (first octet even)"
    return None


@dataclass(frozen=True)
class VirtioNet(VirtioDevice):
    KIND: ClassVar[str] = "virtio-net"
    EMBEDDED: ClassVar[bool] = True
    QEMU_VHOST_USER: ClassVar[bool] = True
    VHOST: ClassVar[bool] = True
    VHOST_USER_SOCKET: ClassVar[bool] = True

    tap: str | None = None
    macvtap: str | None = None
    mac: str | None = None  # lower case
    mac_seed: str | None = None
    libvirt_network: str | None = None  # a libvirt network the libvirt export attaches it to
    socket: str | None = None  # backend: vhost-user: another process's vhost-user-net socket
    socket_server: bool = False  # socketMode: server: the VMM creates the socket, the other process connects
    reconnect: int | None = None  # seconds between QEMU's attempts to reconnect to `socket` (as its client)

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioNet:
        mac = raw.get("mac")
        return cls(**common_fields(index, raw), tap=raw.get("tap"), macvtap=raw.get("macvtap"),
                   mac=mac.lower() if mac else None, mac_seed=raw.get("macSeed"),
                   libvirt_network=raw.get("libvirtNetwork"), socket=raw.get("socket"),
                   socket_server=raw.get("socketMode") == "server", reconnect=raw.get("reconnect"))

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        super().check_spec(ctx, spec, items)
        macs: dict[str, JsonPath] = {}
        taps: dict[str, tuple[JsonPath, str]] = {}
        for path, dev in items:
            external = dev.get("backend") == "vhost-user"
            if external and "socket" not in dev:
                ctx.error((*path, "backend"), "backend: vhost-user needs `socket`, the vhost-user socket of the "
                          "process that switches the NIC's packets (OVS-DPDK, VPP...)",
                          "replace `tap`/`macvtap` with `socket: /run/.../vhu0.sock`")
            elif "socket" in dev and not external:
                ctx.error((*path, "socket"), "`socket` is the vhost-user socket of a NIC another process serves; it "
                          "needs backend: vhost-user", "add `backend: vhost-user`, or give a `tap` instead")
            if "socketMode" in dev and "socket" not in dev:
                ctx.error((*path, "socketMode"), "`socketMode` applies to `socket` (backend: vhost-user)",
                          "remove `socketMode`")
            if "reconnect" in dev and ("socket" not in dev or dev.get("socketMode") == "server"):
                ctx.error((*path, "reconnect"), "`reconnect` applies to a `socket` QEMU connects to (socketMode: "
                          "client)", "remove `reconnect`")
            if "mac" in dev and "macSeed" in dev:
                ctx.warn((*path, "macSeed"), "`mac` is given, so acrn-dm does not use `macSeed`",
                         "acrn-dm derives the MAC from the seed only when no MAC is given; remove one")
            mac = dev.get("mac")
            if isinstance(mac, str) and MAC_RE.fullmatch(mac):
                problem = mac_problem(mac)
                if problem:
                    ctx.error((*path, "mac"), f"MAC `{mac}` {problem}",
                              "use a locally administered address such as 02:16:3e:xx:xx:xx")
                key = mac.lower()
                if key in macs:
                    ctx.error((*path, "mac"), f"MAC `{mac}` is already used by {format_path(macs[key])} "
                                              f"({ctx.where((*macs[key], 'mac'))})", "every NIC needs its own MAC")
                else:
                    macs[key] = path
            for field_name in ("tap", "macvtap"):
                tap = dev.get(field_name)
                if isinstance(tap, str):
                    if tap in taps:
                        other, other_field = taps[tap]
                        ctx.error((*path, field_name), f"interface `{tap}` is already used by {format_path(other)} "
                                                       f"({ctx.where((*other, other_field))})",
                                  "each virtio-net needs its own tap")
                    else:
                        taps[tap] = (path, field_name)

    @property
    def ifname(self) -> str | None:
        return self.tap or self.macvtap

    def missing_on_host(self) -> str | None:
        return vhost_user_missing(self.socket, self.socket_server) if self.backend == "vhost-user" else None

    def choose_acrn(self, host: HostProfile, family: str) -> Choice:
        early = self.acrn_mode_choice()
        if early is not None:
            return early
        wanted = self.backend
        if wanted in ("auto", "vhost", "vbs-u") and not host.net_tun and self.tap:
            return Choice(None, "", "a tap device needs /dev/net/tun, which the host profile lacks",
                          "load the tun kernel module")
        if wanted == "vbs-u":
            return Choice("vbs-u", "backend: vbs-u asked for (acrn-dm's user-space virtio-net)")
        if self.mac_seed and wanted == "auto" and family == "3" and "vhost" not in self.mac_seed.split(","):
            return Choice("vbs-u", "macSeed given: acrn-dm reads everything after mac_seed= as the seed, so a "
                          "following ,vhost would change the MAC; acrn-dm's user-space virtio-net keeps it")
        if host.vhost_net:
            return Choice("vhost", "host has /dev/vhost-net: kernel vhost-net"
                          + (" (backend: vhost asked for)" if wanted == "vhost" else ""))
        if wanted == "vhost":
            return Choice(None, "", "backend: vhost needs /dev/vhost-net, which the host profile lacks "
                          "(acrn-dm would silently fall back to VBS-U)",
                          "load the vhost_net kernel module, or use backend: auto")
        return Choice("vbs-u", "host has no /dev/vhost-net: acrn-dm's user-space virtio-net (VBS-U)")

    def choose_qemu(self, host: HostProfile) -> Choice:
        if self.backend == "embedded":
            return super().choose_qemu(host)
        if self.backend in ("auto", "vhost"):
            if host.vhost_net:
                return Choice("vhost", "host has /dev/vhost-net: kernel vhost")
            if self.backend == "vhost":
                return Choice(None, "", "virtio-net with kernel vhost needs /dev/vhost-net, which the host profile "
                              "lacks", "load the vhost kernel module")
            return Choice("vbs-u", "host has no /dev/vhost-net: QEMU's user-space virtio-net")
        return Choice("vbs-u", f"QEMU's user-space {self.KIND}")

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p = dev.params
        name = p["tap"]
        d: dict[str, Any] = {"type": cls.KIND, ("macvtap" if name.startswith("macvtap") else "tap"): name}
        # Keep the backend acrn-dm was told to use, whatever the target host has.
        d["backend"] = "vhost" if p.get("vhost") else "vbs-u"
        if p.get("mac"):
            d["mac"] = p["mac"]
        if p.get("macSeed"):
            d["macSeed"] = p["macSeed"]
        for option in p.get("ignored", []):
            hint = " (mac_seed= counts only right after the tap name)" if option.startswith("mac_seed=") else ""
            warnings.append(f"-s {dev.slot},{dev.emul}: acrn-dm ignores the option {option!r}{hint}; dropped")
        return d

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        if backend == "vhost-user":
            return ""  # acrn-dm cannot attach to it: the plan says so
        name = self.ifname
        if not name:
            ctx.diags.error(self.where, "virtio-net needs `tap` or `macvtap`")
            name = ""
        if ctx.family == "3":
            out = [f"tap={name}"]
        else:
            if not ("tap" in name or name.startswith("vmnet")):
                ctx.diags.error((*self.where, "tap" if self.tap else "macvtap"),
                                f"acrn-dm v2.x only accepts interface names containing 'tap' or starting with "
                                f"'vmnet', not {name!r}", f"rename it, e.g. tap_{name}"[:60])
            out = [name]
        seed = self.acrn_seed(backend) if ctx.family == "3" else None
        if seed is not None:
            # acrn-dm reads mac_seed= only right after the tap name, and the seed is the rest of the string;
            # `vhost` and `mac=` are honoured anywhere, the seed's text included.
            return ",".join([*out, f"mac_seed={seed}"])
        if backend == "vhost":
            out.append("vhost")
        if self.mac:
            out.append(f"mac={self.mac}")
        return ",".join(out)

    def acrn_seed(self, backend: str | None) -> str | None:
        """The seed acrn-dm reads (it derives the MAC from it): macSeed, with `,vhost` after it when kernel
        vhost is on and the seed does not already say so."""
        if self.mac_seed is None:
            return None
        if backend == "vhost" and "vhost" not in self.mac_seed.split(","):
            return f"{self.mac_seed},vhost"
        return self.mac_seed

    def qemu_mac(self, vm_name: str, slot: int, host_mac: str | None = None) -> str:
        """The MAC acrn-dm would give this NIC in `slot` at its function, so a guest keeps its address
        whichever engine runs it. HOST_MAC in the seed is this machine's NIC address."""
        if self.mac:
            return self.mac
        seed = self.acrn_seed("vhost" if self.backend == "vhost" else None)
        if seed is not None and HOST_MAC in seed:
            seed = seed.replace(HOST_MAC, host_mac if host_mac is not None else read_host_mac())
        return acrn_mac(slot, self.function, seed)

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        if self.macvtap:
            ctx.diags.error(self.where, "macvtap is not supported by the qemu engine; use a tap")
            return
        nid, addr, mode = ctx.node(slot), ctx.addr(slot), qemu_mode(self)
        tap = self.tap or ""
        mac = self.qemu_mac(ctx.vm_name, slot)
        if backend == "vhost-user":  # the other process's socket: neither started nor removed by us
            server = (",server=on,wait=off" if self.socket_server
                      else f",reconnect={self.reconnect}" if self.reconnect else "")
            ctx.argv += ["-chardev", f"socket,id=c{nid},path={esc(self.socket)}{server}",
                         "-netdev", f"vhost-user,id={nid},chardev=c{nid}",
                         "-device", f"virtio-net-pci,netdev={nid},mac={mac},vectors=0,{addr}{mode}"]
            return
        if backend == "embedded":
            sock = ctx.helper(self, "net", ["--tap", tap, "--mac", mac])
            ctx.argv += ["-chardev", f"socket,id=c{nid},path={esc(sock)}",
                         "-netdev", f"vhost-user,id={nid},chardev=c{nid}"]
            # vectors=0 (INTx): Debian's QEMU 7.2 segfaults setting up MSI-X notifiers for any
            # vhost-user netdev (tests/devmodel/e2e/test_net.py); the data path is the same.
            ctx.argv += ["-device", f"virtio-net-pci,netdev={nid},mac={mac},vectors=0,{addr}{mode}"]
        else:
            vhost = ",vhost=on" if backend == "vhost" else ""
            ctx.argv += ["-netdev", f"tap,id={nid},ifname={esc(tap)},script=no,downscript=no{vhost}"]
            ctx.argv += ["-device", f"virtio-net-pci,netdev={nid},mac={mac},{addr}{mode}"]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("interface",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        t = el.get("type")
        d: dict[str, Any] = {"type": cls.KIND}
        target = el.find("target")
        source = el.find("source")
        mac = el.find("mac")
        label = f"<interface type='{t}'>"
        if mac is not None and mac.get("address"):
            d["mac"] = (mac.get("address") or "").lower()
            label += f" {d['mac']}"
        drv = el.find("driver")
        if t == "vhostuser":
            if imp.foreign:
                return cls._vhost_user_from_libvirt(el, imp, label, d)
            d["backend"] = "embedded"  # acrnmgr's own export: the metadata says whose socket it is
        elif drv is not None and drv.get("name") == "vhost":
            d["backend"] = "vhost"
        elif drv is not None and drv.get("name") == "qemu":
            d["backend"] = "vbs-u"
        if t not in ("bridge", "network", "ethernet", "vhostuser"):
            why = {"user": "QEMU's user-mode network (slirp)", "direct": "a macvtap on a host NIC",
                   "hostdev": "an SR-IOV VF passed through as a NIC"}.get(t or "", f"type {t!r}")
            how = {"direct": " (create the macvtap on the host and give it as <interface type='ethernet'> with "
                             "<target dev='macvtapN'>)",
                   "hostdev": " (give the VF as a <hostdev>)"}.get(t or "", "")
            imp.warnings.append(f"{label}: {why} has no acrn-dm form; acrn-dm attaches a NIC to a tap or an existing "
                                f"macvtap{how}; skipped")
            return True
        model = el.find("model")
        mtype = model.get("type") if model is not None else None
        if mtype != "virtio" and imp.mode_of(model, "type") is None:
            imp.warnings.append(f"{label}: model {mtype!r} imported as virtio-net (the guest needs a virtio driver)")
        elif imp.mode_of(model, "type"):
            d["mode"] = imp.mode_of(model, "type")
        wanted = target.get("dev") if target is not None else None
        if t == "vhostuser" and not imp.foreign:
            pass  # the tap is in the acrnmgr metadata
        elif wanted and wanted.startswith(("vnet", "macvtap", "vhost-user")) and imp.foreign:
            d["tap"] = imp.tap(None, label, f"libvirt generates its tap name ({wanted})")
        else:
            d["tap"] = imp.tap(wanted, label)
        if t == "bridge" and source is not None and source.get("bridge") and imp.foreign:
            net = imp.spec.setdefault("network", {})
            if net.setdefault("bridge", source.get("bridge")) != source.get("bridge"):
                imp.warnings.append(f"{label}: bridge {source.get('bridge')!r}: acrnmgr puts all of a VM's taps on "
                                    f"one bridge; this one goes on {net['bridge']!r}")
        elif t == "network" and source is not None and source.get("network"):
            d["libvirtNetwork"] = source.get("network")
            if imp.foreign:
                imp.warnings.append(f"{label}: libvirt network {source.get('network')!r}: kept for the libvirt "
                                    "export; the acrn and qemu engines put the tap on the VM's bridge (network.bridge)")
        imp.add(imp.slot_of(el), d, el)
        if d.get("macvtap") is True:
            d["macvtap"] = d.pop("tap")
        return True

    @classmethod
    def _vhost_user_from_libvirt(cls, el: ET.Element, imp: LibvirtIn, label: str, d: dict[str, Any]) -> bool:
        """<interface type='vhostuser'> of another process (OVS-DPDK, VPP): backend: vhost-user on its socket."""
        if not vhost_user_source(el, imp, label, d, "no <source type='unix' path='/...'>: no vhost-user socket to "
                                 "attach to; skipped"):
            return True
        source = el.find("source")
        mode = (source.get("mode") if source is not None else None) or "client"
        if mode == "server":
            d["socketMode"] = "server"
        elif mode != "client":
            imp.warnings.append(f"{label}: <source mode='{mode}'> is not client or server; taken as client")
        model = el.find("model")
        if model is not None and model.get("type") not in ("virtio", None) and imp.mode_of(model, "type") is None:
            imp.warnings.append(f"{label}: model {model.get('type')!r} imported as virtio-net (vhost-user is virtio)")
        elif imp.mode_of(model, "type"):
            d["mode"] = imp.mode_of(model, "type")
        imp.add(imp.slot_of(el), d, el)
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        extra, model = self.libvirt_extra()
        if backend == "vhost-user":
            out.needs_shared_memory = True
            iface = xml_sub(out.devices, "interface", type="vhostuser")
            src = xml_sub(iface, "source", type="unix", path=self.socket,
                          mode="server" if self.socket_server else "client")
            if self.reconnect:
                xml_sub(src, "reconnect", enabled="yes", timeout=self.reconnect)
                extra["reconnect"] = self.reconnect
            extra["socket"] = self.socket  # whose socket it is: not acrnmgr's device model's
            if self.socket_server:
                extra["socketMode"] = "server"
        elif backend == "embedded" and out.flavor == "qemu":
            out.needs_shared_memory = True
            iface = xml_sub(out.devices, "interface", type="vhostuser")
            xml_sub(iface, "source", type="unix", path=out.socket(self), mode="client")
            extra["tap"] = self.ifname
        elif out.flavor == "acrn":
            iface = xml_sub(out.devices, "interface", type="bridge")
            xml_sub(iface, "source", bridge=out.bridge)
            xml_sub(iface, "target", dev=self.ifname, managed="no")
            if self.libvirt_network:
                extra["libvirtNetwork"] = self.libvirt_network  # the ACRN driver takes a bridge
        elif self.libvirt_network and not self.macvtap:
            iface = xml_sub(out.devices, "interface", type="network")
            xml_sub(iface, "source", network=self.libvirt_network)
            xml_sub(iface, "target", dev=self.ifname)
        elif out.bridge_given and not self.macvtap:  # (a macvtap exists already: libvirt takes it as ethernet)
            iface = xml_sub(out.devices, "interface", type="bridge")
            xml_sub(iface, "source", bridge=out.bridge)
            xml_sub(iface, "target", dev=self.ifname)
        else:
            iface = xml_sub(out.devices, "interface", type="ethernet")
            xml_sub(iface, "target", dev=self.ifname, managed="no")
        if self.mac:
            xml_sub(iface, "mac", address=self.mac)
        else:
            extra["autoMac"] = True  # libvirt invents one; acrn-dm derives its own (or from macSeed)
        if self.mac_seed:
            extra["macSeed"] = self.mac_seed
        if self.macvtap:
            extra["macvtap"] = True
        xml_sub(iface, "model", type=model)
        if backend == "vhost" and out.flavor == "qemu":
            xml_sub(iface, "driver", name="vhost")
        xml_alias(iface, self.name)
        xml_pci(iface, slot)
        return extra


def acrn_mac(slot: int, func: int, seed: str | None) -> str:
    """acrn-dm's MAC for a virtio-net without `mac=` (devicemodel/hw/pci/virtio/virtio_net.c): the MD5 of
    "<slot>-<func>-<seed>" (of "<slot>-<func>" without a seed), behind Xen's OUI 00:16:3E."""
    text = f"{slot}-{func}-{seed}" if seed is not None else f"{slot}-{func}"
    digest = hashlib.md5(text.encode(), usedforsecurity=False).digest()
    return ":".join(f"{b:02x}" for b in (0x00, 0x16, 0x3E, *digest[:3]))


def read_host_mac(net_dir: str | Path = "/sys/class/net") -> str:
    """What ACRN's launch scripts use for HOST_MAC: ${mac:0:17} of `cat /sys/class/net/e*/address`
    (the first e* interface in glob order; empty when there is none)."""
    text = ""
    for path in sorted(Path(net_dir).glob("e*/address")):
        try:
            text += Path(path).read_text()
        except OSError:
            continue
    return text[:17]


def resolve_host_mac(value: str, host_mac: str | None = None) -> str:
    """`value` with HOST_MAC replaced by this host's NIC address (read only when needed)."""
    if HOST_MAC not in value:
        return value
    return value.replace(HOST_MAC, host_mac if host_mac is not None else read_host_mac())


# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def check_mac(mac: str) -> str:
    if not MAC_RE.fullmatch(mac):
        raise GrammarError(f"virtio-net: invalid mac {mac!r}")
    if mac_problem(mac):
        raise GrammarError(f"virtio-net: mac {mac!r} is multicast or zero")
    return mac.lower()


def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    """As acrn-dm's virtio_net_init reads its options: v3.x takes `tap=<name>` first; `mac_seed=` counts only
    right after it, and the seed is everything after it (commas included); `vhost` and `mac=` are honoured
    wherever they stand, even inside the seed's text."""
    if family == "3":
        if not body.startswith("tap="):
            raise GrammarError(f"virtio-net: v3.x needs tap=<name> first, got {body!r}")
        name, _, rest = body[4:].partition(",")
        params: dict[str, Any] = {"tap": name, "vhost": False}
        if rest.startswith("mac_seed="):  # only right after the tap name
            seed = rest[len("mac_seed="):]
            params["macSeed"] = seed
            tokens = seed.split(",")
            unknown_ok = set(tokens)  # the seed's own words are not options
        else:
            tokens, unknown_ok = rest.split(","), set()
    else:
        name, _, rest = body.partition(",")
        if not ("tap" in name or name.startswith("vmnet")):
            raise GrammarError(f"virtio-net: v2.x tap name {name!r} must contain 'tap' or start with 'vmnet'")
        params = {"tap": name, "vhost": False}
        tokens, unknown_ok = rest.split(","), set()
    if not name or len(name) > 15:
        raise GrammarError(f"virtio-net: invalid tap name {name!r} (1-15 characters)")
    for tok in tokens:
        if not tok:
            continue
        if tok == "vhost":
            params["vhost"] = True
        elif tok.startswith("mac="):
            params["mac"] = check_mac(tok[4:])
        elif tok.startswith("mac_seed=") and family == "2":
            raise GrammarError("virtio-net: v2.x has no mac_seed= option (it is the global --mac_seed)")
        elif family == "3" and tok not in unknown_ok:
            params.setdefault("ignored", []).append(tok)  # acrn-dm skips options it does not know
        elif tok not in unknown_ok:
            raise GrammarError(f"virtio-net: unknown option {tok!r}")
    return params
