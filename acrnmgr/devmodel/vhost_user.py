"""vhost-user back-end protocol, sans-IO: message framing and a state machine that turns front-end
requests into replies and ring state (QEMU docs/interop/vhost-user.rst).

Nothing here touches a socket. `MessageReader` frames bytes + SCM_RIGHTS fds into `Message`s,
`VhostUserBackend.handle()` applies one message and returns the reply to send (if any), and
`VhostUserBackend.process()` runs the device over one ring and says whether to signal its call fd.
The IO shell (server.py) owns sockets, selectors and eventfd reads/writes.

File descriptors: every fd in a Message becomes the backend's; fds it stops using are queued in
`retired_fds` rather than closed at once, so the shell can drop them from its selector first (closing
a registered fd silently removes it from epoll, and a re-used fd number would then never fire).
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.device import CONFIG_SPACE_MAX
from acrnmgr.devmodel.inflight import InflightArea, InflightError
from acrnmgr.devmodel.memory import GuestMemory, GuestMemoryError
from acrnmgr.devmodel.virtqueue import VirtQueue

log = logging.getLogger(__name__)


class Request(enum.IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntEnum):
    """Bit numbers of the protocol feature word."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
F_PROTOCOL_FEATURES = F.bit(F.VHOST_USER_F_PROTOCOL_FEATURES)  # virtio feature bit 30, re-used by vhost-user
VRING_NOFD = 1 << 8
VRING_IDX_MASK = 0xFF
MAX_REGIONS = 8  # VHOST_MEMORY_BASELINE_NREGIONS: what SET_MEM_TABLE may carry
MAX_FDS = MAX_REGIONS
# The largest payload any request we know carries is SET_MEM_TABLE with 8 regions (264 bytes) or a
# config message (12 + 256); anything far bigger is a broken or hostile peer.
MAX_PAYLOAD = 4096

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_HEADER = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")
SINGLE_REGION = struct.Struct("<QQQQQ")  # u64 padding + region
CONFIG_HEADER = struct.Struct("<III")
INFLIGHT = struct.Struct("<QQHH4x")  # sizeof(VhostUserInflight) is 24 in QEMU

# The protocol features this back-end implements. CONFIGURE_MEM_SLOTS is left out on purpose: with it
# QEMU replaces SET_MEM_TABLE by ADD/REM_MEM_REG, which gains us nothing for a fixed-RAM guest.
SUPPORTED_PROTOCOL_FEATURES = (
    (1 << ProtocolFeature.MQ)
    | (1 << ProtocolFeature.REPLY_ACK)
    | (1 << ProtocolFeature.CONFIG)
    | (1 << ProtocolFeature.INFLIGHT_SHMFD)
    | (1 << ProtocolFeature.RESET_DEVICE)
    | (1 << ProtocolFeature.STATUS)
)


class ProtocolError(Exception):
    """The peer sent something we cannot accept (bad size, missing fd, out-of-range index...)."""


class Disconnect(Exception):
    """The connection cannot continue (framing lost, or a request whose reply we cannot give)."""


@dataclass(slots=True)
class Message:
    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def name(self) -> str:
        try:
            return Request(self.request).name
        except ValueError:
            return f"request {self.request}"


@dataclass(slots=True)
class Reply:
    """Bytes to send back, with fds to pass alongside (the sender closes them once sent)."""

    data: bytes
    fds: list[int] = field(default_factory=list)


def encode(request: int, payload: bytes = b"", *, flags: int = VERSION) -> bytes:
    """One message on the wire: header then payload."""
    return HEADER.pack(request, flags, len(payload)) + payload


def reply(request: int, payload: bytes = b"", fds: Iterable[int] = ()) -> Reply:
    return Reply(encode(request, payload, flags=VERSION | FLAG_REPLY), list(fds))


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class MessageReader:
    """Incremental framer. The shell reads at most `wanted` bytes at a time (so one read never
    spans two messages and ancillary fds stay with their message) and feeds them in."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []
        self._header: tuple[int, int, int] | None = None

    @property
    def wanted(self) -> int:
        if self._header is None:
            return HEADER.size - len(self._buf)
        return self._header[2] - len(self._buf)

    def feed(self, data: bytes, fds: Iterable[int] = ()) -> list[Message]:
        """Add bytes (and the fds that came with them); return the messages now complete.
        Raises Disconnect when framing is lost (the caller drops the connection)."""
        self._fds.extend(fds)
        out: list[Message] = []
        view = memoryview(data)
        while True:
            need = self.wanted
            if need > 0:
                take = view[:need]
                self._buf += take
                view = view[len(take):]
                if len(take) < need:
                    break
            if self._header is None:
                request, flags, size = HEADER.unpack(self._buf)
                self._buf.clear()
                if flags & FLAG_VERSION_MASK != VERSION:
                    self._reset()
                    raise Disconnect(f"bad vhost-user version in flags {flags:#x}")
                if size > MAX_PAYLOAD:
                    self._reset()
                    raise Disconnect(f"payload of {size} bytes for request {request} exceeds {MAX_PAYLOAD}")
                self._header = (request, flags, size)
                if size:
                    continue
            request, flags, _ = self._header
            out.append(Message(request, flags, bytes(self._buf), self._fds))
            self._buf.clear()
            self._fds = []
            self._header = None
            if not view:
                break
        return out

    def _reset(self) -> None:
        close_fds(self._fds)
        self._fds = []
        self._buf.clear()
        self._header = None

    def close(self) -> None:
        self._reset()


def _unpack(st: struct.Struct, msg: Message, *, exact: bool = True) -> tuple:
    if len(msg.payload) != st.size and (exact or len(msg.payload) < st.size):
        raise ProtocolError(f"{msg.name}: payload is {len(msg.payload)} bytes, expected {st.size}")
    return st.unpack_from(msg.payload)


def _want_fds(msg: Message, count: int) -> list[int]:
    if len(msg.fds) != count:
        raise ProtocolError(f"{msg.name}: got {len(msg.fds)} fds, expected {count}")
    fds, msg.fds = msg.fds, []
    return fds


@dataclass(slots=True)
class RegionInfo:
    guest_phys_addr: int
    size: int
    userspace_addr: int
    mmap_offset: int


def parse_mem_table(msg: Message) -> list[RegionInfo]:
    if len(msg.payload) < MEM_HEADER.size:
        raise ProtocolError(f"{msg.name}: payload too short")
    nregions, _ = MEM_HEADER.unpack_from(msg.payload)
    if not 1 <= nregions <= MAX_REGIONS:
        raise ProtocolError(f"{msg.name}: {nregions} regions (1..{MAX_REGIONS} allowed)")
    # QEMU always sends the full 8-slot table; accept any size that holds nregions entries.
    if len(msg.payload) < MEM_HEADER.size + nregions * MEM_REGION.size:
        raise ProtocolError(f"{msg.name}: payload too short for {nregions} regions")
    return [RegionInfo(*MEM_REGION.unpack_from(msg.payload, MEM_HEADER.size + i * MEM_REGION.size))
            for i in range(nregions)]


class QueueState:
    """Per-ring vhost-user state around the core VirtQueue."""

    __slots__ = ("index", "vq", "num", "base", "addr", "kick_fd", "call_fd", "err_fd", "started",
                 "enabled", "pending")

    def __init__(self, index: int) -> None:
        self.index = index
        self.vq = None
        self.num = 0
        self.base = 0
        self.addr: tuple[int, int, int] | None = None  # front-end virtual: desc, used, avail
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.started = False
        self.enabled = False
        self.pending = False  # process once without waiting for a kick (start, resubmission)


class VhostUserBackend:
    """One front-end connection's worth of vhost-user state over a VirtioDevice.

    `handle(msg)` -> Reply | None; raises Disconnect when the connection must be dropped.
    `process(qidx)` -> bool: run the device over that ring; True means signal its call fd.
    `ready(qidx)`: whether that ring is started, enabled and addressable.
    """

    def __init__(self, device) -> None:
        self.device = device
        self.owner = False
        self.features = 0
        self.features_set = False
        self.protocol_features = 0
        self.status = 0
        self.memory = None
        self.inflight: InflightArea | None = None
        self.queues = [QueueState(i) for i in range(device.num_queues)]
        self.retired_fds: list[int] = []
        self.fds_changed = False  # the shell re-reads kick fds when set
        self._handlers: dict[int, Callable[[Message], Reply | None]] = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset_owner,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.GET_QUEUE_NUM: self._get_queue_num,
            Request.SET_VRING_ENABLE: self._set_vring_enable,
            Request.SET_VRING_ENDIAN: self._set_vring_endian,
            Request.GET_CONFIG: self._get_config,
            Request.SET_CONFIG: self._set_config,
            Request.GET_INFLIGHT_FD: self._get_inflight_fd,
            Request.SET_INFLIGHT_FD: self._set_inflight_fd,
            Request.RESET_DEVICE: self._reset_device,
            Request.SET_STATUS: self._set_status,
            Request.GET_STATUS: self._get_status,
        }

    # ------------------------------------------------------------------ dispatch

    def has_protocol(self, bit: int) -> bool:
        return bool(self.protocol_features & (1 << bit))

    def handle(self, msg: Message) -> Reply | None:
        handler = self._handlers.get(msg.request)
        try:
            if handler is None:
                log.warning("unhandled vhost-user %s (flags %#x, %d bytes, %d fds)",
                            msg.name, msg.flags, len(msg.payload), len(msg.fds))
                return self._ack(msg, ok=False)
            log.debug("%s (%d bytes, %d fds)", msg.name, len(msg.payload), len(msg.fds))
            try:
                result = handler(msg)
            except Disconnect:
                raise
            except Exception as exc:  # never let a request take the server down
                expected = isinstance(exc, (ProtocolError, InflightError, GuestMemoryError, ValueError, OSError))
                log.error("vhost-user %s failed: %s", msg.name, exc, exc_info=not expected)
                if handler in self._replying:
                    raise Disconnect(f"{msg.name}: {exc}") from exc
                return self._ack(msg, ok=False)
            if result is not None:
                return result
            return self._ack(msg, ok=True)
        finally:
            # Whatever a handler did not take is ours to close.
            close_fds(msg.fds)
            msg.fds = []

    @property
    def _replying(self) -> tuple:
        """Handlers whose reply is the answer itself: a failure there cannot be acked."""
        return (self._get_features, self._get_protocol_features, self._get_vring_base, self._get_queue_num,
                self._get_inflight_fd, self._get_status)

    @staticmethod
    def _ack(msg: Message, *, ok: bool) -> Reply | None:
        if not msg.need_reply:
            return None
        return reply(msg.request, U64.pack(0 if ok else 1))

    def _queue(self, index: int) -> QueueState:
        if not 0 <= index < len(self.queues):
            raise ProtocolError(f"queue index {index} out of range (device has {len(self.queues)})")
        return self.queues[index]

    def _retire(self, fd: int | None) -> None:
        if fd is not None:
            self.retired_fds.append(fd)
            self.fds_changed = True

    def release_retired(self) -> None:
        """Close fds the backend stopped using (after the shell unregistered them)."""
        close_fds(self.retired_fds)
        self.retired_fds = []

    # ------------------------------------------------------------------ features

    def offered_features(self) -> int:
        return self.device.device_features() | F_PROTOCOL_FEATURES

    def _get_features(self, msg: Message) -> Reply:
        return reply(msg.request, U64.pack(self.offered_features()))

    def _set_features(self, msg: Message) -> None:
        (value,) = _unpack(U64, msg)
        extra = value & ~self.offered_features()
        if extra:
            raise ProtocolError(f"features {extra:#x} were not offered")
        self.features = value
        self.features_set = True
        self.device.set_driver_features(value & ~F_PROTOCOL_FEATURES)
        for q in self.queues:
            if q.vq is not None:
                q.vq.set_features(value)
            self._update_enabled(q)

    def _get_protocol_features(self, msg: Message) -> Reply:
        return reply(msg.request, U64.pack(SUPPORTED_PROTOCOL_FEATURES))

    def _set_protocol_features(self, msg: Message) -> None:
        (value,) = _unpack(U64, msg)
        if value & ~SUPPORTED_PROTOCOL_FEATURES:
            log.warning("front-end asked for unsupported protocol features %#x; ignoring them",
                        value & ~SUPPORTED_PROTOCOL_FEATURES)
        self.protocol_features = value & SUPPORTED_PROTOCOL_FEATURES

    def _set_owner(self, msg: Message) -> None:
        self.owner = True

    def _reset_owner(self, msg: Message) -> None:
        # Deprecated; the spec recommends treating it as "disable all rings" and keeping state.
        for q in self.queues:
            self._stop(q)

    def _get_queue_num(self, msg: Message) -> Reply:
        return reply(msg.request, U64.pack(len(self.queues)))

    # ------------------------------------------------------------------ memory

    def _set_mem_table(self, msg: Message) -> None:
        regions = parse_mem_table(msg)
        fds = _want_fds(msg, len(regions))
        memory = GuestMemory()
        try:
            for r, fd in zip(regions, fds):
                memory.add_region(r.guest_phys_addr, r.size, r.userspace_addr, r.mmap_offset, fd)
        except BaseException:
            close_fds(fds)
            memory.close()
            raise
        close_fds(fds)  # the mappings keep the memory alive
        old, self.memory = self.memory, memory
        for q in self.queues:
            self._apply_addresses(q, strict=False)
        if old is not None:
            old.close()

    # ------------------------------------------------------------------ rings

    def _new_vq(self, q: QueueState) -> None:
        if q.vq is not None:
            self._detach_inflight(q)
        vq = VirtQueue(q.num, q.index)
        if self.features_set:
            vq.set_features(self.features)
        q.vq = vq
        self.device.attach_queue(q.index, vq)
        self._apply_addresses(q, strict=False)
        vq.last_avail_idx = q.base
        self._update_enabled(q)

    def _apply_addresses(self, q: QueueState, *, strict: bool = True) -> None:
        """Translate the front-end's virtual ring addresses into guest-physical ones for the queue."""
        if q.vq is None or q.addr is None or self.memory is None:
            return
        try:
            desc, used, avail = (self.memory.uva_to_gpa(a) for a in q.addr)
            q.vq.set_addresses(desc, avail, used, self.memory)
        except GuestMemoryError as exc:
            if strict:
                raise ProtocolError(f"queue {q.index}: ring addresses are not in guest memory: {exc}") from exc
            # Stale addresses from an earlier start: the front-end sends fresh ones before starting the ring.
            log.debug("queue %d: dropping stale ring addresses: %s", q.index, exc)
            q.addr = None

    def _set_vring_num(self, msg: Message) -> None:
        index, num = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        if num == 0 or num & (num - 1) or num > self.device.max_queue_size:
            raise ProtocolError(f"queue {index}: size {num} is not a power of two up to {self.device.max_queue_size}")
        q.num = num
        self._new_vq(q)

    def _set_vring_addr(self, msg: Message) -> None:
        index, _flags, desc, used, avail, _log = _unpack(VRING_ADDR, msg)
        q = self._queue(index)
        q.addr = (desc, used, avail)
        self._apply_addresses(q)

    def _set_vring_base(self, msg: Message) -> None:
        index, num = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        if num > 0xFFFF:
            raise ProtocolError(f"queue {index}: base {num} does not fit a split ring index")
        q.base = num
        if q.vq is not None:
            q.vq.last_avail_idx = num

    def _set_vring_endian(self, msg: Message) -> None:
        index, num = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        if num not in (0, 1):
            raise ProtocolError(f"queue {index}: endianness {num} is neither 0 (little) nor 1 (big)")
        if q.vq is not None:
            q.vq.set_vring_endian(bool(num))

    def _get_vring_base(self, msg: Message) -> Reply:
        index, _ = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        self._stop(q)
        base = q.vq.last_avail_idx if q.vq is not None else q.base
        q.base = base
        return reply(msg.request, VRING_STATE.pack(index, base))

    def _stop(self, q: QueueState) -> None:
        q.started = False
        q.pending = False
        self._update_enabled(q)
        self._retire(q.kick_fd)
        self._retire(q.call_fd)
        q.kick_fd = q.call_fd = None

    def _vring_fd(self, msg: Message) -> tuple[QueueState, int | None]:
        (value,) = _unpack(U64, msg)
        q = self._queue(value & VRING_IDX_MASK)
        if value & VRING_NOFD:
            return q, None
        return q, _want_fds(msg, 1)[0]

    def _set_vring_kick(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        self._retire(q.kick_fd)
        q.kick_fd = fd
        self.fds_changed = True
        q.started = True
        if self.has_protocol(ProtocolFeature.INFLIGHT_SHMFD):
            self._attach_inflight(q)
        self._update_enabled(q)
        q.pending = True

    def _set_vring_call(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        self._retire(q.call_fd)
        q.call_fd = fd

    def _set_vring_err(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        self._retire(q.err_fd)
        q.err_fd = fd

    def _set_vring_enable(self, msg: Message) -> None:
        index, num = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        q.enabled = bool(num)
        self._update_enabled(q)
        if q.enabled and q.started:
            q.pending = True

    def ring_enabled(self, q: QueueState) -> bool:
        # Without PROTOCOL_FEATURES negotiated a ring is enabled as soon as it starts.
        return q.enabled or not (self.features & F_PROTOCOL_FEATURES)

    def _update_enabled(self, q: QueueState) -> None:
        pass

    def ready(self, qidx: int) -> bool:
        q = self.queues[qidx]
        return (q.vq is not None and self.memory is not None and q.started and self.ring_enabled(q)
                and q.vq.ready(self.memory))

    def ring(self, qidx: int):
        if not 0 <= qidx < len(self.queues) or not self.ready(qidx):
            return None
        return self.queues[qidx].vq, self.memory

    # ------------------------------------------------------------------ inflight

    def _get_inflight_fd(self, msg: Message) -> Reply:
        _size, _offset, num_queues, queue_size = _unpack(INFLIGHT, msg)
        if not 1 <= num_queues <= len(self.queues) or not 1 <= queue_size <= self.device.max_queue_size:
            raise ProtocolError(f"inflight geometry {num_queues} queues x {queue_size} does not fit this device")
        area, fd = InflightArea.create(num_queues, queue_size)
        self._replace_inflight(area)
        return reply(msg.request, INFLIGHT.pack(area.mmap_size, 0, num_queues, queue_size), [fd])

    def _set_inflight_fd(self, msg: Message) -> None:
        size, offset, num_queues, queue_size = _unpack(INFLIGHT, msg)
        (fd,) = _want_fds(msg, 1)
        try:
            area = InflightArea(fd, size, offset, num_queues, queue_size)
        finally:
            os.close(fd)
        self._replace_inflight(area)

    def _replace_inflight(self, area: InflightArea) -> None:
        old, self.inflight = self.inflight, area
        for q in self.queues:
            self._detach_inflight(q)
        if old is not None:
            old.close()

    @staticmethod
    def _detach_inflight(q: QueueState) -> None:
        if q.vq is not None:
            q.vq.inflight = None

    def _attach_inflight(self, q: QueueState) -> None:
        """Bind the queue to its inflight region and resubmit what a previous back-end left in flight."""
        self._detach_inflight(q)
        region = self.inflight.queue(q.index) if self.inflight is not None else None
        if region is None or q.vq is None or q.num > region.queue_size:
            if self.inflight is not None:
                log.warning("queue %d: no usable inflight region; requests in flight at a crash may be lost", q.index)
            return
        vq = q.vq
        if self.memory is None or vq.used_gpa is None or not vq.ready(self.memory):
            raise ProtocolError(f"queue {q.index} started without usable memory and ring addresses")
        used_idx = vq.used_idx  # read from the used ring when the addresses were resolved
        heads = region.recover(used_idx)
        vq.inflight = region
        if heads:
            # Every head popped before the crash is either in the used ring or still in flight, so the
            # avail position to continue from is used_idx + in-flight count, whatever base QEMU restored.
            vq.last_avail_idx = (used_idx + len(heads)) & 0xFFFF
            vq.resubmit(heads)
            log.info("queue %d: resubmitting %d request(s) in flight at the previous back-end's end", q.index, len(heads))

    # ------------------------------------------------------------------ config, status, reset

    def _get_config(self, msg: Message) -> Reply:
        if len(msg.payload) < CONFIG_HEADER.size:
            return reply(msg.request)
        offset, size, flags = CONFIG_HEADER.unpack_from(msg.payload)
        if size > CONFIG_SPACE_MAX or offset + size > CONFIG_SPACE_MAX:
            log.error("GET_CONFIG of %d bytes at %d is outside the config space", size, offset)
            return reply(msg.request)  # zero-length payload = error
        try:
            data = bytes(self.device.read_config(offset, size))
        except (ValueError, IndexError) as exc:
            log.error("GET_CONFIG: %s", exc)
            return reply(msg.request)
        data = data[:size].ljust(size, b"\0")
        return reply(msg.request, CONFIG_HEADER.pack(offset, size, flags) + data)

    def _set_config(self, msg: Message) -> None:
        if len(msg.payload) < CONFIG_HEADER.size:
            raise ProtocolError("SET_CONFIG payload too short")
        offset, size, _flags = CONFIG_HEADER.unpack_from(msg.payload)
        data = msg.payload[CONFIG_HEADER.size:CONFIG_HEADER.size + size]
        if len(data) != size or offset + size > CONFIG_SPACE_MAX:
            raise ProtocolError(f"SET_CONFIG of {size} bytes at {offset} does not fit")
        self.device.write_config(offset, data)

    def _set_status(self, msg: Message) -> None:
        # Only recorded: QEMU sends status 0 when stopping, *before* GET_VRING_BASE, so treating it
        # as a device reset would lose the ring positions it is about to ask for.
        (value,) = _unpack(U64, msg)
        self.status = value & 0xFF

    def _get_status(self, msg: Message) -> Reply:
        status = self.status
        if self.device.needs_reset or any(q.vq is not None and q.vq.broken for q in self.queues):
            status |= F.S_NEEDS_RESET
        return reply(msg.request, U64.pack(status))

    def _reset_device(self, msg: Message) -> None:
        for q in self.queues:
            self._stop(q)
            self._retire(q.err_fd)
            self._detach_inflight(q)
            q.err_fd = None
            q.vq = None
            q.num = q.base = 0
            q.addr = None
            q.enabled = False
        self.features = 0
        self.features_set = False
        self.status = 0
        self.device.reset()

    # ------------------------------------------------------------------ data path

    def process(self, qidx: int) -> bool:
        """Run the device over ring `qidx`; True when the driver should be notified."""
        q = self.queues[qidx]
        q.pending = False
        vq = q.vq
        if vq is None or self.memory is None or not self.ready(qidx):
            return False
        notify = self.device.process_queue(qidx, vq, self.memory)
        if vq.broken:
            log.error("queue %d is broken; the driver must reset the device", qidx)
            if q.err_fd is not None:
                try:
                    os.eventfd_write(q.err_fd, 1)
                except OSError:
                    pass
        return bool(notify)

    def close(self) -> None:
        """Drop every fd and mapping this connection holds (the device itself stays open)."""
        for q in self.queues:
            for fd in (q.kick_fd, q.call_fd, q.err_fd):
                self._retire(fd)
            q.kick_fd = q.call_fd = q.err_fd = None
            q.started = False
            self._detach_inflight(q)
            q.vq = None
        self.release_retired()
        if self.inflight is not None:
            self.inflight.close()
            self.inflight = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None
