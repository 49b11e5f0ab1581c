"""Effective MAC addresses across VMs: what acrn-dm gives each virtio-net, so that `validate` can
report two VMs on one bridge whose NICs would get the same MAC.

acrn-dm (devicemodel/hw/pci/virtio/virtio_net.c) uses `mac=` when given; otherwise it derives the
MAC from "<slot>-<func>-<seed>" (or "<slot>-<func>" without a seed): virtio_net.acrn_mac. So two
VMs without a seed and a NIC in the same slot collide, on every host. A seed with HOST_MAC is
compared as written: on one host, HOST_MAC is the same NIC address for every VM, so the same
seed text means the same MAC whatever that address is."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from acrnmgr.devices.virtio_net import HOST_MAC, VirtioNet, acrn_mac
from acrnmgr.model import JsonPath, VmSpec
from acrnmgr.plan.slots import assign_slots, request_of


def effective_macs(vm: VmSpec) -> list[tuple[VirtioNet, JsonPath, str, str]]:
    """(device, where, MAC, how) for each virtio-net of `vm` with a slot; `how` says where the MAC
    comes from."""
    devices = list(vm.devices)
    slots, _problems = assign_slots([request_of(d) for d in devices])
    out = []
    for device, slot in zip(devices, slots, strict=True):
        if not isinstance(device, VirtioNet) or slot is None:
            continue
        if device.mac:
            out.append((device, (*device.where, "mac"), device.mac, "mac"))
            continue
        # validate is engine-neutral: kernel vhost (which extends the seed) only when the spec asks for it
        seed = device.acrn_seed("vhost" if device.backend == "vhost" else None)
        func = device.function
        text = f"{slot}-{func}-{seed}" if seed is not None else f"{slot}-{func}"
        how = f'acrn-dm\'s MD5 of "{text}"' + (f" ({HOST_MAC} being the host NIC's address)" if seed and
                                                 HOST_MAC in seed else "")
        out.append((device, (*device.where, "macSeed" if seed else "tap"), acrn_mac(slot, func, seed), how))
    return out


S = TypeVar("S")


def mac_collisions(vms: Iterable[tuple[S, VmSpec]]) -> list[tuple[S, JsonPath, str, str]]:
    """(source, where, message, hint) for each NIC whose effective MAC an earlier VM's NIC on the same
    bridge already has; `source` is what the caller passed with the VM (its document)."""
    seen: dict[tuple[str, str], tuple[VmSpec, str]] = {}
    out = []
    for source, vm in vms:
        for _device, where, mac, how in effective_macs(vm):
            key = (vm.bridge, mac)
            if key in seen and seen[key][0] is not vm:
                other, other_how = seen[key]
                out.append((source, where,
                            f"this virtio-net gets MAC {mac} ({how}), the same as a NIC of VM `{other.name}` "
                            f"({other_how}) on bridge {vm.bridge}",
                            "give one of them `mac:`, or a `macSeed` of its own (ACRN's generator seeds "
                            f"with {HOST_MAC}-<VM name>)"))
            else:
                seen.setdefault(key, (vm, how))
    return out
