"""virtio-gpio (virtio 1.2 section 5.17): named lines the guest drives or senses, with interrupts on the eventq.

Queue 0 (requestq) carries request/response pairs: GET_NAMES, GET/SET_DIRECTION, GET/SET_VALUE, SET_IRQ_TYPE.
Queue 1 (eventq, with VIRTIO_GPIO_F_IRQ) holds one buffer per line whose interrupt the guest has unmasked; the
device keeps it until the interrupt fires (status VALID) or is disabled (status INVALID).  As the spec says, an
edge is latched while the line is masked (no buffer) and delivered when a buffer arrives; a level interrupt is
never latched, only re-checked when a buffer arrives.

A line is either *simulated* (the host drives its input level and observes its output through the control
socket: ``acrnmgr gpio get|set``) or a *host line* of a ``/dev/gpiochipN`` (the GPIO character device, v2 uAPI,
as acrn-dm's virtio-gpio passes host lines through).  ``direction`` in a line's config fixes who drives it:
``in`` the host (the guest may only read it), ``out`` the guest (the host may only observe it); without it the
guest chooses.

Layers: :class:`GpioCore` is the message state machine (no rings, no fds: requests in, responses and eventq
completions out); :class:`GpioDevice` wires it to the two virtqueues, the control socket and the host lines.
Everything from the guest is hostile: a chain without a request or response buffer breaks its queue (NEEDS_RESET);
a bad type, line number, direction, value or IRQ type is answered with VIRTIO_GPIO_STATUS_ERR.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import features as F
from .device import IoCallback, RingAccess, VirtioDevice
from .logs import get_logger
from .memory import GuestMemory
from .control import ControlSocket
from .stream import copy_into, gather
from .virtqueue import DescriptorChain, VirtQueue

log = get_logger(__name__)

REQUESTQ, EVENTQ = 0, 1

MSG_GET_NAMES, MSG_GET_DIRECTION, MSG_SET_DIRECTION, MSG_GET_VALUE, MSG_SET_VALUE, MSG_SET_IRQ_TYPE = range(1, 7)
STATUS_OK, STATUS_ERR = 0, 1
DIR_NONE, DIR_OUT, DIR_IN = 0, 1, 2
IRQ_NONE, IRQ_EDGE_RISING, IRQ_EDGE_FALLING, IRQ_EDGE_BOTH, IRQ_LEVEL_HIGH, IRQ_LEVEL_LOW = 0, 1, 2, 3, 4, 8
IRQ_TYPES = (IRQ_NONE, IRQ_EDGE_RISING, IRQ_EDGE_FALLING, IRQ_EDGE_BOTH, IRQ_LEVEL_HIGH, IRQ_LEVEL_LOW)
IRQ_STATUS_INVALID, IRQ_STATUS_VALID = 0, 1

DIRECTION_NAMES = {DIR_NONE: "none", DIR_OUT: "out", DIR_IN: "in"}
IRQ_NAMES = {IRQ_NONE: "none", IRQ_EDGE_RISING: "edge-rising", IRQ_EDGE_FALLING: "edge-falling",
             IRQ_EDGE_BOTH: "edge-both", IRQ_LEVEL_HIGH: "level-high", IRQ_LEVEL_LOW: "level-low"}

REQUEST = struct.Struct("<HHI")  # type, gpio, value
IRQ_REQUEST = struct.Struct("<H")  # gpio
MAX_LINES = 256  # bounded; acrn-dm's virtio-gpio has at most 64
MAX_NAME = 31  # acrn-dm's vname[32]
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,30}\Z")  # 7-bit ASCII, as the spec asks; no acrn-dm separator


@dataclass(frozen=True)
class LineConfig:
    """One line as the spec declares it: ``direction`` in (the host drives it), out (the guest drives it) or
    None (the guest chooses); ``initial`` the level the line starts at; ``host`` a host line ("gpiochip0:17").
    A host line's ``name`` may be empty: the guest then sees the host line's own name, as under acrn-dm."""

    name: str
    direction: str | None = None
    initial: int = 0
    host: str | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name) and not (self.name == "" and self.host):
            raise ValueError(f"line name {self.name!r}: 1-{MAX_NAME} ASCII letters, digits, '_.+-', first a letter")
        if self.direction not in (None, "in", "out"):
            raise ValueError(f"line {self.name}: direction {self.direction!r} is not in or out")
        if self.initial not in (0, 1):
            raise ValueError(f"line {self.name}: initial {self.initial!r} is not 0 or 1")


def parse_line_arg(text: str) -> LineConfig:
    """``NAME[:in|out][=0|1][@gpiochipN:LINE]``: the form of ``devmodel serve --device gpio --line``."""
    host = None
    if "@" in text:
        text, host = text.split("@", 1)
        parse_host_line(host)
    initial = 0
    if "=" in text:
        text, value = text.split("=", 1)
        if value not in ("0", "1"):
            raise ValueError(f"initial value {value!r} is not 0 or 1")
        initial = int(value)
    direction = None
    if ":" in text:
        text, direction = text.split(":", 1)
    return LineConfig(text, direction, initial, host)


_HOST_LINE = re.compile(r"(gpiochip[0-9]{1,4}):([0-9]{1,5}|[A-Za-z][A-Za-z0-9_.+-]{0,30})\Z")


def parse_host_line(text: str) -> tuple[str, int | str]:
    """``gpiochipN:OFFSET`` or ``gpiochipN:LINE_NAME`` -> (chip, offset or name)."""
    m = _HOST_LINE.match(text)
    if m is None:
        raise ValueError(f"host line {text!r} is not gpiochipN:OFFSET or gpiochipN:NAME")
    line = m.group(2)
    return m.group(1), int(line) if line.isdigit() else line


class LineError(Exception):
    """A host request about a line that cannot be carried out (the message says why)."""


# -- host lines: the GPIO character device, v2 uAPI (linux/gpio.h) ---------------------------------------------
def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (0xB4 << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (0xB4 << 8) | nr


CHIP_INFO = struct.Struct("32s32sI")  # struct gpiochip_info
LINE_INFO = struct.Struct("32s32sIIQ160s16s")  # struct gpio_v2_line_info (attrs[10], padding[4])
LINE_CONFIG = struct.Struct("QI20s240s")  # struct gpio_v2_line_config: flags, num_attrs, padding[5], attrs[10]
LINE_REQUEST = struct.Struct("256s32s272sII20si")  # struct gpio_v2_line_request
LINE_VALUES = struct.Struct("QQ")  # struct gpio_v2_line_values: bits, mask
LINE_EVENT = struct.Struct("QIIII24s")  # struct gpio_v2_line_event
GPIO_GET_CHIPINFO_IOCTL = _ior(0x01, CHIP_INFO.size)
GPIO_V2_GET_LINEINFO_IOCTL = _iowr(0x05, LINE_INFO.size)
GPIO_V2_GET_LINE_IOCTL = _iowr(0x07, LINE_REQUEST.size)
GPIO_V2_LINE_SET_CONFIG_IOCTL = _iowr(0x0D, LINE_CONFIG.size)
GPIO_V2_LINE_GET_VALUES_IOCTL = _iowr(0x0E, LINE_VALUES.size)
GPIO_V2_LINE_SET_VALUES_IOCTL = _iowr(0x0F, LINE_VALUES.size)
FLAG_INPUT, FLAG_OUTPUT, FLAG_EDGE_RISING, FLAG_EDGE_FALLING = 1 << 2, 1 << 3, 1 << 4, 1 << 5
ATTR_ID_OUTPUT_VALUES = 2
EVENT_RISING_EDGE, EVENT_FALLING_EDGE = 1, 2
MAX_CHIP_LINES = 4096  # a name lookup walks at most this many lines
CONSUMER = b"acrnmgr"


def _line_config(flags: int, output: int | None) -> bytes:
    attrs = b""
    num = 0
    if output is not None:  # one attribute: the output value of line 0 of the request
        attrs = struct.pack("IIQQ", ATTR_ID_OUTPUT_VALUES, 0, output & 1, 1)
        num = 1
    return LINE_CONFIG.pack(flags, num, b"", attrs)


class HostLine:
    """One line of a host GPIO chip, requested through the v2 uAPI (like acrn-dm, which holds the lines it
    passes through from start to stop).  ``fd`` is the line request; with edge detection on it is readable
    when an edge arrived."""

    def __init__(self, spec: str) -> None:
        chip, line = parse_host_line(spec)
        self.spec = spec
        path = f"/dev/{chip}"
        self._chip = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            if not stat.S_ISCHR(os.fstat(self._chip).st_mode):
                raise OSError(errno.ENODEV, f"{path} is not a GPIO character device")
            info = bytearray(CHIP_INFO.size)
            fcntl.ioctl(self._chip, GPIO_GET_CHIPINFO_IOCTL, info)
            nlines = CHIP_INFO.unpack(info)[2]
            self.offset = self._find(line, nlines, path)
            self.name = self._line_name(self.offset)
            self.fd = -1
            self._request(0, None)  # as is: hold the line from start to stop, as acrn-dm does
        except BaseException:
            os.close(self._chip)
            raise

    def _find(self, line: int | str, nlines: int, path: str) -> int:
        if isinstance(line, int):
            if line >= nlines:
                raise OSError(errno.ENOENT, f"{path} has {nlines} lines; there is no line {line}")
            return line
        for offset in range(min(nlines, MAX_CHIP_LINES)):
            if self._line_name(offset) == line:
                return offset
        raise OSError(errno.ENOENT, f"{path} has no line named {line!r}")

    def _line_name(self, offset: int) -> str:
        """The kernel's name of line ``offset`` ("" when it has none the guest could be given)."""
        info = bytearray(LINE_INFO.size)
        struct.pack_into("I", info, 64, offset)
        fcntl.ioctl(self._chip, GPIO_V2_GET_LINEINFO_IOCTL, info)
        name = LINE_INFO.unpack(info)[0].split(b"\0", 1)[0].decode("ascii", "replace")
        return name if NAME_RE.match(name) else ""

    def _request(self, flags: int, output: int | None) -> None:
        offsets = struct.pack("I", self.offset)
        req = bytearray(LINE_REQUEST.pack(offsets, CONSUMER, _line_config(flags, output), 1, 0, b"", 0))
        fcntl.ioctl(self._chip, GPIO_V2_GET_LINE_IOCTL, req)
        fd = LINE_REQUEST.unpack(req)[6]
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self.fd = fd

    def configure(self, direction: int, value: int, edges: bool) -> None:
        """Apply the guest's direction (and output value); edges: report both edges of an input."""
        if direction == DIR_OUT:
            flags, output = FLAG_OUTPUT, value
        elif direction == DIR_IN:
            flags, output = FLAG_INPUT | ((FLAG_EDGE_RISING | FLAG_EDGE_FALLING) if edges else 0), None
        else:
            flags, output = FLAG_INPUT, None  # released by the guest: a safe input
        # SET_CONFIG changes direction and edge detection of the request we hold: the line is never let go (no
        # other process can take it in between, as with acrn-dm's close and request again), and the request
        # fd, which the device polls for edges, stays the same.
        fcntl.ioctl(self.fd, GPIO_V2_LINE_SET_CONFIG_IOCTL, bytearray(_line_config(flags, output)))

    def get(self) -> int:
        values = bytearray(LINE_VALUES.pack(0, 1))
        fcntl.ioctl(self.fd, GPIO_V2_LINE_GET_VALUES_IOCTL, values)
        return int(LINE_VALUES.unpack(values)[0]) & 1

    def set(self, value: int) -> None:
        fcntl.ioctl(self.fd, GPIO_V2_LINE_SET_VALUES_IOCTL, bytearray(LINE_VALUES.pack(value & 1, 1)))

    def read_events(self) -> list[int]:
        """The levels the edges read now leave the line at (1 after rising, 0 after falling), oldest first."""
        levels = []
        for _ in range(64):  # bounded per wake-up; the fd stays readable if more wait
            try:
                data = os.read(self.fd, LINE_EVENT.size * 16)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            for off in range(0, len(data) - LINE_EVENT.size + 1, LINE_EVENT.size):
                event_id = LINE_EVENT.unpack_from(data, off)[1]
                if event_id in (EVENT_RISING_EDGE, EVENT_FALLING_EDGE):
                    levels.append(1 if event_id == EVENT_RISING_EDGE else 0)
        return levels

    def close(self) -> None:
        for fd in (self.fd, self._chip):
            if fd >= 0:
                os.close(fd)
        self.fd = self._chip = -1


# -- the message state machine ------------------------------------------------------------------------------
class Line:
    """A line's state: the config, what the guest set, what the host drives, and its interrupt."""

    __slots__ = ("config", "direction", "held", "host", "irq", "latched", "level", "name", "out_value")

    def __init__(self, config: LineConfig, host: HostLine | None) -> None:
        self.config = config
        self.host = host
        self.name = config.name or (host.name if host is not None else "")  # what the guest and the host see
        self.level = config.initial  # the input level the host drives (simulated lines)
        self.held: int | None = None  # the eventq buffer (its head) the guest queued to unmask the interrupt
        self.reset()

    def reset(self) -> None:
        fixed = self.config.direction
        self.direction = DIR_IN if fixed == "in" else DIR_OUT if fixed == "out" else DIR_NONE
        self.out_value = self.config.initial
        self.irq = IRQ_NONE
        self.latched = False
        self.held = None


class GpioCore:
    """The virtio-gpio message state machine over the lines: no rings and no fds.

    ``request`` answers one requestq message; ``event_buffer`` takes one eventq buffer; ``host_set`` and
    ``host_levels`` take input levels from the host.  Completions of held eventq buffers accumulate in ``due``
    as (head, status) for the device to push to the eventq."""

    def __init__(self, lines: Sequence[Line]) -> None:
        if not 1 <= len(lines) <= MAX_LINES:
            raise ValueError(f"virtio-gpio needs 1 to {MAX_LINES} lines, not {len(lines)}")
        given = [ln.config.name for ln in lines if ln.config.name]
        if len(set(given)) != len(given):
            raise ValueError("line names must be unique")
        seen: set[str] = set(given)
        for ln in lines:  # a host line's own name, unless another line has it: the spec says names are unique
            if not ln.config.name and ln.name:
                if ln.name in seen:
                    log.warning("virtio-gpio: host line %s is named %s like another line; the guest sees it "
                                "without a name", ln.config.host, ln.name)
                    ln.name = ""
                seen.add(ln.name)
        names = [ln.name for ln in lines]
        self.lines = list(lines)
        self.names = b"".join(n.encode("ascii") + b"\0" for n in names)
        self.irq_enabled = False  # VIRTIO_GPIO_F_IRQ negotiated
        self.due: list[tuple[int, int]] = []

    def reset(self) -> None:
        for line in self.lines:
            line.reset()
            if line.host is not None:
                self.apply_host(line)
        self.due.clear()

    def forget_buffers(self) -> None:
        """The eventq is a new ring: the buffers held from the old one must never be completed into it."""
        for line in self.lines:
            line.held = None
        self.due.clear()

    # -- requestq -------------------------------------------------------------------------------------------
    def request(self, msg_type: int, gpio: int, value: int) -> tuple[int, bytes]:
        """(status, response value bytes) for one message; the value is 1 byte, or the names for GET_NAMES."""
        if msg_type == MSG_GET_NAMES:
            return (STATUS_OK, self.names) if gpio == 0 and value == 0 else (STATUS_ERR, bytes(len(self.names)))
        if gpio >= len(self.lines):
            return STATUS_ERR, b"\0"
        line = self.lines[gpio]
        try:
            result = self._line_request(line, msg_type, value)
        except OSError as exc:  # a host line refused: the guest sees an error, the log says why
            log.warning("virtio-gpio: line %s (%s): %s", line.name, line.config.host, exc)
            return STATUS_ERR, b"\0"
        return (STATUS_ERR, b"\0") if result is None else (STATUS_OK, bytes([result]))

    def _line_request(self, line: Line, msg_type: int, value: int) -> int | None:
        fixed = line.config.direction
        if msg_type == MSG_GET_DIRECTION:
            return line.direction
        if msg_type == MSG_SET_DIRECTION:
            if value not in (DIR_NONE, DIR_OUT, DIR_IN):
                return None
            if (value == DIR_OUT and fixed == "in") or (value == DIR_IN and fixed == "out"):
                return None  # the spec fixes who drives this line
            if value == DIR_NONE:
                self._release(line)  # "discard all state information": the interrupt too, its buffer goes back
                line.reset()
            else:
                line.direction = value
            if value == DIR_OUT and line.irq != IRQ_NONE:
                self._disable_irq(line)
            if line.host is not None:
                self.apply_host(line)
            return 0
        if msg_type == MSG_GET_VALUE:
            return self.level(line)
        if msg_type == MSG_SET_VALUE:
            if value not in (0, 1) or fixed == "in":
                return None
            line.out_value = value
            if line.host is not None and line.direction == DIR_OUT:
                line.host.set(value)
            return 0
        if msg_type == MSG_SET_IRQ_TYPE:
            if not self.irq_enabled or value not in IRQ_TYPES:
                return None
            if value == IRQ_NONE:
                self._disable_irq(line)
                return 0
            if line.direction == DIR_OUT:
                return None  # "the driver MUST NOT send IRQ messages for a GPIO line configured for output"
            line.irq = value
            line.latched = False
            if line.host is not None:
                self.apply_host(line)
            self._check_level(line)
            return 0
        return None

    def _disable_irq(self, line: Line) -> None:
        line.irq = IRQ_NONE
        line.latched = False
        self._release(line)
        if line.host is not None:
            self.apply_host(line)

    def _release(self, line: Line) -> None:
        """Give the line's held eventq buffer back, INVALID (the interrupt was disabled)."""
        if line.held is not None:
            self.due.append((line.held, IRQ_STATUS_INVALID))
            line.held = None

    @staticmethod
    def apply_host(line: Line) -> None:
        """Carry the guest's view of a host line (direction, output value, edge detection) to the kernel."""
        assert line.host is not None
        line.host.configure(line.direction, line.out_value, line.irq != IRQ_NONE)
        if line.direction != DIR_OUT:
            line.level = line.host.get()

    def level(self, line: Line) -> int:
        """The level on the line now: what the guest drives on an output, else what the host drives."""
        if line.direction == DIR_OUT:
            return line.out_value
        if line.host is not None:
            line.level = line.host.get()
        return line.level

    # -- eventq ---------------------------------------------------------------------------------------------
    def event_buffer(self, gpio: int, head: int) -> int | None:
        """The guest unmasks ``gpio``'s interrupt with the eventq buffer ``head``: the status to return it with
        now, or None when the device holds it until the interrupt fires."""
        if gpio >= len(self.lines):
            return IRQ_STATUS_INVALID
        line = self.lines[gpio]
        if line.irq == IRQ_NONE or line.held is not None:
            # Not enabled (the spec: return it INVALID), or a second buffer for one line, which the driver must
            # not queue: returned at once rather than held, so the device never holds more than one per line.
            return IRQ_STATUS_INVALID
        if line.latched or self._level_active(line):
            line.latched = False
            return IRQ_STATUS_VALID
        line.held = head
        return None

    def _level_active(self, line: Line) -> bool:
        return ((line.irq == IRQ_LEVEL_HIGH and line.level == 1)
                or (line.irq == IRQ_LEVEL_LOW and line.level == 0))

    def _check_level(self, line: Line) -> None:
        if line.held is not None and self._level_active(line):
            self.due.append((line.held, IRQ_STATUS_VALID))
            line.held = None

    def input_changed(self, line: Line, level: int) -> None:
        """The input level of ``line`` is now ``level``: fire or latch its interrupt as its type says."""
        old, line.level = line.level, level
        if line.irq == IRQ_NONE or line.direction == DIR_OUT:
            return
        if line.irq & IRQ_EDGE_BOTH and old != level:
            if (level and line.irq & IRQ_EDGE_RISING) or (not level and line.irq & IRQ_EDGE_FALLING):
                if line.held is not None:
                    self.due.append((line.held, IRQ_STATUS_VALID))
                    line.held = None
                else:
                    line.latched = True  # masked: delivered when the guest queues the buffer again
            return
        self._check_level(line)

    # -- the host's side ------------------------------------------------------------------------------------
    def find(self, name: str) -> Line:
        for line in self.lines:
            if line.name and line.name == name:
                return line
        raise LineError(f"no line named {name!r} (lines: {', '.join(ln.name for ln in self.lines if ln.name)})")

    def host_set(self, name: str, value: int) -> None:
        """The host drives simulated input ``name`` to ``value``."""
        if value not in (0, 1):
            raise LineError(f"value {value!r} is not 0 or 1")
        line = self.find(name)
        if line.host is not None:
            raise LineError(f"line {name} is the host's {line.config.host}; drive that line on the host instead")
        if line.config.direction == "out":
            raise LineError(f"line {name} is an output the guest drives (direction: out); the host can only read it")
        if line.direction == DIR_OUT:
            raise LineError(f"line {name} is set as an output by the guest; the host can drive it only while the "
                            "guest uses it as an input or not at all")
        self.input_changed(line, value)

    def describe(self, line: Line) -> dict[str, Any]:
        index = self.lines.index(line)
        fixed = line.config.direction
        try:
            value: int | None = self.level(line)
        except OSError:
            value = None
        return {"name": line.name, "index": index, "direction": DIRECTION_NAMES[line.direction],
                "value": value, "drivenBy": "guest" if line.direction == DIR_OUT else "host",
                "fixedDirection": fixed, "irq": IRQ_NAMES.get(line.irq, str(line.irq)),
                "source": line.config.host or "simulated"}

    def control(self, request: Any) -> dict[str, Any]:
        """One control-socket request (a decoded JSON object) -> its answer."""
        if not isinstance(request, dict) or request.get("op") not in ("get", "set"):
            return {"ok": False, "error": "a request is {\"op\": \"get\"|\"set\", \"line\": NAME, \"value\": 0|1}"}
        try:
            name = request.get("line")
            if name is not None and not isinstance(name, str):
                raise LineError("line must be a name")
            if request["op"] == "set":
                if name is None:
                    raise LineError("set needs a line")
                value = request.get("value")
                if type(value) is not int:
                    raise LineError(f"value {value!r} is not 0 or 1")
                self.host_set(name, value)
            lines = [self.find(name)] if name is not None else self.lines
            return {"ok": True, "interrupts": self.irq_enabled, "lines": [self.describe(line) for line in lines]}
        except LineError as exc:
            return {"ok": False, "error": str(exc)}


# -- the device ---------------------------------------------------------------------------------------------
class GpioDevice(VirtioDevice):
    device_id = F.ID_GPIO
    name = "virtio-gpio"
    num_queues = 2

    def __init__(self, lines: Sequence[LineConfig], control_path: str | None = None,
                 max_queue_size: int = 256) -> None:
        super().__init__()
        self.max_queue_size = max_queue_size
        self._ep = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wake, select.EPOLLIN)
        built: list[Line] = []
        self.control: ControlSocket | None = None
        try:
            for cfg in lines:
                built.append(Line(cfg, HostLine(cfg.host) if cfg.host else None))
            self.core = GpioCore(built)
            for line in built:  # a host line starts as it is (as under acrn-dm), unless the spec fixes it
                if line.host is not None and line.config.direction is not None:
                    self.core.apply_host(line)
            if control_path is not None:
                self.control = ControlSocket(control_path, self.core.control)
                self._ep.register(self.control.fileno(), select.EPOLLIN)
        except BaseException:
            for line in built:
                if line.host is not None:
                    line.host.close()
            self._ep.close()
            os.close(self._wake)
            raise
        self._by_fd: dict[int, Line] = {}
        for line in built:  # edges arrive on the request fd, held from start to stop
            if line.host is not None:
                self._ep.register(line.host.fd, select.EPOLLIN)
                self._by_fd[line.host.fd] = line

    # -- virtio ---------------------------------------------------------------------------------------------
    def _type_features(self) -> int:
        return F.mask(F.GPIO_F_IRQ)

    def attach_queue(self, qidx: int, vq: VirtQueue) -> None:
        if qidx == EVENTQ and self.queues.get(EVENTQ) not in (None, vq):
            # A ring set up anew (the front-end restarted it): held heads index the old ring's table.  The
            # guest's unmask buffers are lost with it; pushing them into the new ring would corrupt it.
            if any(line.held is not None for line in self.core.lines):
                log.info("virtio-gpio: the eventq was set up again; the interrupt buffers held are dropped")
            self.core.forget_buffers()
        super().attach_queue(qidx, vq)

    def _features_changed(self) -> None:
        self.core.irq_enabled = F.has(self.driver_features, F.GPIO_F_IRQ)

    def config_space(self) -> bytes:
        return struct.pack("<HxxI", len(self.core.lines), len(self.core.names))

    def process_queue(self, qidx: int, vq: VirtQueue, mem: GuestMemory) -> bool:
        if not self._attached(qidx, vq):
            return False
        if qidx == REQUESTQ:
            notify = self._drain(vq, mem, self._handle_request)
            self._after_change()
            return notify
        return self._drain_events(vq, mem)

    def _handle_request(self, vq: VirtQueue, chain: DescriptorChain) -> int:
        if chain.readable_len < REQUEST.size or chain.writable_len < 1:
            vq.mark_broken(f"virtio-gpio request without request or response buffer (head {chain.head})")
            return 0
        msg_type, gpio, value = REQUEST.unpack(gather(chain.readable, REQUEST.size))
        status, data = self.core.request(msg_type, gpio, value)
        if msg_type != MSG_GET_NAMES and chain.writable_len < 2:
            status, data = STATUS_ERR, b""
        elif msg_type == MSG_GET_NAMES and chain.writable_len < 1 + len(data):
            status, data = STATUS_ERR, b""  # the driver sizes this buffer from gpio_names_size
        return copy_into(chain.writable, bytes([status]) + data)

    def _handle_event(self, vq: VirtQueue, chain: DescriptorChain) -> int | None:
        if chain.readable_len < IRQ_REQUEST.size or chain.writable_len < 1:
            vq.mark_broken(f"virtio-gpio eventq buffer without request or response (head {chain.head})")
            return 0
        (gpio,) = IRQ_REQUEST.unpack(gather(chain.readable, IRQ_REQUEST.size))
        status = self.core.event_buffer(gpio, chain.head)
        if status is None:
            return None  # held until the interrupt fires or is disabled
        return copy_into(chain.writable, bytes([status]))

    def _drain_events(self, vq: VirtQueue, mem: GuestMemory) -> bool:
        """Take every eventq buffer: return it now (INVALID, or VALID for a latched edge or an active level), or
        hold it until its line's interrupt fires; then return the buffers that came due."""
        try:
            while True:
                vq.disable_notification(mem)
                while (chain := vq.pop(mem)) is not None:
                    written = self._handle_event(vq, chain)
                    if written is not None:
                        vq.push(mem, chain.head, written)
                vq.flush_used(mem)
                if not vq.enable_notification(mem):
                    break
        except Exception as e:  # a device bug must not take the server down
            self._device_bug(vq, mem, e)
        return self._flush_due(vq, mem) | vq.should_notify(mem)

    def _flush_due(self, vq: VirtQueue, mem: GuestMemory) -> bool:
        """Return the eventq buffers whose interrupt fired or was disabled."""
        if not self.core.due:
            return False
        due, self.core.due = self.core.due, []
        for head, status in due:
            chain = vq.chain(mem, head)
            if chain is None:
                return False  # the queue broke
            if chain.writable_len < 1:
                vq.mark_broken(f"virtio-gpio eventq buffer {head} changed while the device held it")
                return False
            vq.push(mem, head, copy_into(chain.writable, bytes([status])))
        vq.flush_used(mem)
        return vq.should_notify(mem)

    def _after_change(self) -> None:
        """Eventq completions came due outside the eventq's own processing: wake the io callback to push them."""
        if self.core.due:
            os.eventfd_write(self._wake, 1)

    # -- host side ------------------------------------------------------------------------------------------
    def host_sources(self) -> list[tuple[int, IoCallback]]:
        return [(self._ep.fileno(), self._on_io)]

    def _on_io(self, rings: RingAccess) -> list[int]:
        for fd, _ev in self._ep.poll(0):
            if fd == self._wake:
                try:
                    os.eventfd_read(self._wake)
                except BlockingIOError:
                    pass
            elif self.control is not None and fd == self.control.fileno():
                self.control.serve()
            elif (line := self._by_fd.get(fd)) is not None and line.host is not None:
                for level in line.host.read_events():
                    self.core.input_changed(line, level)
        ring = rings.ring(EVENTQ)
        if ring is not None and self._flush_due(*ring):
            return [EVENTQ]
        return []

    def reset(self) -> None:
        super().reset()
        try:
            self.core.reset()
        except OSError as exc:
            log.warning("virtio-gpio: resetting a host line: %s", exc)

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        for line in self.core.lines:
            if line.host is not None:
                line.host.close()
        self._ep.close()
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
