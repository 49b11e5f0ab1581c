"""One module per device kind (as Firecracker keeps ``devices/virtio/<kind>/``), and the registry that builds the
typed VM model from a validated spec.

A new device kind is one new module here (a :class:`~acrnmgr.model.Device` subclass with ``from_spec``,
``choose``, ``acrn_args`` and ``qemu``), its entry in ``KINDS``, and its schema fragment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acrnmgr.devices.acrn_emulation import AcrnEmulation
from acrnmgr.devices.ahci import Ahci
from acrnmgr.devices.base import EmulatedDevice, VirtioDevice
from acrnmgr.devices.ivshmem import Ivshmem
from acrnmgr.devices.passthru import Passthru
from acrnmgr.devices.uart import Uart
from acrnmgr.devices.vhost_vsock import VhostVsock
from acrnmgr.devices.virtio_blk import VirtioBlk
from acrnmgr.devices.virtio_console import VirtioConsole
from acrnmgr.devices.virtio_gpio import VirtioGpio
from acrnmgr.devices.virtio_gpu import VirtioGpu
from acrnmgr.devices.virtio_i2c import VirtioI2c
from acrnmgr.devices.virtio_input import VirtioInput
from acrnmgr.devices.virtio_net import VirtioNet
from acrnmgr.devices.virtio_rnd import VirtioRnd
from acrnmgr.devices.wdt import Wdt
from acrnmgr.devices.xhci import Xhci
from acrnmgr.model import (
    DEFAULT_BRIDGE,
    DEFAULT_LOAD_ORDER,
    DEFAULT_OS_TYPE,
    DEFAULT_VM_TYPE,
    Device,
    VmSpec,
    build_boot,
    build_lpc,
    build_ready,
    build_settings,
)
from acrnmgr.spec.loader import Spec
from acrnmgr.spec.units import parse_size

AnyDevice = VirtioDevice | EmulatedDevice

KINDS: dict[str, type[Any]] = {cls.KIND: cls for cls in (
    VirtioBlk, VirtioNet, VirtioConsole, VirtioRnd, VirtioInput, VirtioGpu, VirtioI2c, VirtioGpio, VhostVsock,
    Passthru, Ivshmem, Xhci, Ahci, Wdt, Uart, AcrnEmulation)}

# acrn-dm's emulation names of each kind (wdt is wdt-i6300esb; ahci also has ahci-hd and ahci-cd).
BY_EMULATION: dict[str, type[Any]] = {
    emulation: cls for cls in KINDS.values()
    for emulation in getattr(cls, "ACRN_EMULATIONS", None) or (getattr(cls, "EMULATION", cls.KIND),)}

VIRTIO_KINDS = tuple(k for k, cls in KINDS.items() if issubclass(cls, VirtioDevice))
EMBEDDED_KINDS = tuple(k for k, cls in KINDS.items() if issubclass(cls, VirtioDevice) and cls.EMBEDDED)


def device_from_spec(index: int, raw: Mapping[str, Any], base_dir: Path) -> Device:
    device: Device = KINDS[raw["type"]].from_spec(index, raw, base_dir)
    return device


def vm_from_spec(spec: Spec) -> VmSpec:
    """The typed model of a loaded (validated) spec, with the schema's defaults applied."""
    s = spec.spec
    base = spec.base_dir
    return VmSpec(
        name=spec.name,
        labels=dict(spec.data["metadata"].get("labels") or {}),
        vm_type=s.get("vmType", DEFAULT_VM_TYPE),
        os_type=s.get("osType", DEFAULT_OS_TYPE),
        load_order=s.get("loadOrder", DEFAULT_LOAD_ORDER),
        memory=parse_size(s["memory"]),
        affinity=tuple(s["cpu"]["affinity"]),
        own_pcpu=bool(s["cpu"].get("ownPcpu")),
        boot=build_boot(s["boot"], base),
        lpc=build_lpc((s.get("console") or {}).get("lpc", []), base),
        bridge=(s.get("network") or {}).get("bridge", DEFAULT_BRIDGE),
        settings=build_settings(s.get("settings") or {}, base),
        extra_args=tuple(s.get("extraArgs", [])),
        devices=tuple(device_from_spec(i, d, base) for i, d in enumerate(spec.devices)),
        hash=spec.hash,
        source=spec.path,
        base_dir=base,
        data=spec.data,
        locator=spec.locate,
        ready=build_ready(s.get("console")),
        uuid=s["uuid"].lower() if s.get("uuid") else None,
        machine=s.get("machine", "pc"),
    )
