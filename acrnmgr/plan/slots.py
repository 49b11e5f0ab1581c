"""PCI slot assignment, as ACRN's config tools do it (launch_cfg_gen.py):
0 hostbridge, 1 lpc (not for an RTVM), 2 GPU passthrough, 31 igd-lpc (acrn-dm adds it with an
Intel GPU passthrough); every other device gets the next free slot from 3 up, in device order,
skipping slots that devices ask for explicitly. The result depends only on the spec.

A device may also ask for a function of its slot (acrn-dm's `-s <slot>:<func>`, devicemodel/hw/pci/core.c
pci_parse_slot: functions 0-7 of one slot are separate devices). Several devices then share the slot, one
per function; such a slot is never given to a device without an explicit slot. acrn-dm sets the
multi-function bit of function 0's header itself (core.c pci_emul_hdrtype_fixup); QEMU wants
multifunction=on on function 0. A guest finds the functions of a slot only through function 0 (Linux's
drivers/pci/probe.c pci_scan_slot stops at an empty function 0), so a slot used at function N without a
device at function 0 is reported (a warning: acrn-dm starts such a VM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from acrnmgr.devices.passthru import GPU_SLOT

HOSTBRIDGE_SLOT = 0
LPC_SLOT = 1
IGD_LPC_SLOT = 31
FIRST_FREE, LAST_FREE = 3, 29


@dataclass(frozen=True)
class SlotProblem:
    index: int  # device index in spec.devices
    field: str  # "slot", "function" or "gpu"
    message: str
    suggestion: str | None = None
    severity: str = "error"  # or "warning": acrn-dm starts the VM, but the guest may not see the device


@dataclass(frozen=True)
class SlotRequest:
    """What slot assignment needs of a device: the slot and function it asks for, and whether it is the GPU
    passthrough."""

    slot: int | None = None
    gpu: bool = False
    function: int = 0


def requests_of(devices: Sequence[Mapping[str, Any]]) -> list[SlotRequest]:
    """Slot requests of spec-shaped device mappings (the importers build those before a model exists)."""
    return [SlotRequest(d.get("slot"), d.get("type") == "passthru" and bool(d.get("gpu")), d.get("function") or 0)
            for d in devices]


def request_of(device: Any) -> SlotRequest:
    """The slot request of a model device (acrnmgr.model.Device)."""
    return SlotRequest(device.slot, bool(getattr(device, "gpu", False)), device.function)


def multifunction_slots(slots: Sequence[int | None], functions: Sequence[int]) -> set[int]:
    """The slots more than one function of which is used (function 0 must then say it is multi-function)."""
    used: dict[int, set[int]] = {}
    for slot, func in zip(slots, functions, strict=True):
        if slot is not None:
            used.setdefault(slot, set()).add(func)
    return {slot for slot, funcs in used.items() if len(funcs) > 1}


def assign_slots(devices: Sequence[SlotRequest]) -> tuple[list[int | None], list[SlotProblem]]:
    """Return (slot per device, problems). A device with an error gets None; warnings leave its slot."""
    slots: list[int | None] = [None] * len(devices)
    problems: list[SlotProblem] = []
    owner: dict[tuple[int, int], int] = {}  # (slot, function) -> device index

    gpus = [i for i, d in enumerate(devices) if d.gpu]
    for n, i in enumerate(gpus):
        explicit = devices[i].slot
        if n:
            problems.append(SlotProblem(i, "gpu",
                                        f"only one GPU passthrough per VM (device {gpus[0]} is already the GPU)",
                                        "drop `gpu: true` from all but one passthru device"))
        elif explicit is not None and explicit != GPU_SLOT:
            problems.append(SlotProblem(i, "slot", f"GPU passthrough must sit on slot {GPU_SLOT}, not {explicit}",
                                        "remove `slot` or set it to 2"))
        elif devices[i].function:
            problems.append(SlotProblem(i, "function", f"GPU passthrough sits on function 0 of slot {GPU_SLOT}",
                                        "remove `function`"))
        else:
            slots[i] = GPU_SLOT
            owner[(GPU_SLOT, 0)] = i

    for i, device in enumerate(devices):
        explicit = device.slot
        if i in gpus:
            continue
        if explicit is None:
            if device.function:
                problems.append(SlotProblem(i, "function", f"function {device.function} needs an explicit `slot`",
                                            "add `slot` (3..29), or remove `function`"))
            continue
        where = f"{explicit}:{device.function}" if device.function else str(explicit)
        if not FIRST_FREE <= explicit <= LAST_FREE:
            reserved = {HOSTBRIDGE_SLOT: "the hostbridge", LPC_SLOT: "the LPC bridge", GPU_SLOT: "GPU passthrough",
                        IGD_LPC_SLOT: "igd-lpc"}.get(explicit)
            why = f"slot {explicit} is reserved for {reserved}" if reserved else f"slot {explicit} is outside 3..29"
            problems.append(SlotProblem(i, "slot", why, "use a slot from 3 to 29, or leave `slot` out"))
        elif (explicit, device.function) in owner:
            problems.append(SlotProblem(i, "function" if device.function else "slot",
                                        f"PCI slot {where} is already taken by device "
                                        f"{owner[(explicit, device.function)]}",
                                        "give each device its own slot (or function), or leave `slot` out"))
        else:
            slots[i] = explicit
            owner[(explicit, device.function)] = i

    taken = {slot for slot, _func in owner}
    for slot in sorted(taken):
        if (slot, 0) not in owner:
            first = min(i for (s, _f), i in owner.items() if s == slot)
            problems.append(SlotProblem(first, "function", f"slot {slot} has no device at function 0, so the guest "
                                        "does not find its other functions (PCI enumeration starts at function 0)",
                                        f"put one of the slot's devices at `function: 0` (slot {slot})",
                                        severity="warning"))

    next_free = FIRST_FREE
    for i, device in enumerate(devices):
        if slots[i] is not None or device.slot is not None or device.function or i in gpus:
            continue
        while next_free in taken:
            next_free += 1
        if next_free > LAST_FREE:
            problems.append(SlotProblem(i, "slot", "no free PCI slot left (3..29 are all used)",
                                        "remove devices or combine them"))
            continue
        slots[i] = next_free
        taken.add(next_free)
    return slots, problems


# spec.settings.hostbridge -> acrn-dm's emulation on slot 0 (devicemodel/hw/pci/hostbridge.c: amd_hostbridge is
# the same bridge with AMD's vendor ID 0x1022). ACRN's launch script generator always writes `hostbridge`.
HOSTBRIDGE_EMULATIONS = {"intel": "hostbridge", "amd": "amd_hostbridge"}


def fixed_slots(rtvm: bool, hostbridge: str = "intel") -> list[tuple[int, str]]:
    """The emulations acrn-dm gets on fixed slots regardless of the device list."""
    return [(HOSTBRIDGE_SLOT, HOSTBRIDGE_EMULATIONS[hostbridge])] + ([] if rtvm else [(LPC_SLOT, "lpc")])
