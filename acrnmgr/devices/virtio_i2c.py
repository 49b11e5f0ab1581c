"""virtio-i2c: acrn-dm's virtio-i2c over host adapters (modern only), or the embedded device model's adapter.

acrn-dm's config (devicemodel/hw/pci/virtio/virtio_i2c.c) is a comma list of host adapters, each
``<bus>[:<addr>[@<node>]]...``: ``bus`` decimal (``/dev/i2c-<bus>``), ``addr`` hex (``1C`` or ``0x1c``; acrn-dm
keeps its low 7 bits and skips address 0), ``node`` an ACPI node it adds to the DSDT (cam1, cam2, hdac, default;
others are warned about and skipped).  At most 16 adapters; an address may appear once over all of them.

The spec lists the adapter's devices: ``host`` clients (a client of a host adapter, acrn-dm's form), and
simulated ``eeprom-24c02`` and ``lm75`` devices, which only the embedded device model has.  On the qemu engine
the embedded model serves every kind (QEMU 7.2 has vhost-user-i2c-pci and no virtio-i2c of its own), passing host
clients through with I2C_RDWR as acrn-dm does.  ``args`` (acrn-dm's raw string) stays accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import (
    NO_VHOST_USER,
    AcrnArgs,
    CheckContext,
    Choice,
    GrammarError,
    QemuArgs,
    SlotDevice,
    VirtioDevice,
    qemu_mode,
)
from acrnmgr.host import HostProfile
from acrnmgr.model import JsonPath, common_fields, resolve

SIMULATED = ("eeprom-24c02", "lm75")
HOST = "host"
ACPI_NODES = ("cam1", "cam2", "hdac", "default")  # acrn-dm's acpi_node_table
MAX_ADAPTERS = 16  # MAX_NATIVE_I2C_ADAPTER
MAX_NODE_NAME = 19  # MAX_NODE_NAME_LEN 20, NUL included
CONTROL_SUFFIX = ".i2c.sock"  # acrnmgr/cli/i2c.py finds a VM's adapters by it


@dataclass(frozen=True)
class I2cClient:
    """One device on the adapter: ``kind`` host (``bus``, ``acpi_node``), eeprom-24c02 (``file``) or lm75."""

    kind: str
    address: int
    file: str | None = None
    temperature: float | None = None
    bus: int | None = None
    acpi_node: str | None = None

    @property
    def label(self) -> str:
        where = f" of /dev/i2c-{self.bus}" if self.kind == HOST else ""
        return f"{self.kind} {self.address:#04x}{where}"


@dataclass(frozen=True)
class VirtioI2c(VirtioDevice):
    KIND: ClassVar[str] = "virtio-i2c"
    ACRN_MODE: ClassVar[str] = "modern"
    EMBEDDED: ClassVar[bool] = True
    QEMU_VHOST_USER: ClassVar[bool] = True

    clients: tuple[I2cClient, ...] = ()
    args: str | None = None  # acrn-dm's string as the spec gave it, rendered as is

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioI2c:
        args = raw.get("args")
        if args is not None:
            try:
                clients = tuple(_clients_of(parse_acrn(cls.KIND, args, "3")))
            except GrammarError:  # check_spec reported it
                clients = ()
            return cls(**common_fields(index, raw), clients=clients, args=args)
        clients = tuple(
            I2cClient(d["type"], d["address"],
                      file=resolve(base_dir, d["file"]) if d["type"] == "eeprom-24c02" else None,
                      temperature=float(d.get("temperature", 25.0)) if d["type"] == "lm75" else None,
                      bus=d.get("bus"), acpi_node=d.get("acpiNode"))
            for d in raw.get("devices", ()))
        return cls(**common_fields(index, raw), clients=clients)

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        super().check_spec(ctx, spec, items)
        for path, dev in items:
            if "args" in dev and "devices" in dev:
                ctx.error((*path, "args"), "`args` (acrn-dm's config string) and `devices` describe the same "
                          "adapter twice", "keep `devices` (acrnmgr writes acrn-dm's string from it)")
                continue
            if "args" in dev:
                try:
                    parse_acrn(cls.KIND, dev["args"], "3")
                except GrammarError as exc:
                    ctx.error((*path, "args"), str(exc), "write it as acrn-dm reads it, e.g. `2:1C@cam1:50,4:2F` "
                              "(adapter /dev/i2c-2 with clients 0x1c and 0x50), or list `devices` instead")
                continue
            seen: dict[int, JsonPath] = {}
            buses: list[int] = []
            for k, client in enumerate(dev.get("devices", [])):
                where: JsonPath = (*path, "devices", k)
                addr = client["address"]
                if addr < 0x08 or 0x77 < addr <= 0x7F:  # (above 0x7f: the schema says so)
                    ctx.error((*where, "address"), f"address {addr:#04x} is reserved by the I2C specification "
                              "(0x00-0x07: general call, CBUS, other buses, high speed; 0x78-0x7f: 10-bit "
                              "addressing and future use)", "use an address in 0x08..0x77 (e.g. 0x50 for an "
                              "EEPROM, 0x48 for an LM75)")
                if addr in seen:
                    ctx.error((*where, "address"), f"address {addr:#04x} is already used on this adapter by "
                              f"devices[{seen[addr][-1]}] ({ctx.where(seen[addr])}); one device answers an address",
                              "give each device its own address")
                else:
                    seen[addr] = where
                if client["type"] == HOST and client["bus"] not in buses:
                    buses.append(client["bus"])
            if len(buses) > MAX_ADAPTERS:
                ctx.error((*path, "devices"), f"{len(buses)} host adapters: acrn-dm's virtio-i2c takes at most "
                          f"{MAX_ADAPTERS}", "split the clients over two virtio-i2c devices")

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p = dev.params
        devices = []
        for adapter in p["adapters"]:
            if not adapter["clients"]:
                warnings.append(f"virtio-i2c {p['args']!r}: adapter /dev/i2c-{adapter['bus']} has no clients, which "
                                "only acrn-dm's string can say; kept as `args`")
                return {"type": cls.KIND, "args": p["args"]}
            for c in adapter["clients"]:
                d: dict[str, Any] = {"type": HOST, "bus": adapter["bus"], "address": c["address"]}
                node = c.get("acpiNode")
                if node in ACPI_NODES:
                    d["acpiNode"] = node
                elif node is not None:
                    warnings.append(f"virtio-i2c: ACPI node {node!r} of client {c['address']:#04x} is not one acrn-dm "
                                    f"knows ({', '.join(ACPI_NODES)}); acrn-dm skips it, and so does the spec")
                devices.append(d)
        for addr in p.get("skipped", ()):
            warnings.append(f"virtio-i2c: client address {addr} is 0 in its low 7 bits; acrn-dm ignores it, "
                            "and so does the spec")
        return {"type": cls.KIND, **({"devices": devices} if devices else {})}

    # -- acrn-dm --------------------------------------------------------------------------------------------------
    def simulated(self) -> list[I2cClient]:
        return [c for c in self.clients if c.kind != HOST]

    def choose_acrn(self, host: HostProfile, family: str) -> Choice:
        sims = self.simulated()
        if sims and self.backend in ("auto", "embedded"):
            what = ", ".join(c.label for c in sims)
            return Choice("embedded", "simulated I2C devices need the embedded device model",
                          f"simulated I2C devices ({what}) exist only in the embedded device model; {NO_VHOST_USER}. "
                          "acrn-dm's virtio-i2c only passes clients of host adapters (/dev/i2c-N) through",
                          "run the VM with the qemu engine, or list only `type: host` clients for the acrn engine")
        if sims:
            return Choice(None, "", f"backend: {self.backend}: acrn-dm's virtio-i2c has no simulated devices "
                          f"({', '.join(c.label for c in sims)})", "use the qemu engine, or only `type: host` clients")
        choice = super().choose_acrn(host, family)
        if choice.backend == "vbs-u":
            return Choice("vbs-u", choice.reason + self._clients_reason())
        return choice

    def _clients_reason(self) -> str:
        hosts = [c for c in self.clients if c.kind == HOST]
        if not hosts:
            return ": no clients (every address NAKs)"
        return ": passes through " + ", ".join(c.label for c in hosts)

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        if self.args is not None:
            return self.args
        adapters: dict[int, list[str]] = {}
        for c in self.clients:
            if c.kind == HOST and c.bus is not None:
                adapters.setdefault(c.bus, []).append(f"{c.address:X}" + (f"@{c.acpi_node}" if c.acpi_node else ""))
        return ",".join(":".join([str(bus), *addrs]) for bus, addrs in adapters.items())

    # -- QEMU -----------------------------------------------------------------------------------------------------
    def choose_qemu(self, host: HostProfile) -> Choice:
        if self.backend in ("vbs-u", "vhost"):
            return Choice(None, "", f"backend: {self.backend}: QEMU has no virtio-i2c device of its own (only the "
                          "vhost-user-i2c-pci frontend), and there is no kernel vhost for it",
                          "remove `backend` (the embedded device model serves it)")
        parts = []
        hosts = [c for c in self.clients if c.kind == HOST]
        if hosts:
            parts.append("host clients pass through with I2C_RDWR as acrn-dm's do ("
                         + ", ".join(c.label for c in hosts) + ")")
        if self.simulated():
            parts.append("simulated " + ", ".join(c.label for c in self.simulated()))
        return Choice("embedded", "QEMU 7.2 has only vhost-user-i2c-pci, so the embedded device model serves it"
                      + (": " + "; ".join(parts) if parts else " (no devices: every address NAKs)"))

    def control_socket(self, state_dir: Path) -> Path:
        """The socket `acrnmgr i2c get/set` reaches this adapter's simulated devices through."""
        return state_dir / f"{self.display_name}{CONTROL_SUFFIX}"

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        extra = []
        for k, c in enumerate(self.clients):
            if c.kind == "eeprom-24c02":
                extra += ["--eeprom", f"{c.address:#04x}={c.file}"]
            elif c.kind == "lm75":
                extra += ["--lm75", f"{c.address:#04x}={c.temperature:g}"]
            else:
                extra += ["--host-client", f"{c.bus}:{c.address:#04x}"]
                if c.acpi_node not in (None, "default"):
                    ctx.diags.warn((*self.where, "devices", k, "acpiNode"), f"acpiNode {c.acpi_node}: the qemu "
                                   "engine adds no ACPI node for an I2C client (acrn-dm writes it into its DSDT)",
                                   "instantiate the client in the guest (new_device, or a driver that probes it)")
        sock = ctx.helper(self, "i2c", extra, control=self.control_socket(ctx.state_dir))
        ctx.vhost_user(slot, sock, "vhost-user-i2c-pci", after=qemu_mode(self))


def _clients_of(params: Mapping[str, Any]) -> list[I2cClient]:
    return [I2cClient(HOST, c["address"], bus=a["bus"], acpi_node=c.get("acpiNode"))
            for a in params["adapters"] for c in a["clients"]]


# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------------
_ADDR = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)(?:@([^:,]*))?\Z")


def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    """virtio_i2c_parse() and virtio_i2c_map(): what acrn-dm accepts, and the errors it stops on."""
    adapters: list[dict[str, Any]] = []
    skipped: list[str] = []
    owner: dict[int, int] = {}
    if body == "":
        return {"args": body, "adapters": adapters, "skipped": skipped}
    for part in body.split(","):
        bus_text, *addr_texts = part.split(":")
        if not bus_text.isdigit():
            raise GrammarError(f"virtio-i2c: adapter {part!r}: the bus number {bus_text!r} must be a decimal number "
                               "(2 for /dev/i2c-2)")
        bus = int(bus_text)
        if bus > 0x7FFFFFFF:
            raise GrammarError(f"virtio-i2c: bus number {bus} is out of range")
        if len(adapters) >= MAX_ADAPTERS:
            raise GrammarError(f"virtio-i2c: more than {MAX_ADAPTERS} adapters")
        clients = []
        for text in addr_texts:
            m = _ADDR.match(text)
            if m is None:
                raise GrammarError(f"virtio-i2c: adapter {bus}: client {text!r} is not a hex address with an "
                                   "optional @node")
            addr = int(m[1], 16) & 0x7F
            if addr == 0:
                skipped.append(text)
                continue
            if addr in owner:
                raise GrammarError(f"virtio-i2c: client address {addr:#04x} appears twice (on adapters "
                                   f"{owner[addr]} and {bus}); acrn-dm refuses a repeated address")
            owner[addr] = bus
            client: dict[str, Any] = {"address": addr}
            if m[2] is not None:
                client["acpiNode"] = m[2][:MAX_NODE_NAME]
            clients.append(client)
        adapters.append({"bus": bus, "clients": clients})
    return {"args": body, "adapters": adapters, "skipped": skipped}
