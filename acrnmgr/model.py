"""The typed VM model: frozen dataclasses built once from a validated spec, with the schema's defaults applied.

Nothing downstream of the model reads the spec's raw dict: the planner, the renderers and the engines take a
:class:`VmSpec`.  Each device kind has its class in its own module under ``acrnmgr/devices/``; this module holds
what is not a device (boot, console, settings) and the :class:`Device` base they share.

Every object keeps the JSON path it came from (``where``), and :meth:`VmSpec.locate` turns a path into
``file:line:col``, so a diagnostic made from the model still points into the spec file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.spec.units import parse_size

JsonPath = tuple[str | int, ...]

# The schema's defaults, in one place (the schema states the same values for users).
DEFAULT_BRIDGE = "acrn-br0"
DEFAULT_VM_TYPE = "standard"
DEFAULT_OS_TYPE = "linux"
DEFAULT_LOAD_ORDER = "post-launched"


@dataclass(frozen=True)
class KernelBoot:
    path: str
    initrd: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class OvmfBoot:
    """Either one combined ``image`` or a ``code`` + ``vars`` pair."""

    image: str | None = None
    code: str | None = None
    vars: str | None = None
    writeback: bool = False
    vars_template: str | None = None  # where a fresh vars comes from (libvirt's <nvram template>)
    secure: bool = False  # a Secure Boot build (libvirt's <loader secure='yes'>)


@dataclass(frozen=True)
class ElfBoot:
    path: str


Boot = KernelBoot | OvmfBoot | ElfBoot


@dataclass(frozen=True)
class LpcPort:
    """An LPC COM port (acrn-dm ``-l``); com5 is ACRN's S5 UART (path, tcpPort and irq)."""

    port: str
    backend: str = "stdio"
    path: str | None = None
    tcp_port: int | None = None
    irq: int | None = None
    where: JsonPath = ()
    tcp_host: str | None = None  # the listening address of a tcp port (None: 127.0.0.1)


@dataclass(frozen=True)
class IntrMonitor:
    threshold: int
    period: int
    delay_ms: int
    duration_ms: int


@dataclass(frozen=True)
class Settings:
    """acrn-dm's global options (``spec.settings``)."""

    virtio_poll: int | None = None
    ssram: str | None = None
    acpi_dev_pt: tuple[tuple[str, str | None], ...] = ()
    mmio_dev_pt: tuple[tuple[str, str], ...] = ()
    vtpm2_sock: str | None = None
    intr_monitor: IntrMonitor | None = None
    logger: tuple[tuple[str, str], ...] = ()  # (console|kmsg|disk, level), in that order
    windows: bool | None = None  # None: follow osType
    cmd_monitor: str | None = None
    pm_notify_channel: str | None = None
    allow_trigger_s5: bool = False
    enable_trusty: bool = False
    debugexit: bool = False
    virtio_msi: bool = False
    iasl: str | None = None
    hostbridge: str = "intel"  # intel: acrn-dm's `hostbridge`; amd: `amd_hostbridge` (devicemodel/hw/pci/hostbridge.c)


@dataclass(frozen=True)
class Device:
    """What every device kind has.  ``kind`` is the spec's ``type``; subclasses add the kind's own fields.

    ``backend`` is what the spec asks for (``auto`` by default); the planner decides the real one.
    ``raw`` is the device's spec mapping, kept only for export metadata and hashing, never for decisions.
    """

    KIND: ClassVar[str] = ""
    VIRTIO: ClassVar[bool] = False

    index: int
    name: str | None
    slot: int | None
    backend: str
    mode: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    function: int = 0  # the PCI function of `slot` (acrn-dm's -s <slot>:<func>); only with an explicit slot

    @property
    def kind(self) -> str:
        return self.KIND

    @property
    def where(self) -> JsonPath:
        return ("spec", "devices", self.index)

    @property
    def display_name(self) -> str:
        """The name plan tables show: the given name, else the kind and the device's position."""
        return self.name or f"{self.KIND}{self.index}"


Locator = Callable[[JsonPath], tuple[str, int, int]]


@dataclass(frozen=True)
class ReadyCheck:
    """spec.console.ready: the guest is up once its console printed `pattern` (a regular expression)."""

    pattern: str
    timeout: float = 120.0


def build_ready(console: Mapping[str, Any] | None) -> ReadyCheck | None:
    raw = (console or {}).get("ready")
    return ReadyCheck(raw["pattern"], float(raw.get("timeout", 120))) if raw else None


@dataclass(frozen=True)
class VmSpec:
    name: str
    labels: Mapping[str, str]
    vm_type: str
    os_type: str
    load_order: str
    memory: int  # bytes
    affinity: tuple[int, ...]  # LAPIC IDs
    boot: Boot
    lpc: tuple[LpcPort, ...]
    bridge: str
    settings: Settings
    extra_args: tuple[str, ...]
    devices: tuple[Device, ...]
    hash: str
    source: Path | None  # the spec file, when it came from one
    base_dir: Path
    data: Mapping[str, Any] = field(repr=False, compare=False)  # the validated document, for export metadata
    locator: Locator | None = field(default=None, repr=False, compare=False)
    own_pcpu: bool = False  # the VM owns its pCPUs (ACRN's own_pcpu / SCHED_NOOP): they are offlined
    ready: ReadyCheck | None = None  # spec.console.ready: what `up --wait-ready` waits for
    uuid: str | None = None  # spec.uuid (lower case): QEMU's -uuid, libvirt's <uuid>
    machine: str = "pc"  # spec.machine: the chipset QEMU emulates (pc or q35)

    @property
    def rtvm(self) -> bool:
        return self.vm_type == "rtvm"

    def locate(self, path: JsonPath) -> tuple[str, int, int]:
        """(file, line, col) of a JSON path in the spec this model was built from."""
        if self.locator is None:
            return (str(self.source) if self.source else self.name, 0, 0)
        return self.locator(path)

    def devices_of(self, kind: type[Device]) -> list[Any]:
        return [d for d in self.devices if isinstance(d, kind)]


def resolve(base_dir: Path, value: str) -> str:
    """A path from the spec, absolute and normalised: relative paths start at the spec's folder."""
    path = os.path.expanduser(value)  # os.path, not pathlib: this runs for every path of every spec loaded
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))


def build_boot(raw: Mapping[str, Any], base_dir: Path) -> Boot:
    if "kernel" in raw:
        k = raw["kernel"]
        return KernelBoot(resolve(base_dir, k["path"]), resolve(base_dir, k["initrd"]) if k.get("initrd") else None,
                          k.get("cmdline") or None)
    if "ovmf" in raw:
        o = raw["ovmf"]

        def path(key: str) -> str | None:
            return resolve(base_dir, o[key]) if o.get(key) else None

        return OvmfBoot(path("image"), path("code"), path("vars"), writeback=bool(o.get("writeback", False)),
                        vars_template=path("varsTemplate"), secure=bool(o.get("secure", False)))
    return ElfBoot(resolve(base_dir, raw["elf"]["path"]))


def build_lpc(raw: list[Mapping[str, Any]], base_dir: Path) -> tuple[LpcPort, ...]:
    ports = []
    for n, p in enumerate(raw):
        path = p.get("path")
        ports.append(LpcPort(p["port"], p.get("backend", "stdio"), resolve(base_dir, path) if path else None,
                             p.get("tcpPort"), p.get("irq"), ("spec", "console", "lpc", n), p.get("tcpHost")))
    return tuple(ports)


def build_settings(raw: Mapping[str, Any], base_dir: Path) -> Settings:
    def path(key: str) -> str | None:
        return resolve(base_dir, raw[key]) if raw.get(key) else None

    monitor = raw.get("intrMonitor")
    logger = raw.get("logger") or {}
    return Settings(
        virtio_poll=raw.get("virtioPoll"),
        ssram=raw.get("ssram") or None,
        acpi_dev_pt=tuple((i["hid"], i.get("uid") or None) for i in raw.get("acpiDevPt", [])),
        mmio_dev_pt=tuple((i["base"], i["length"]) for i in raw.get("mmioDevPt", [])),
        vtpm2_sock=resolve(base_dir, raw["vtpm2"]["sockPath"]) if raw.get("vtpm2") else None,
        intr_monitor=IntrMonitor(monitor["threshold"], monitor["period"], monitor["delayMs"], monitor["durationMs"])
        if monitor else None,
        logger=tuple((k, logger[k]) for k in ("console", "kmsg", "disk") if k in logger),
        windows=raw.get("windows"),
        cmd_monitor=path("cmdMonitor"),
        pm_notify_channel=raw.get("pmNotifyChannel"),
        allow_trigger_s5=bool(raw.get("allowTriggerS5")),
        enable_trusty=bool(raw.get("enableTrusty")),
        debugexit=bool(raw.get("debugexit")),
        virtio_msi=bool(raw.get("virtioMsi")),
        iasl=path("iasl"),
        hostbridge=raw.get("hostbridge", "intel"),
    )


def common_fields(index: int, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The Device base fields of one spec device, schema defaults applied."""
    return {"index": index, "name": raw.get("name"), "slot": raw.get("slot"), "backend": raw.get("backend", "auto"),
            "mode": raw.get("mode"), "raw": raw, "function": raw.get("function", 0)}


def memory_bytes(value: int | str) -> int:
    return parse_size(value)
