"""virtio-i2c adapter (virtio 1.2 section 5.19): one request queue; simulated targets and host passthrough.

A request is one chain: ``out_hdr`` {le16 addr (7-bit address << 1), le16 padding, le32 flags} readable, then the
message buffer (readable for a write, writable for a read; absent for a zero-length request), then ``in_hdr``
{u8 status} writable.  ``VIRTIO_I2C_FLAGS_FAIL_NEXT`` groups requests into one I2C transfer (Linux's i2c-virtio
sets it on every message of a transfer but the last): requests are held until their group is complete, then run
in order, and once one fails the rest of the group fails without being attempted.  An address with no target
answers VIRTIO_I2C_MSG_ERR, as a NAK on a real bus does.  VIRTIO_I2C_F_ZERO_LENGTH_REQUEST is offered: Linux's
driver refuses an adapter without it, and QEMU 7.2's vhost-user-i2c frontend passes it through from the back-end.

Targets:

* :class:`Eeprom24c02`: 256 bytes, 8-byte pages, backed by a file; every completed write is persisted atomically
  (a temporary file, fsync, rename) before it is acknowledged, so the host file always holds what the guest was
  told it wrote, and a failed write leaves both unchanged and NAKs.
* :class:`Lm75`: a temperature sensor whose temperature the host sets through the control socket.
* :class:`HostAdapter`: the listed addresses of a host adapter ``/dev/i2c-N``, passed through with I2C_RDWR
  (one ioctl per group), as acrn-dm's virtio-i2c does.

The control socket (``control_path``) speaks one JSON object per line: ``{"target": "lm75@0x48", "get":
"temperature"}``, ``{"target": "0x48", "set": "temperature", "value": 42.5}`` or ``{"list": true}``; every reply
is one JSON line with ``"ok"``.  :func:`control_reply` is the sans-IO part; the socket around it is thin.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import math
import os
import re
import stat
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from acrnmgr.inputs import InputError, read_input

from . import features as F
from .control import NOT_AN_OBJECT, ControlSocket, decode_request
from .device import IoCallback, RingAccess, VirtioDevice
from .logs import get_logger
from .memory import GuestMemory
from .stream import gather
from .virtqueue import DescriptorChain, VirtQueue

log = get_logger(__name__)

FLAG_FAIL_NEXT = 1 << 0
FLAG_M_RD = 1 << 1
KNOWN_FLAGS = FLAG_FAIL_NEXT | FLAG_M_RD
MSG_OK, MSG_ERR = 0, 1
OUT_HDR = struct.Struct("<HHI")
MAX_MSG_LEN = 8192  # i2c-dev's limit for one message (and far beyond any EEPROM page or sensor register)
MAX_GROUP = 42  # I2C_RDWR_IOCTL_MAX_MSGS: the most messages one transfer may hold
MAX_ADDRESS = 0x7F


@dataclass(frozen=True)
class I2cMsg:
    addr: int  # 7-bit
    read: bool
    data: bytes = b""  # what a write sends
    length: int = 0  # what a read wants


# A target answers a run of messages addressed to it: per message the bytes read (b"" for a write), or None for
# a NAK/error; after the first None every later entry is None too.
Results = list["bytes | None"]


class I2cTarget(Protocol):
    kind: str

    def transfer(self, msgs: list[I2cMsg]) -> Results: ...

    def properties(self) -> dict[str, Any]: ...

    def set_property(self, name: str, value: Any) -> Any: ...

    def close(self) -> None: ...


class PropertyError(ValueError):
    """A control request names a property the target lacks, or a value it refuses."""


def _each(msgs: list[I2cMsg], one: Callable[[I2cMsg], bytes | None]) -> Results:
    out: Results = []
    for m in msgs:
        r = one(m) if not out or out[-1] is not None else None
        out.append(r)
    return out


# -- simulated targets ----------------------------------------------------------------------------------------
class Eeprom24c02:
    """A 24C02: 256 bytes, 8-byte write pages, one address pointer.

    A write message is the word address, then data written into the addressed page (the pointer wraps within the
    page, as the chip's does); a write of the address alone sets the pointer for a random read.  A read returns
    bytes from the pointer on, wrapping at the end of the array.  The backing file (at most 256 bytes; a shorter
    one reads as erased 0xFF past its end) is rewritten atomically on every data write."""

    kind = "eeprom-24c02"
    SIZE = 256
    PAGE = 8

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)  # rename onto the file, not onto a symlink to it
        try:
            data = read_input(self.path, limit=self.SIZE)
        except InputError as exc:
            raise ValueError(f"EEPROM file {path}: {exc.reason}") from None
        self.mem = bytearray(data + b"\xff" * (self.SIZE - len(data)))
        self.pointer = 0

    def transfer(self, msgs: list[I2cMsg]) -> Results:
        return _each(msgs, self._one)

    def _one(self, m: I2cMsg) -> bytes | None:
        if m.read:
            out = bytes(self.mem[(self.pointer + i) % self.SIZE] for i in range(m.length))
            self.pointer = (self.pointer + m.length) % self.SIZE
            return out
        if not m.data:
            return b""  # a zero-length write (SMBus quick): the chip ACKs its address
        self.pointer = m.data[0]
        payload = m.data[1:]
        if not payload:
            return b""
        new = bytearray(self.mem)
        page, offset = self.pointer & ~(self.PAGE - 1), self.pointer & (self.PAGE - 1)
        for b in payload:  # the address wraps within the page: past 8 bytes, earlier ones are overwritten
            new[page + offset] = b
            offset = (offset + 1) % self.PAGE
        try:
            self._persist(bytes(new))
        except OSError as exc:
            log.error("virtio-i2c: EEPROM %s: cannot save the guest's write (%s); NAKed", self.path, exc.strerror)
            return None
        self.mem = new
        self.pointer = page + offset
        return b""

    def _persist(self, data: bytes) -> None:
        folder = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".eeprom-", dir=folder)
        try:
            try:
                os.fchmod(fd, stat.S_IMODE(os.stat(self.path).st_mode))
            except FileNotFoundError:
                pass
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        try:  # the rename is done: from here on a failure costs durability, not the write
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            log.warning("virtio-i2c: EEPROM %s: cannot sync its folder: %s", self.path, exc.strerror)

    def properties(self) -> dict[str, Any]:
        return {"file": self.path, "size": self.SIZE, "pageSize": self.PAGE}

    def set_property(self, name: str, value: Any) -> Any:
        raise PropertyError(f"{self.kind} has no settable property {name!r} (the guest writes its contents)")

    def close(self) -> None:
        pass


def _lm75_register(celsius: float) -> int:
    """°C -> the LM75's 9-bit two's complement temperature, left-aligned in 16 bits (0.5 °C steps)."""
    return (round(celsius * 2) & 0x1FF) << 7


def _lm75_celsius(reg: int) -> float:
    half = reg >> 7
    return (half - 0x200 if half & 0x100 else half) / 2


class Lm75:
    """An LM75: pointer register (write's first byte), then temperature 0x00 (read-only), configuration 0x01
    (1 byte), THYST 0x02 and TOS 0x03 (2 bytes, MSB first).  A read repeats the selected register; the pointer
    does not advance.  The host sets the temperature (-55..125 °C, kept in 0.5 °C steps)."""

    kind = "lm75"
    MIN, MAX = -55.0, 125.0
    TEMP, CONF, THYST, TOS = 0, 1, 2, 3

    def __init__(self, temperature: float = 25.0) -> None:
        self.pointer = self.TEMP
        self.regs = {self.TEMP: 0, self.CONF: 0, self.THYST: _lm75_register(75.0), self.TOS: _lm75_register(80.0)}
        self.set_property("temperature", temperature)

    def transfer(self, msgs: list[I2cMsg]) -> Results:
        return _each(msgs, self._one)

    def _bytes(self, reg: int) -> bytes:
        v = self.regs[reg]
        return bytes([v]) if reg == self.CONF else v.to_bytes(2, "big")

    def _one(self, m: I2cMsg) -> bytes | None:
        if m.read:
            raw = self._bytes(self.pointer)
            return (raw * (m.length // len(raw) + 1))[:m.length]
        if not m.data:
            return b""
        if m.data[0] > self.TOS:
            return None  # the chip NAKs a pointer byte naming no register
        self.pointer = m.data[0]
        value = m.data[1:]
        if self.pointer == self.CONF and value:
            self.regs[self.CONF] = value[0]
        elif self.pointer in (self.THYST, self.TOS) and len(value) >= 2:
            self.regs[self.pointer] = int.from_bytes(value[:2], "big") & 0xFF80
        return b""

    def properties(self) -> dict[str, Any]:
        return {"temperature": _lm75_celsius(self.regs[self.TEMP]), "tos": _lm75_celsius(self.regs[self.TOS]),
                "thyst": _lm75_celsius(self.regs[self.THYST]), "config": self.regs[self.CONF]}

    def set_property(self, name: str, value: Any) -> Any:
        reg = {"temperature": self.TEMP, "tos": self.TOS, "thyst": self.THYST}.get(name)
        if reg is None:
            raise PropertyError(f"lm75 has no settable property {name!r}; settable: temperature, tos, thyst")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PropertyError(f"{name}: {value!r} is not a number of degrees Celsius")
        if not self.MIN <= value <= self.MAX:
            raise PropertyError(f"{name}: {value} °C is outside the LM75's range {self.MIN:g}..{self.MAX:g} °C")
        self.regs[reg] = _lm75_register(value)
        return _lm75_celsius(self.regs[reg])

    def close(self) -> None:
        pass


# -- host passthrough -----------------------------------------------------------------------------------------
I2C_SLAVE = 0x0703
I2C_RDWR = 0x0707
I2C_M_RD = 0x0001


class KernelI2cMsg(ctypes.Structure):
    """struct i2c_msg of <linux/i2c.h>."""

    _fields_ = [("addr", ctypes.c_uint16), ("flags", ctypes.c_uint16), ("len", ctypes.c_uint16),
                ("buf", ctypes.c_void_p)]


class KernelRdwrData(ctypes.Structure):
    """struct i2c_rdwr_ioctl_data of <linux/i2c-dev.h>."""

    _fields_ = [("msgs", ctypes.POINTER(KernelI2cMsg)), ("nmsgs", ctypes.c_uint32)]


def rdwr_request(msgs: list[I2cMsg]) -> tuple[KernelRdwrData, list[ctypes.Array[ctypes.c_char]], Any]:
    """The I2C_RDWR argument for ``msgs``, the buffers the kernel fills or reads, and the array to keep alive."""
    array = (KernelI2cMsg * len(msgs))()
    bufs = []
    for i, m in enumerate(msgs):
        size = m.length if m.read else len(m.data)
        buf = ctypes.create_string_buffer(bytes(m.data) if not m.read else b"", max(size, 1))
        bufs.append(buf)
        array[i] = KernelI2cMsg(m.addr, I2C_M_RD if m.read else 0, size, ctypes.addressof(buf))
    return KernelRdwrData(array, len(msgs)), bufs, array


class HostAdapter:
    """Clients ``addresses`` of the host adapter /dev/i2c-``bus``; each must be free of kernel drivers (the same
    I2C_SLAVE check acrn-dm makes).  A group of messages to them is one I2C_RDWR: all succeed or all fail."""

    kind = "host"

    def __init__(self, bus: int, addresses: list[int], dev_dir: str = "/dev") -> None:
        self.bus = bus
        self.path = os.path.join(dev_dir, f"i2c-{bus}")
        self.addresses = sorted(addresses)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise ValueError(f"host I2C adapter {self.path}: {exc.strerror}"
                             + (" (is the i2c-dev module loaded?)" if exc.errno == errno.ENOENT else "")) from None
        try:
            if not stat.S_ISCHR(os.fstat(self.fd).st_mode):
                raise ValueError(f"host I2C adapter {self.path} is not a character device")
            for addr in self.addresses:
                try:
                    fcntl.ioctl(self.fd, I2C_SLAVE, addr)
                except OSError as exc:
                    why = "a kernel driver is bound to it" if exc.errno == errno.EBUSY else exc.strerror
                    raise ValueError(f"host I2C client {addr:#04x} on {self.path}: {why}") from None
        except BaseException:
            os.close(self.fd)
            raise

    def transfer(self, msgs: list[I2cMsg]) -> Results:
        data, bufs, _keep = rdwr_request(msgs)
        try:
            fcntl.ioctl(self.fd, I2C_RDWR, bytearray(bytes(data)))  # the kernel follows the pointers inside
        except OSError as exc:
            log.debug("virtio-i2c: I2C_RDWR on %s: %s", self.path, exc.strerror)
            return [None] * len(msgs)
        return [bufs[i].raw[:m.length] if m.read else b"" for i, m in enumerate(msgs)]

    def properties(self) -> dict[str, Any]:
        return {"adapter": self.path}

    def set_property(self, name: str, value: Any) -> Any:
        raise PropertyError(f"a host client has no settable property {name!r}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- the virtio device -----------------------------------------------------------------------------------------
@dataclass
class _Request:
    head: int
    status: memoryview  # the in_hdr byte
    read_into: list[memoryview]  # the buffer of a read
    used: int  # bytes the device reports written
    msg: I2cMsg | None  # None: a malformed request, answered MSG_ERR
    fail_next: bool


class I2cDevice(VirtioDevice):
    device_id = F.ID_I2C_ADAPTER
    name = "virtio-i2c"
    num_queues = 1

    def __init__(self, targets: Mapping[int, I2cTarget], control_path: str | None = None,
                 max_queue_size: int = 1024) -> None:
        super().__init__()
        self.max_queue_size = max_queue_size
        for addr in targets:
            if not 0 <= addr <= MAX_ADDRESS:
                raise ValueError(f"I2C address {addr:#x} is not a 7-bit address")
        self.targets = dict(targets)
        self._group: list[_Request] = []
        self._group_vq: VirtQueue | None = None
        self.control: ControlSocket | None = None
        if control_path:
            self.control = ControlSocket(control_path, functools.partial(control_answer, targets=self.targets))

    def _type_features(self) -> int:
        return F.mask(F.I2C_F_ZERO_LENGTH_REQUEST)

    def process_queue(self, qidx: int, vq: VirtQueue, mem: GuestMemory) -> bool:
        if not self._attached(qidx, vq):
            return False
        if self._group_vq is not vq:
            self._group, self._group_vq = [], vq
        try:
            while True:
                vq.disable_notification(mem)
                while (chain := vq.pop(mem)) is not None:
                    req = self._parse(vq, chain)
                    if req is None:
                        break  # the queue is broken
                    self._group.append(req)
                    if not req.fail_next or len(self._group) >= MAX_GROUP:
                        self._complete_group(vq, mem)
                vq.flush_used(mem)
                if vq.broken or not vq.enable_notification(mem):
                    break
        except Exception as e:  # a device bug must not take the server down
            self._device_bug(vq, mem, e)
        return vq.should_notify(mem)

    def _parse(self, vq: VirtQueue, chain: DescriptorChain) -> _Request | None:
        """One chain as a request; None (queue broken) when it has no out_hdr or no status byte to answer in."""
        if chain.readable_len < OUT_HDR.size or chain.writable_len < 1:
            vq.mark_broken(f"virtio-i2c request without out_hdr or status byte (head {chain.head})")
            return None
        # A message longer than any we take is refused below: only its header is copied.
        keep = chain.readable_len if chain.readable_len <= OUT_HDR.size + MAX_MSG_LEN else OUT_HDR.size
        readable = gather(chain.readable, keep)
        raw_addr, _pad, flags = OUT_HDR.unpack_from(readable)
        writable = list(chain.writable)
        while not len(writable[-1]):  # zero-length descriptors carry nothing; the status is the last byte
            writable.pop()
        last = writable[-1]
        status = last[len(last) - 1:]
        read_into = writable[:-1] + ([last[:len(last) - 1]] if len(last) > 1 else [])
        req = _Request(chain.head, status, [], chain.writable_len, None, bool(flags & FLAG_FAIL_NEXT))
        is_read = bool(flags & FLAG_M_RD)
        length = chain.writable_len - 1 if is_read else chain.readable_len - OUT_HDR.size
        problem = None
        if flags & ~KNOWN_FLAGS:
            problem = f"unknown flags {flags & ~KNOWN_FLAGS:#x}"
        elif raw_addr & 1 or raw_addr >> 1 > MAX_ADDRESS:
            problem = f"address field {raw_addr:#x} is not a 7-bit address shifted left by one"
        elif is_read and chain.readable_len != OUT_HDR.size:
            problem = "a read request carries data to the device"
        elif not is_read and chain.writable_len != 1:
            problem = "a write request has writable buffers besides its status"
        elif length > MAX_MSG_LEN:
            problem = f"message of {length} bytes (at most {MAX_MSG_LEN})"
        elif length == 0 and not F.has(self.driver_features, F.I2C_F_ZERO_LENGTH_REQUEST):
            problem = "zero-length request without VIRTIO_I2C_F_ZERO_LENGTH_REQUEST"
        if problem is not None:
            log.debug("%s: request %d refused: %s", self.name, chain.head, problem)
            return req
        addr = raw_addr >> 1
        if is_read:
            req.read_into = read_into
            req.msg = I2cMsg(addr, True, length=length)
        else:
            req.msg = I2cMsg(addr, False, data=readable[OUT_HDR.size:])
        return req

    def _complete_group(self, vq: VirtQueue, mem: GuestMemory) -> None:
        group, self._group = self._group, []
        for req, result in zip(group, self.execute([r.msg for r in group]), strict=True):
            if result is not None:
                pos = 0
                for view in req.read_into:
                    view[:] = result[pos:pos + len(view)]
                    pos += len(view)
            req.status[0] = MSG_OK if result is not None else MSG_ERR
            vq.push(mem, req.head, req.used)

    def execute(self, msgs: list[I2cMsg | None]) -> Results:
        """Run one transfer: runs of consecutive messages to the same target go to it together; the first
        failure (a NAK, a malformed request, an address nobody answers) fails every message after it."""
        out: Results = []
        i = 0
        while i < len(msgs):
            m = msgs[i]
            target = self.targets.get(m.addr) if m is not None else None
            if target is None:
                break
            j = i + 1
            while j < len(msgs) and (n := msgs[j]) is not None and self.targets.get(n.addr) is target:
                j += 1
            run = [x for x in msgs[i:j] if x is not None]
            results = target.transfer(run)
            out += results
            if any(r is None for r in results):
                break
            i = j
        return out + [None] * (len(msgs) - len(out))

    def host_sources(self) -> list[tuple[int, IoCallback]]:
        if self.control is None:
            return []
        control = self.control

        def serve(_rings: RingAccess) -> list[int]:
            control.serve()  # touches no ring: nothing to signal
            return []
        return [(control.fileno(), serve)]

    def reset(self) -> None:
        super().reset()
        self._group, self._group_vq = [], None

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        for target in {id(t): t for t in self.targets.values()}.values():  # a host adapter serves several
            target.close()


# -- the control socket ---------------------------------------------------------------------------------------
_TARGET = re.compile(r"(?:([a-z0-9-]{1,32})@)?(0x[0-9a-fA-F]{1,2}|[0-9]{1,3})\Z")


def target_label(addr: int, target: I2cTarget) -> str:
    return f"{target.kind}@{addr:#04x}"


def control_reply(line: bytes, targets: Mapping[int, I2cTarget]) -> dict[str, Any]:
    """The answer to one control request line (sans-IO): ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``."""
    req = decode_request(line)
    return NOT_AN_OBJECT if req is None else control_answer(req, targets)


def control_answer(req: dict[str, Any], targets: Mapping[int, I2cTarget]) -> dict[str, Any]:
    """The answer to one decoded control request."""
    if req.get("list"):
        return {"ok": True, "targets": [{"target": target_label(a, t), "address": a, "type": t.kind,
                                         "properties": t.properties()} for a, t in sorted(targets.items())]}
    name = req.get("target")
    match = _TARGET.match(name) if isinstance(name, str) else None
    if match is None:
        return {"ok": False, "error": f"target {name!r}: use TYPE@ADDRESS (lm75@0x48) or an address (0x48)"}
    addr = int(match[2], 0)
    target = targets.get(addr)
    if target is None or (match[1] and match[1] != target.kind):
        known = ", ".join(target_label(a, t) for a, t in sorted(targets.items())) or "none"
        return {"ok": False, "error": f"no {match[1] or 'device'} at {addr:#04x} on this adapter (devices: {known})"}
    label = target_label(addr, target)
    props = target.properties()
    if isinstance(req.get("set"), str):
        try:
            value = target.set_property(req["set"], req.get("value"))
        except PropertyError as exc:
            return {"ok": False, "error": f"{label}: {exc}"}
        log.info("virtio-i2c: %s %s set to %s by the host", label, req["set"], value)
        return {"ok": True, "target": label, "property": req["set"], "value": value}
    prop = req.get("get")
    if prop is None:
        return {"ok": True, "target": label, "properties": props}
    if not isinstance(prop, str) or prop not in props:
        return {"ok": False, "error": f"{label} has no property {prop!r}; it has: {', '.join(props)}"}
    return {"ok": True, "target": label, "property": prop, "value": props[prop]}
