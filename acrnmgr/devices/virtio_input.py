"""virtio-input: a host evdev node passed to the guest (acrn-dm's modern virtio-input, QEMU's
virtio-input-host-pci).

The node is a path, or (as ACRN's `Device name: N, Device physical path: P`) the evdev's name and
physical path, found among /sys/class/input/event* when the VM starts: the acrn-dm argv carries a
by_name_marker, which the launch script and `up` resolve (resolve_event), like ACRN's template, which
leaves the device out when no evdev matches."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from acrnmgr.devices.base import (
    AcrnArgs,
    GrammarError,
    LibvirtIn,
    LibvirtOut,
    QemuArgs,
    SlotDevice,
    VirtioDevice,
    esc,
    xml_alias,
    xml_sub,
)
from acrnmgr.model import common_fields


@dataclass(frozen=True)
class VirtioInput(VirtioDevice):
    KIND: ClassVar[str] = "virtio-input"
    ACRN_MODE: ClassVar[str] = "modern"

    device: str = ""
    serial: str | None = None
    device_name: str | None = None  # with device_phys: found in /sys/class/input at launch
    device_phys: str | None = None

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioInput:
        return cls(**common_fields(index, raw), device=raw.get("device", ""), serial=raw.get("serial"),
                   device_name=raw.get("deviceName"), device_phys=raw.get("devicePhys"))

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p = dev.params
        where = {"deviceName": p["deviceName"], "devicePhys": p["devicePhys"]} if "deviceName" in p else {
            "device": p["device"]}
        return {"type": cls.KIND, **where, **({"serial": p["serial"]} if p.get("serial") else {})}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        serial = f",{self.serial}" if self.serial else ""
        if self.device_name is not None:
            return by_name_marker(self.device_name, self.device_phys or "") + serial
        return ctx.path(self.device, (*self.where, "device")) + serial

    def evdev(self) -> str | None:
        """The evdev node on this host (None: no evdev has that name and physical path)."""
        if self.device_name is not None:
            return resolve_event(self.device_name, self.device_phys or "")
        return self.device

    def missing_on_host(self) -> str | None:
        if self.device_name is not None:
            return None if self.evdev() else (f"no evdev named {self.device_name!r} at {self.device_phys!r} in "
                                              "/sys/class/input on this host")
        return None if os.path.exists(self.device) else f"{self.device} does not exist on this host"

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        node = self.evdev() or self.device_name or ""
        ctx.argv += ["-device", f"virtio-input-host-pci,evdev={esc(node)},{ctx.addr(slot)}"]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("input",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        source = el.find("source")
        if el.get("type") == "evdev" and source is not None:
            dev = source.get("dev")
            # an empty dev: a by-name evdev this host did not have when acrnmgr exported it (the name is in
            # acrnmgr's metadata, which completes the device)
            imp.add(None, {"type": cls.KIND, **({"device": dev} if dev else {})}, el)
        elif el.get("type") not in ("mouse", "keyboard") or el.get("bus") not in (None, "ps2"):
            # (the PS/2 mouse and keyboard every x86 domain has: acrn-dm's LPC emulates them)
            imp.warnings.append(f"<input type='{el.get('type')}' bus='{el.get('bus')}'>: an emulated input device "
                                "has no acrn-dm form (acrn-dm's virtio-input passes a host evdev device through: "
                                "<input type='evdev'>); skipped")
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        if out.flavor != "qemu":
            return None
        extra, _ = self.libvirt_extra()
        inp = xml_sub(out.devices, "input", type="evdev")
        if self.device_name is not None:
            # libvirt names the node; the spec names the evdev, which acrnmgr's metadata keeps (ACRN's template
            # resolves it at every launch, libvirt only the node found now)
            extra.update(deviceName=self.device_name, devicePhys=self.device_phys or "")
            node = self.evdev() or ""
            if not node:
                out.warnings.append(f"{self.display_name}: no evdev named {self.device_name!r} at "
                                    f"{self.device_phys!r} on this host: <source dev=''/>, which libvirt cannot start")
            xml_sub(inp, "source", dev=node)
        else:
            xml_sub(inp, "source", dev=self.device)
        if self.serial:
            extra["serial"] = self.serial
        xml_alias(inp, self.name)
        return extra



# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    device, _, serial = body.partition(",")
    named = BY_NAME_RE.fullmatch(device)
    if named:
        return {"deviceName": unquote(named.group(1)), "devicePhys": unquote(named.group(2)),
                **({"serial": serial} if serial else {})}
    if not device.startswith("/"):
        raise GrammarError(f"virtio-input: {body!r}: use /dev/input/eventX[,serial]")
    return {"device": device, **({"serial": serial} if serial else {})}


# An evdev by name and physical path, in an acrn-dm argv until the launch resolves it (percent-encoded:
# no comma, space or brace).
BY_NAME_RE = re.compile(r"\{inputByName:([^:{},\s]*):([^:{},\s]*)\}")


def by_name_marker(name: str, phys: str) -> str:
    return f"{{inputByName:{quote(name, safe='')}:{quote(phys, safe='')}}}"


def resolve_event(name: str, phys: str, sysfs: str | Path = "/sys") -> str | None:
    """/dev/input/eventN of the evdev whose name and physical path match, as ACRN's template finds it
    (`grep -r` of each in /sys/class/input/event*/device/{name,phys}: a regular-expression search; of
    several matches the last in the shell's glob order wins, as in the template's loop)."""
    def matches(pattern: str, text: str) -> bool:
        try:
            return re.search(pattern, text) is not None
        except re.error:
            return pattern in text

    found = None
    for event in sorted(Path(sysfs, "class/input").glob("event*"), key=lambda p: p.name):
        try:
            dev_name = (event / "device/name").read_text()
            dev_phys = (event / "device/phys").read_text()
        except OSError:
            continue
        if matches(name, dev_name) and matches(phys, dev_phys) and (n := re.search(r"event(\d+)", event.name)):
            found = f"/dev/input/event{n.group(1)}"
    return found


def resolve_argv_word(word: str, sysfs: str | Path = "/sys") -> str | None:
    """`word` with a by-name evdev resolved; None when no evdev matches (the device is left out)."""
    named = BY_NAME_RE.search(word)
    if not named:
        return word
    node = resolve_event(unquote(named.group(1)), unquote(named.group(2)), sysfs)
    return None if node is None else word[:named.start()] + node + word[named.end():]
