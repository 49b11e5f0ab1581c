"""virtio-gpio: named GPIO lines: acrn-dm's own virtio-gpio over host GPIO chips, or the embedded device model.

The spec names the lines in the order the guest numbers them: ``lines: [{name, direction, initial, host}]``.
A line with ``host: gpiochipN:OFFSET|NAME`` is a line of a host GPIO chip; one without is *simulated*: the
host drives and reads it with ``acrnmgr gpio``.  ``args`` (acrn-dm's own config string) is still accepted.

acrn-dm's form is ``@gpiochipN{id[=vname]:id[=vname]:...}@gpiochipM{...}`` (devicemodel/hw/pci/virtio/
virtio_gpio.c, native_gpio_init): ``id`` a line offset (decimal) or the host line's name (first character a
letter), ``vname`` the name the guest sees (else the host line's own).  acrn-dm passes host lines only, at most
64 lines of 8 chip groups, one virtio-gpio per VM; it is legacy-only, an ACRN-private device (Intel 0x8086:0x8609)
with its own protocol.  On the qemu engine the embedded device model serves the standard virtio 1.2 GPIO device
(device 41, Linux's gpio-virtio) over QEMU's vhost-user-gpio-pci: the guest sees the same lines, in the same
order, with the same names, through the standard driver.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import (
    AcrnArgs,
    CheckContext,
    Choice,
    GrammarError,
    QemuArgs,
    SlotDevice,
    VirtioDevice,
)
from acrnmgr.host import HostProfile
from acrnmgr.model import JsonPath, common_fields
from acrnmgr.spec.diagnostics import format_path

ACRN_MAX_LINES = 64  # acrn-dm's VIRTIO_GPIO_MAX_VLINES
ACRN_MAX_CHIPS = 8  # VIRTIO_GPIO_MAX_CHIPS
ACRN_NAME_MAX = 31  # vname[32]
CONTROL_SUFFIX = ".gpio.sock"  # acrnmgr/cli/gpio.py finds a VM's virtio-gpio by it
IRQ_QEMU = (9, 0)  # the first QEMU whose vhost-user-gpio-pci passes VIRTIO_GPIO_F_IRQ on (vhost-user-base)
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,30}\Z")
_HOST = re.compile(r"(gpiochip[0-9]{1,4}):([0-9]{1,5}|[A-Za-z][A-Za-z0-9_.+-]{0,30})\Z")


@dataclass(frozen=True)
class GpioLine:
    name: str | None
    direction: str | None = None  # in: the host drives it; out: the guest does; None: the guest chooses
    initial: int = 0
    host: str | None = None  # gpiochipN:OFFSET|NAME

    @property
    def chip(self) -> str | None:
        return self.host.split(":", 1)[0] if self.host else None

    @property
    def host_id(self) -> str | None:
        return self.host.split(":", 1)[1] if self.host else None

    def to_spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.direction is not None:
            out["direction"] = self.direction
        if self.initial:
            out["initial"] = self.initial
        if self.host is not None:
            out["host"] = self.host
        return out

    def serve_arg(self) -> str:
        """The line as ``acrnmgr devmodel serve --device gpio --line`` takes it."""
        text = self.name or ""
        if self.direction:
            text += f":{self.direction}"
        if self.initial:
            text += f"={self.initial}"
        if self.host:
            text += f"@{self.host}"
        return text


@dataclass(frozen=True)
class VirtioGpio(VirtioDevice):
    KIND: ClassVar[str] = "virtio-gpio"
    EMBEDDED: ClassVar[bool] = True
    QEMU_VHOST_USER: ClassVar[bool] = True

    lines: tuple[GpioLine, ...] = ()
    args: str | None = None  # acrn-dm's config string, as the spec gave it
    args_error: str | None = None  # why `args` has no line form (the qemu engine then refuses it)

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioGpio:
        fields = common_fields(index, raw)
        if "args" in raw:
            try:
                lines = tuple(GpioLine(*ln) for ln in parse_config(raw["args"])["lines"])
                return cls(**fields, lines=lines, args=raw["args"])
            except GrammarError as exc:
                return cls(**fields, args=raw["args"], args_error=str(exc))
        lines = tuple(GpioLine(ln.get("name"), ln.get("direction"), ln.get("initial", 0), ln.get("host"))
                      for ln in raw.get("lines") or ())
        return cls(**fields, lines=lines)

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        super().check_spec(ctx, spec, items)
        if len(items) > 1:
            first = items[0][0]
            for path, _dev in items[1:]:
                ctx.error(path, f"a VM has one virtio-gpio controller ({format_path(first)} is it, {ctx.where(first)})",
                          "put every line into the `lines` of that one device (acrn-dm serves one per VM)")
        for path, dev in items:
            if ("lines" in dev) == ("args" in dev):
                ctx.error(path, "virtio-gpio needs its lines: give `lines` (or acrn-dm's `args`), not both"
                          if "lines" in dev else "virtio-gpio needs `lines` (or acrn-dm's `args`)",
                          "lines: [{name: button, direction: in}, {name: led, host: 'gpiochip0:17'}]")
            if "args" in dev and isinstance(dev["args"], str):
                try:
                    parse_config(dev["args"])
                except GrammarError as exc:
                    ctx.error((*path, "args"), str(exc), "write the lines as `lines:` instead, "
                              "e.g. lines: [{name: led, host: 'gpiochip0:17'}]")
            names: dict[str, int] = {}
            hosts: dict[str, int] = {}
            for i, line in enumerate(dev.get("lines") or ()):
                if not isinstance(line, dict):
                    continue
                lpath = (*path, "lines", i)
                name, host = line.get("name"), line.get("host")
                if name is None and host is None:
                    ctx.error(lpath, "a simulated line needs a `name` (the guest and `acrnmgr gpio` know it by "
                              "that)", "add `name: ...`, or `host: gpiochipN:LINE` for a host line")
                if isinstance(name, str):
                    if name in names:
                        ctx.error((*lpath, "name"), f"line name `{name}` is already lines[{names[name]}]'s",
                                  "line names must be unique in the device (the virtio spec asks it)")
                    names.setdefault(name, i)
                if isinstance(host, str):
                    if host in hosts:
                        ctx.error((*lpath, "host"), f"host line {host} is already lines[{hosts[host]}]",
                                  "a host line can be given to the guest once")
                    hosts.setdefault(host, i)

    # -- acrn-dm ---------------------------------------------------------------------------------------------
    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        params = dev.params
        for note in params.get("ignored", ()):
            warnings.append(f"-s {dev.bdf},virtio-gpio: {note}")
        lines = [GpioLine(*ln).to_spec() for ln in params["lines"]]
        return {"type": cls.KIND, "lines": lines}

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        if self.args is not None:
            return self.args
        where = (*self.where, "lines")
        simulated = [i for i, ln in enumerate(self.lines) if ln.host is None]
        for i in simulated:
            ctx.diags.error((*where, i), f"line {self.lines[i].name} is simulated; acrn-dm's virtio-gpio passes "
                            "host GPIO lines only", "give it `host: gpiochipN:LINE`, or run the VM on the qemu "
                            "engine (the embedded device model simulates it)")
        if simulated:
            return ""
        for i, ln in enumerate(self.lines):
            if ln.direction is not None or ln.initial:
                key = "direction" if ln.direction is not None else "initial"
                ctx.diags.warn((*where, i, key), f"acrn-dm has no `{key}` for a line: it leaves a host line as it "
                               "is until the guest sets it (the embedded device model applies it)",
                               f"drop `{key}` for acrn-dm")
        if len(self.lines) > ACRN_MAX_LINES:
            ctx.diags.error(where, f"acrn-dm's virtio-gpio takes at most {ACRN_MAX_LINES} lines and drops the "
                            "rest", f"keep {ACRN_MAX_LINES} lines or fewer")
        groups: list[tuple[str, list[str]]] = []
        for ln in self.lines:
            word = ln.host_id or ""
            if ln.name is not None and ln.name != ln.host_id:
                word += f"={ln.name}"
            if groups and groups[-1][0] == ln.chip:
                groups[-1][1].append(word)
            else:
                groups.append((ln.chip or "", [word]))
        if len(groups) > ACRN_MAX_CHIPS:
            ctx.diags.error(where, f"acrn-dm's virtio-gpio takes lines of at most {ACRN_MAX_CHIPS} chip groups (a "
                            "group is a run of lines of one chip) and drops the rest",
                            "order the lines so that each chip's lines are next to each other")
        return "".join(f"@{chip}{{{':'.join(words)}}}" for chip, words in groups)

    def choose_acrn(self, host: HostProfile, family: str) -> Choice:
        choice = super().choose_acrn(host, family)
        if choice.backend == "vbs-u":
            return Choice("vbs-u", "acrn-dm's own virtio-gpio over host GPIO chips (VBS-U, legacy; ACRN's device "
                          "8086:8609, for ACRN's guest driver)")
        return choice

    # -- QEMU ------------------------------------------------------------------------------------------------
    def choose_qemu(self, host: HostProfile) -> Choice:
        if self.mode in ("legacy", "transitional"):
            return Choice(None, "", f"QEMU's vhost-user-gpio-pci is modern-only; it cannot give mode: {self.mode}",
                          "drop `mode` (or set it to modern)")
        if self.backend in ("vbs-u", "vhost"):
            return Choice(None, "", f"QEMU has no virtio-gpio of its own (backend: {self.backend}); only the "
                          "embedded device model serves it, over vhost-user-gpio-pci", "drop `backend`")
        if self.args_error is not None:
            return Choice(None, "", f"args {self.args!r}: {self.args_error}",
                          "write the lines as `lines:`")
        return Choice("embedded", "acrn-dm's virtio-gpio is native on ACRN; on QEMU it is served by the embedded "
                      "device model over vhost-user-gpio-pci (the standard virtio 1.2 GPIO device)")

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        extra = [arg for ln in self.lines for arg in ("--line", ln.serve_arg())]
        sock = ctx.helper(self, "gpio", extra, control=control_socket_path(ctx.state_dir, self.display_name))
        self._warn_no_irq(ctx)
        ctx.vhost_user(slot, sock, "vhost-user-gpio-pci")

    def _warn_no_irq(self, ctx: QemuArgs) -> None:
        """QEMU's vhost-user-gpio-pci before 9.0 offers the guest only QEMU's own feature bits, never the
        back-end's VIRTIO_GPIO_F_IRQ (rust-vmm/vhost-device#613); from 9.0 on it is built on vhost-user-base,
        which offers what the back-end offers."""
        if ctx.qemu_version is not None and ctx.qemu_version >= IRQ_QEMU:
            return
        fix = ("run QEMU 9.0 or later (the host profile's `qemu`), poll input lines in the guest, or run the VM on "
               "acrn-dm, whose virtio-gpio has interrupts")
        if ctx.qemu_version is None:
            ctx.diags.warn(self.where, "QEMU's vhost-user-gpio-pci before 9.0 does not offer the guest "
                           "VIRTIO_GPIO_F_IRQ, and the host profile does not say which QEMU this is (`qemu_version`): "
                           "GPIO interrupts may not reach the guest", fix)
            return
        major, minor = ctx.qemu_version
        ctx.diags.warn(self.where, f"QEMU {major}.{minor}'s vhost-user-gpio-pci does not offer the guest "
                       "VIRTIO_GPIO_F_IRQ (QEMU before 9.0 never does): the lines work, GPIO interrupts do not "
                       "reach the guest", fix)


def control_socket_path(state_dir: Path, name: str) -> Path:
    """Where the embedded virtio-gpio of device ``name`` answers ``acrnmgr gpio`` (one per VM)."""
    return state_dir / f"{name}{CONTROL_SUFFIX}"


# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
def parse_config(body: str) -> dict[str, Any]:
    """acrn-dm's virtio-gpio config as native_gpio_init reads it: ``lines`` [(name, None, 0, host)] in the
    guest's order, and ``ignored``: what acrn-dm would skip without a word (said as import warnings).

    GrammarError when acrn-dm would find no line at all (virtio_gpio_init then fails and acrn-dm exits), or a
    line acrnmgr cannot carry (a name it could not pass on)."""
    lines: list[tuple[str | None, None, int, str]] = []
    ignored: list[str] = []
    chips = 0
    for segment in body.split("@"):
        if not segment:
            continue
        if chips >= ACRN_MAX_CHIPS or len(lines) >= ACRN_MAX_LINES:
            ignored.append(f"@{segment}: beyond {ACRN_MAX_CHIPS} chips or {ACRN_MAX_LINES} lines, dropped")
            continue
        chip, brace, rest = segment.partition("{")
        if not brace or not chip:
            ignored.append(f"@{segment}: no chip name or no '{{', skipped")
            continue
        if not re.fullmatch(r"gpiochip[0-9]{1,4}", chip):
            raise GrammarError(f"virtio-gpio: @{chip}: acrn-dm opens /dev/{chip}; acrnmgr takes gpiochipN chips only")
        chips += 1
        words, _, after = rest.partition("}")
        if after:
            ignored.append(f"@{segment}: {after!r} after '}}' is ignored by acrn-dm")
        for word in words.split(":"):
            if not word:
                continue
            if len(lines) >= ACRN_MAX_LINES:
                ignored.append(f"{chip} line {word}: beyond {ACRN_MAX_LINES} lines, dropped")
                continue
            ident, eq, vname = word.partition("=")
            if not (ident[:1].isdigit() and ident.isdigit()) and not (ident[:1].isalpha() and NAME.match(ident)):
                if ident[:1].isdigit() or ident[:1].isalpha():
                    raise GrammarError(f"virtio-gpio: {chip} line {ident!r} is neither an offset nor a line name "
                                       "acrnmgr can pass on")
                ignored.append(f"{chip} line {word!r}: acrn-dm finds no line by it, skipped")
                continue
            if ident.isdigit() and int(ident) > 65535:
                raise GrammarError(f"virtio-gpio: {chip} line offset {ident} is out of range")
            name = vname[:ACRN_NAME_MAX] if eq else None
            if eq and not NAME.match(name or ""):
                raise GrammarError(f"virtio-gpio: {chip} line {ident}: guest name {vname!r} is not 1-31 ASCII "
                                   "letters, digits or '_.+-' starting with a letter")
            lines.append((name, None, 0, f"{chip}:{int(ident) if ident.isdigit() else ident}"))
    if not lines:
        raise GrammarError(f"virtio-gpio: {body!r} names no GPIO line; acrn-dm's virtio-gpio fails to start "
                           "(use @gpiochipN{OFFSET[=NAME]:...})")
    return {"lines": lines, "ignored": ignored}


def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    return parse_config(body)
