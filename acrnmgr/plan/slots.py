"""PCI slot assignment, as ACRN's config tools do it (launch_cfg_gen.py):
0 hostbridge, 1 lpc (not for an RTVM), 2 GPU passthrough, 31 igd-lpc (acrn-dm adds it with an
Intel GPU passthrough); every other device gets the next free slot from 3 up, in device order,
skipping slots that devices ask for explicitly. The result depends only on the spec."""

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
    field: str  # "slot" or "gpu"
    message: str
    suggestion: str | None = None


@dataclass(frozen=True)
class SlotRequest:
    """What slot assignment needs of a device: the slot it asks for, and whether it is the GPU passthrough."""

    slot: int | None = None
    gpu: bool = False


def requests_of(devices: Sequence[Mapping[str, Any]]) -> list[SlotRequest]:
    """Slot requests of spec-shaped device mappings (the importers build those before a model exists)."""
    return [SlotRequest(d.get("slot"), d.get("type") == "passthru" and bool(d.get("gpu"))) for d in devices]


def assign_slots(devices: Sequence[SlotRequest]) -> tuple[list[int | None], list[SlotProblem]]:
    """Return (slot per device, problems). A device with a problem gets None."""
    slots: list[int | None] = [None] * len(devices)
    problems: list[SlotProblem] = []
    owner: dict[int, int] = {}

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
        else:
            slots[i] = GPU_SLOT
            owner[GPU_SLOT] = i

    for i, device in enumerate(devices):
        explicit = device.slot
        if explicit is None or i in gpus:
            continue
        if not FIRST_FREE <= explicit <= LAST_FREE:
            reserved = {HOSTBRIDGE_SLOT: "the hostbridge", LPC_SLOT: "the LPC bridge", GPU_SLOT: "GPU passthrough",
                        IGD_LPC_SLOT: "igd-lpc"}.get(explicit)
            why = f"slot {explicit} is reserved for {reserved}" if reserved else f"slot {explicit} is outside 3..29"
            problems.append(SlotProblem(i, "slot", why, "use a slot from 3 to 29, or leave `slot` out"))
        elif explicit in owner:
            problems.append(SlotProblem(i, "slot", f"slot {explicit} is already taken by device {owner[explicit]}",
                                        "give each device its own slot, or leave `slot` out"))
        else:
            slots[i] = explicit
            owner[explicit] = i

    next_free = FIRST_FREE
    for i, device in enumerate(devices):
        if slots[i] is not None or device.slot is not None or i in gpus:
            continue
        while next_free in owner:
            next_free += 1
        if next_free > LAST_FREE:
            problems.append(SlotProblem(i, "slot", "no free PCI slot left (3..29 are all used)",
                                        "remove devices or combine them"))
            continue
        slots[i] = next_free
        owner[next_free] = i
    return slots, problems


def fixed_slots(rtvm: bool) -> list[tuple[int, str]]:
    """The emulations acrn-dm gets on fixed slots regardless of the device list."""
    return [(HOSTBRIDGE_SLOT, "hostbridge")] + ([] if rtvm else [(LPC_SLOT, "lpc")])
