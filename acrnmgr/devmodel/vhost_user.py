"""vhost-user back-end protocol, sans-IO: message framing and a state machine that turns front-end
requests into effects (QEMU's docs/interop/vhost-user.rst is the spec).

Nothing here touches a socket or an fd. `MessageReader` frames bytes + SCM_RIGHTS fds into `Message`s;
`VhostUserBackend.handle(msg)` applies one message and returns the EFFECTS the IO shell must carry out, in
order: `Reply` (send bytes and fds), `Watch` / `Unwatch` (poll a ring's kick fd, or stop), `Close` (an fd the
backend no longer uses), `Notify` (write 1 to a call or err eventfd) and `Process` (run the device over a ring
that just became runnable: the shell calls `process(queue)`, which returns more effects).  The model is h11:
a state machine over bytes, with a thin IO loop around it (server.py).

Each ring's vhost-user state is one `RingState` with an explicit transition table (ringstate.py).

File descriptors: every fd in a Message becomes the backend's.  It keeps kick/call/err fds and returns a
`Close` for every other one (after using it, e.g. mmap'ing guest memory); an fd it stops using comes back as
`Unwatch` (if it was watched) then `Close`, so the shell drops it from its selector before closing it (closing
a registered fd silently removes it from epoll, and a re-used fd number would then never fire).
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.device import CONFIG_SPACE_MAX, IoCallback, VirtioDevice
from acrnmgr.devmodel.inflight import InflightArea, InflightError
from acrnmgr.devmodel.memory import GuestMemory, GuestMemoryError
from acrnmgr.devmodel.ringstate import RingEvent, RingState, runnable, transition
from acrnmgr.devmodel.virtqueue import VirtQueue
from acrnmgr.devmodel.logs import get_logger

log = get_logger(__name__)


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
    """The connection cannot continue (framing lost, or a request whose reply we cannot give).
    ``fds`` are fds that arrived with the failed message(s): the shell closes them."""

    def __init__(self, reason: str, fds: Sequence[int] = ()) -> None:
        super().__init__(reason)
        self.fds = list(fds)


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


# ---------------------------------------------------------------------------------------------------- effects
@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``data`` to the front-end with ``fds`` alongside; the shell closes the fds once sent."""

    data: bytes
    fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Watch:
    """Start polling ``fd`` (a kick eventfd) for reading; when readable, read it and process ring ``queue``."""

    fd: int
    queue: int


@dataclass(frozen=True, slots=True)
class Unwatch:
    """Stop polling ``fd`` (always before its Close)."""

    fd: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close ``fd``: the backend no longer uses it."""

    fd: int


@dataclass(frozen=True, slots=True)
class Notify:
    """Write 1 to eventfd ``fd`` (a ring's call fd: used buffers; or its err fd: the ring broke)."""

    fd: int


@dataclass(frozen=True, slots=True)
class Process:
    """Ring ``queue`` became runnable with work possibly pending: call ``backend.process(queue)``."""

    queue: int


Effect = Reply | Watch | Unwatch | Close | Notify | Process


def encode(request: int, payload: bytes = b"", *, flags: int = VERSION) -> bytes:
    """One message on the wire: header then payload."""
    return HEADER.pack(request, flags, len(payload)) + payload


def reply(request: int, payload: bytes = b"", fds: Iterable[int] = ()) -> Reply:
    return Reply(encode(request, payload, flags=VERSION | FLAG_REPLY), tuple(fds))


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
        Raises Disconnect (with the fds it held) when framing is lost, or when more than MAX_FDS fds come with
        one message (a peer sending a byte at a time, each with fds, would otherwise pile them up here): the
        caller drops the connection."""
        self._fds.extend(fds)
        if len(self._fds) > MAX_FDS:
            raise Disconnect(f"more than {MAX_FDS} fds with one message", self.close())
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
                    raise Disconnect(f"bad vhost-user version in flags {flags:#x}", self._abandon(out))
                if size > MAX_PAYLOAD:
                    raise Disconnect(f"payload of {size} bytes for request {request} exceeds {MAX_PAYLOAD}",
                                     self._abandon(out))
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

    @property
    def partial(self) -> bool:
        """Whether part of a message has arrived (the shell times out a message that stalls)."""
        return bool(self._buf) or self._header is not None

    def _abandon(self, complete: list[Message]) -> list[int]:
        """Framing is lost: every fd received so far, also those of messages completed in this feed."""
        return [fd for m in complete for fd in m.fds] + self.close()

    def close(self) -> list[int]:
        """Forget any partial message; returns the fds it held, for the caller to close."""
        fds, self._fds = self._fds, []
        self._buf.clear()
        self._header = None
        return fds


def _unpack(st: struct.Struct, msg: Message, *, exact: bool = True) -> tuple[Any, ...]:
    if len(msg.payload) != st.size and (exact or len(msg.payload) < st.size):
        raise ProtocolError(f"{msg.name}: payload is {len(msg.payload)} bytes, expected {st.size}")
    return st.unpack_from(msg.payload)


def _want_fds(msg: Message, count: int) -> list[int]:
    """The message's fds, checked to be ``count``; they stay the message's (closed after handling)."""
    if len(msg.fds) != count:
        raise ProtocolError(f"{msg.name}: got {len(msg.fds)} fds, expected {count}")
    return list(msg.fds)


def _take_fd(msg: Message) -> int:
    """Adopt the message's single fd (the caller keeps it open past the message)."""
    (fd,) = _want_fds(msg, 1)
    msg.fds = []
    return fd


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
    """Per-ring vhost-user state around the core VirtQueue: one RingState, the ring's configuration and fds."""

    __slots__ = ("addr", "base", "call_fd", "err_fd", "index", "kick_fd", "num", "pending", "state", "vq")

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = RingState.STOPPED
        self.vq: VirtQueue | None = None
        self.num = 0
        self.base = 0
        self.addr: tuple[int, int, int] | None = None  # front-end virtual: desc, used, avail
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.pending = False  # a run is owed without waiting for a kick (start, enable, resubmission)


Handler = Callable[[Message, list[Effect]], "Reply | None"]


class VhostUserBackend:
    """One front-end connection's worth of vhost-user state over a VirtioDevice.

    `handle(msg)` -> list[Effect]; raises Disconnect when the connection must be dropped.
    `process(qidx)` -> list[Effect]: run the device over that ring (Notify its call fd, or its err fd if the
    ring just broke).  `device_io(callback)` -> list[Effect]: run a device io callback (tap/pty readable).
    `kick_failed(qidx, fd, reason)` / `notify_failed(fd, reason)` -> list[Effect]: the shell could not use a
    ring's fd.  `close()` -> list[Effect]: give back every fd.  `ring(qidx)` is the device's RingAccess.
    """

    def __init__(self, device: VirtioDevice) -> None:
        self.device = device
        self.owner = False
        self.features = 0
        self.features_set = False
        self.protocol_features = 0
        self.status = 0
        self.memory: GuestMemory | None = None
        self.inflight: InflightArea | None = None
        self.queues = [QueueState(i) for i in range(device.num_queues)]
        # The shell's "interrupt the driver now" (write 1 to this call fd), used while a ring is processed so
        # the driver sees completions before the whole batch is done.  Errors are the shell's to report later
        # through notify_failed(); None: only the Notify effect after process().
        self.signal: Callable[[int], None] | None = None
        self._handlers: dict[int, Handler] = {
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
        # Handlers whose reply is the answer itself: a failure there cannot be acked.
        self._replying = {Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE,
                          Request.GET_QUEUE_NUM, Request.GET_INFLIGHT_FD, Request.GET_STATUS}

    # ------------------------------------------------------------------ dispatch

    def has_protocol(self, bit: int) -> bool:
        return bool(self.protocol_features & (1 << bit))

    def handle(self, msg: Message) -> list[Effect]:
        """Apply one message; returns the effects to carry out, in order."""
        fx: list[Effect] = []
        handler = self._handlers.get(msg.request)
        answer: Reply | None
        try:
            if handler is None:
                log.warning("unhandled vhost-user %s (flags %#x, %d bytes, %d fds)",
                            msg.name, msg.flags, len(msg.payload), len(msg.fds))
                answer = self._ack(msg, ok=False)
            else:
                log.debug("%s (%d bytes, %d fds)", msg.name, len(msg.payload), len(msg.fds))
                answer = self._dispatch(handler, msg, fx)
        except Disconnect as exc:
            # Whatever the handler let go of or did not take goes with the connection.
            exc.fds += [e.fd for e in fx if isinstance(e, Close)] + msg.fds
            msg.fds = []
            raise
        if answer is not None:
            fx.append(answer)
        # Whatever a handler did not take is the shell's to close.
        fx += [Close(fd) for fd in msg.fds]
        msg.fds = []
        for q in self.queues:
            if q.pending and self.ready(q.index):
                q.pending = False
                fx.append(Process(q.index))
        return fx

    def _dispatch(self, handler: Handler, msg: Message, fx: list[Effect]) -> Reply | None:
        try:
            result = handler(msg, fx)
        except Disconnect:
            raise
        except Exception as exc:  # never let a request take the server down
            expected = isinstance(exc, (ProtocolError, InflightError, GuestMemoryError, ValueError, OSError))
            log.error("vhost-user %s failed: %s", msg.name, exc, exc_info=not expected)
            if msg.request in self._replying:
                raise Disconnect(f"{msg.name}: {exc}") from exc
            return self._ack(msg, ok=False)
        if result is not None:
            return result
        return self._ack(msg, ok=True)

    @staticmethod
    def _ack(msg: Message, *, ok: bool) -> Reply | None:
        if not msg.need_reply:
            return None
        return reply(msg.request, U64.pack(0 if ok else 1))

    def _queue(self, index: int) -> QueueState:
        if not 0 <= index < len(self.queues):
            raise ProtocolError(f"queue index {index} out of range (device has {len(self.queues)})")
        return self.queues[index]

    @staticmethod
    def _move(q: QueueState, event: RingEvent) -> None:
        """Apply a ring event; IllegalTransition (a protocol error) leaves the state as it was."""
        new = transition(q.state, event)
        if new is not q.state:
            log.debug("queue %d: %s --%s--> %s", q.index, q.state.value, event.value, new.value)
        q.state = new

    @staticmethod
    def _drop_fd(fx: list[Effect], fd: int | None, *, watched: bool = False) -> None:
        if fd is not None:
            if watched:
                fx.append(Unwatch(fd))
            fx.append(Close(fd))

    # ------------------------------------------------------------------ features

    def offered_features(self) -> int:
        return self.device.device_features() | F_PROTOCOL_FEATURES

    def _get_features(self, msg: Message, fx: list[Effect]) -> Reply:
        return reply(msg.request, U64.pack(self.offered_features()))

    def _set_features(self, msg: Message, fx: list[Effect]) -> None:
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
            self._implicit_enable(q)

    def _implicit_enable(self, q: QueueState) -> None:
        """Without PROTOCOL_FEATURES negotiated a ring is enabled as soon as it starts."""
        if not self.features & F_PROTOCOL_FEATURES and q.state is RingState.STARTED:
            self._move(q, RingEvent.ENABLE)
            q.pending = True

    def _offered_protocol_features(self) -> int:
        """CONFIG only for a device type with a config space: QEMU warns about it for one without (virtio-rng)."""
        if self.device.config_space():
            return SUPPORTED_PROTOCOL_FEATURES
        return SUPPORTED_PROTOCOL_FEATURES & ~(1 << ProtocolFeature.CONFIG)

    def _get_protocol_features(self, msg: Message, fx: list[Effect]) -> Reply:
        return reply(msg.request, U64.pack(self._offered_protocol_features()))

    def _set_protocol_features(self, msg: Message, fx: list[Effect]) -> None:
        (value,) = _unpack(U64, msg)
        offered = self._offered_protocol_features()
        if value & ~offered:
            log.warning("front-end asked for unsupported protocol features %#x; ignoring them", value & ~offered)
        self.protocol_features = value & offered

    def _set_owner(self, msg: Message, fx: list[Effect]) -> None:
        self.owner = True

    def _reset_owner(self, msg: Message, fx: list[Effect]) -> None:
        # Deprecated; the spec recommends treating it as "disable all rings" and keeping state.
        for q in self.queues:
            self._stop(q, fx)

    def _get_queue_num(self, msg: Message, fx: list[Effect]) -> Reply:
        return reply(msg.request, U64.pack(len(self.queues)))

    # ------------------------------------------------------------------ memory

    def _set_mem_table(self, msg: Message, fx: list[Effect]) -> None:
        regions = parse_mem_table(msg)
        fds = _want_fds(msg, len(regions))  # closed after handling: the mappings keep the memory alive
        memory = GuestMemory()
        try:
            for r, fd in zip(regions, fds, strict=True):
                memory.add_region(r.guest_phys_addr, r.size, r.userspace_addr, r.mmap_offset, fd)
        except BaseException:
            memory.close()
            raise
        old, self.memory = self.memory, memory
        # The queues re-resolve their ring views from the new table (its generation differs) on next use.
        for q in self.queues:
            self._apply_addresses(q, strict=False)
        if old is not None:
            old.close()

    # ------------------------------------------------------------------ rings

    def _new_vq(self, q: QueueState) -> None:
        if q.vq is not None:
            q.vq.inflight = None
        vq = VirtQueue(q.num, q.index)
        if self.features_set:
            vq.set_features(self.features)
        q.vq = vq
        self.device.attach_queue(q.index, vq)
        self._apply_addresses(q, strict=False)
        vq.last_avail_idx = q.base

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

    def _set_vring_num(self, msg: Message, fx: list[Effect]) -> None:
        index, num = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        if num == 0 or num & (num - 1) or num > self.device.max_queue_size:
            raise ProtocolError(f"queue {index}: size {num} is not a power of two up to {self.device.max_queue_size}")
        self._move(q, RingEvent.CONFIGURE)
        q.num = num
        self._new_vq(q)

    def _set_vring_addr(self, msg: Message, fx: list[Effect]) -> None:
        index, _flags, desc, used, avail, _log = _unpack(VRING_ADDR, msg)
        q = self._queue(index)
        transition(q.state, RingEvent.SET_ADDR)  # check first: a refused message changes nothing
        q.addr = (desc, used, avail)
        self._apply_addresses(q)
        self._move(q, RingEvent.SET_ADDR)

    def _set_vring_base(self, msg: Message, fx: list[Effect]) -> None:
        index, num = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        if num > 0xFFFF:
            raise ProtocolError(f"queue {index}: base {num} does not fit a split ring index")
        self._move(q, RingEvent.CONFIGURE)
        q.base = num
        if q.vq is not None:
            q.vq.last_avail_idx = num

    def _set_vring_endian(self, msg: Message, fx: list[Effect]) -> None:
        index, num = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        if num not in (0, 1):
            raise ProtocolError(f"queue {index}: endianness {num} is neither 0 (little) nor 1 (big)")
        self._move(q, RingEvent.CONFIGURE)
        if q.vq is not None:
            q.vq.set_vring_endian(bool(num))

    def _get_vring_base(self, msg: Message, fx: list[Effect]) -> Reply:
        index, _ = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        self._stop(q, fx)
        base = q.vq.last_avail_idx if q.vq is not None else q.base
        q.base = base
        return reply(msg.request, VRING_STATE.pack(index, base))

    def _stop(self, q: QueueState, fx: list[Effect]) -> None:
        self._move(q, RingEvent.STOP)
        q.pending = False
        self._drop_fd(fx, q.kick_fd, watched=True)
        self._drop_fd(fx, q.call_fd)
        q.kick_fd = q.call_fd = None

    def _vring_index(self, msg: Message) -> tuple[QueueState, bool]:
        """The ring a SET_VRING_KICK/CALL/ERR names, and whether an fd comes with it (not VRING_NOFD)."""
        (value,) = _unpack(U64, msg)
        q = self._queue(value & VRING_IDX_MASK)
        has_fd = not value & VRING_NOFD
        _want_fds(msg, 1 if has_fd else 0)
        return q, has_fd

    def _set_vring_kick(self, msg: Message, fx: list[Effect]) -> None:
        q, has_fd = self._vring_index(msg)
        transition(q.state, RingEvent.KICK)  # refuse before adopting the fd
        fd = _take_fd(msg) if has_fd else None
        self._drop_fd(fx, q.kick_fd, watched=True)
        q.kick_fd = fd
        if fd is not None:
            fx.append(Watch(fd, q.index))
        self._move(q, RingEvent.KICK)
        self._implicit_enable(q)
        q.pending = True
        if self.has_protocol(ProtocolFeature.INFLIGHT_SHMFD):
            self._attach_inflight(q)

    def _set_vring_call(self, msg: Message, fx: list[Effect]) -> None:
        q, has_fd = self._vring_index(msg)
        self._drop_fd(fx, q.call_fd)
        q.call_fd = _take_fd(msg) if has_fd else None

    def _set_vring_err(self, msg: Message, fx: list[Effect]) -> None:
        q, has_fd = self._vring_index(msg)
        self._drop_fd(fx, q.err_fd)
        q.err_fd = _take_fd(msg) if has_fd else None

    def _set_vring_enable(self, msg: Message, fx: list[Effect]) -> None:
        index, num = _unpack(VRING_STATE, msg)
        q = self._queue(index)
        self._move(q, RingEvent.ENABLE if num else RingEvent.DISABLE)
        if q.state is RingState.ENABLED:
            q.pending = True

    def ready(self, qidx: int) -> bool:
        """Whether ring `qidx` may be processed now: ENABLED, sized, and resolved in the memory table."""
        q = self.queues[qidx]
        return (runnable(q.state) and q.vq is not None and self.memory is not None
                and q.vq.ready(self.memory))

    def ring(self, qidx: int) -> tuple[VirtQueue, GuestMemory] | None:
        """RingAccess for the device's io callbacks: the queue and memory while the ring may be processed."""
        if not 0 <= qidx < len(self.queues) or not self.ready(qidx):
            return None
        vq, mem = self.queues[qidx].vq, self.memory
        assert vq is not None and mem is not None  # ready() checked both
        return vq, mem

    # ------------------------------------------------------------------ inflight

    def _get_inflight_fd(self, msg: Message, fx: list[Effect]) -> Reply:
        _size, _offset, num_queues, queue_size = _unpack(INFLIGHT, msg)
        if not 1 <= num_queues <= len(self.queues) or not 1 <= queue_size <= self.device.max_queue_size:
            raise ProtocolError(f"inflight geometry {num_queues} queues x {queue_size} does not fit this device")
        area, fd = InflightArea.create(num_queues, queue_size)
        self._replace_inflight(area)
        return reply(msg.request, INFLIGHT.pack(area.mmap_size, 0, num_queues, queue_size), [fd])

    def _set_inflight_fd(self, msg: Message, fx: list[Effect]) -> None:
        size, offset, num_queues, queue_size = _unpack(INFLIGHT, msg)
        (fd,) = _want_fds(msg, 1)  # closed after handling: the mapping keeps the buffer
        self._replace_inflight(InflightArea(fd, size, offset, num_queues, queue_size))

    def _replace_inflight(self, area: InflightArea) -> None:
        old, self.inflight = self.inflight, area
        for q in self.queues:
            if q.vq is not None:
                q.vq.inflight = None
        if old is not None:
            old.close()

    def _attach_inflight(self, q: QueueState) -> None:
        """Bind the queue to its inflight region and resubmit what a previous back-end left in flight."""
        if q.vq is not None:
            q.vq.inflight = None
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
            log.info("queue %d: resubmitting %d request(s) in flight at the previous back-end's end",
                     q.index, len(heads))

    # ------------------------------------------------------------------ config, status, reset

    def _get_config(self, msg: Message, fx: list[Effect]) -> Reply:
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

    def _set_config(self, msg: Message, fx: list[Effect]) -> None:
        if len(msg.payload) < CONFIG_HEADER.size:
            raise ProtocolError("SET_CONFIG payload too short")
        offset, size, _flags = CONFIG_HEADER.unpack_from(msg.payload)
        data = msg.payload[CONFIG_HEADER.size:CONFIG_HEADER.size + size]
        if len(data) != size or offset + size > CONFIG_SPACE_MAX:
            raise ProtocolError(f"SET_CONFIG of {size} bytes at {offset} does not fit")
        self.device.write_config(offset, data)

    def _set_status(self, msg: Message, fx: list[Effect]) -> None:
        # Only recorded: QEMU sends status 0 when stopping, *before* GET_VRING_BASE, so treating it
        # as a device reset would lose the ring positions it is about to ask for.
        (value,) = _unpack(U64, msg)
        self.status = value & 0xFF

    def _get_status(self, msg: Message, fx: list[Effect]) -> Reply:
        for q in self.queues:
            fx += self._check_broken(q)
        status = self.status
        if self.device.needs_reset or any(q.state is RingState.NEEDS_RESET for q in self.queues):
            status |= F.S_NEEDS_RESET
        return reply(msg.request, U64.pack(status))

    def _forget_ring(self, q: QueueState, fx: list[Effect]) -> None:
        """Back to a fresh ring: state RESET, fds given back, configuration and queue dropped."""
        self._move(q, RingEvent.RESET)
        q.pending = False
        self._drop_fd(fx, q.kick_fd, watched=True)
        self._drop_fd(fx, q.call_fd)
        self._drop_fd(fx, q.err_fd)
        q.kick_fd = q.call_fd = q.err_fd = None
        if q.vq is not None:
            q.vq.inflight = None
        q.vq = None
        q.num = q.base = 0
        q.addr = None

    def _reset_device(self, msg: Message, fx: list[Effect]) -> None:
        for q in self.queues:
            self._forget_ring(q, fx)
        self.features = 0
        self.features_set = False
        self.status = 0
        self.device.reset()

    # ------------------------------------------------------------------ data path

    def _check_broken(self, q: QueueState) -> list[Effect]:
        """A ring the core queue found corrupt goes to NEEDS_RESET, and its err fd is signalled (once)."""
        if q.vq is None or not q.vq.broken or q.state is RingState.NEEDS_RESET:
            return []
        log.error("queue %d is broken (%s); the driver must reset the device", q.index, q.vq.broken_reason)
        self._move(q, RingEvent.FAIL)
        q.pending = False
        return [Notify(q.err_fd)] if q.err_fd is not None else []

    def process(self, qidx: int) -> list[Effect]:
        """Run the device over ring `qidx`: Notify its call fd if the driver should be interrupted, its
        err fd if the ring broke."""
        q = self.queues[qidx]
        q.pending = False
        if not self.ready(qidx):
            return self._check_broken(q)
        vq, mem = q.vq, self.memory
        assert vq is not None and mem is not None  # ready() checked both
        fx: list[Effect] = []
        call_fd, signal = q.call_fd, self.signal
        vq.notifier = None if signal is None or call_fd is None else functools.partial(signal, call_fd)
        try:
            if self.device.process_queue(qidx, vq, mem) and call_fd is not None:
                fx.append(Notify(call_fd))
        finally:
            vq.notifier = None
        return fx + self._check_broken(q)

    def kick_failed(self, qidx: int, fd: int, reason: str) -> list[Effect]:
        """The shell cannot use ring `qidx`'s kick fd `fd` (it cannot be polled, it reached end of file, or
        reading it failed): stop watching it, give it back, and break the ring (NEEDS_RESET, err fd signalled).
        Logged once: the fd is gone, so it cannot fail again."""
        if not 0 <= qidx < len(self.queues) or self.queues[qidx].kick_fd != fd:
            return []  # stale: the ring has moved on to another fd
        q = self.queues[qidx]
        fx: list[Effect] = []
        self._drop_fd(fx, fd, watched=True)
        q.kick_fd = None
        log.error("queue %d: kick fd %s; the ring is broken until the driver resets the device", qidx, reason)
        if q.state is not RingState.NEEDS_RESET:
            self._move(q, RingEvent.FAIL)
            q.pending = False
            if q.err_fd is not None:
                fx.append(Notify(q.err_fd))
        return fx

    def notify_failed(self, fd: int, reason: str) -> list[Effect]:
        """Writing to call or err fd `fd` failed (not a full counter: an error): stop using it, log once."""
        fx: list[Effect] = []
        for q in self.queues:
            if q.call_fd == fd:
                log.error("queue %d: call fd %s; no more used-buffer notifications on it", q.index, reason)
                self._drop_fd(fx, fd)
                q.call_fd = None
            elif q.err_fd == fd:
                log.error("queue %d: err fd %s; dropped", q.index, reason)
                self._drop_fd(fx, fd)
                q.err_fd = None
        return fx

    def device_io(self, callback: IoCallback) -> list[Effect]:
        """Run a device io callback (one of device.io_sources()): it moves data and names the rings to signal."""
        fx: list[Effect] = []
        for qidx in callback(self):
            if 0 <= qidx < len(self.queues) and (call := self.queues[qidx].call_fd) is not None:
                fx.append(Notify(call))
        for q in self.queues:
            fx += self._check_broken(q)
        return fx

    def close(self) -> list[Effect]:
        """Drop every mapping this connection holds and give back its fds (the device itself stays open)."""
        fx: list[Effect] = []
        for q in self.queues:
            self._forget_ring(q, fx)
        if self.inflight is not None:
            self.inflight.close()
            self.inflight = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        return fx
