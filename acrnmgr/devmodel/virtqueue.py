"""Split virtqueue over guest memory (virtio 1.2 section 2.7), device side.

Sans-IO: the queue reads and writes guest memory through :class:`~acrnmgr.devmodel.memory.GuestMemory` views
and never touches a file descriptor.  Every value the driver controls is checked; a violation marks the queue
*broken* (logged once, ``broken_reason`` set) and makes :meth:`VirtQueue.pop` return None from then on.
Nothing guest-triggered raises out of :meth:`pop`, :meth:`push`, :meth:`flush_used` or :meth:`should_notify`.

Typical device loop (see ``VirtioDevice._drain``)::

    while True:
        vq.disable_notification()
        while (chain := vq.pop()) is not None:
            ...                                  # use chain.readable / chain.writable memoryviews
            vq.push(chain.head, bytes_written)
        vq.flush_used()
        if not vq.enable_notification():         # re-arms kicks, then re-checks for a race with the driver
            break
    notify = vq.should_notify()                  # EVENT_IDX / NO_INTERRUPT decision for the call eventfd

In-flight tracking (vhost-user INFLIGHT_SHMFD, done by the transport): assign ``vq.inflight = region`` where
region has ``mark(head)``, ``begin_put(head)`` and ``end_put(heads, used_idx)`` (acrnmgr.devmodel.inflight), or set
the hooks directly: ``vq.on_pop(head)``,
``vq.on_push(head)`` (called before the used element is written) and ``vq.on_flush(heads, used_idx)`` (called
after the used index is published, with the heads that became visible).  After a reconnect the transport restores
``last_avail_idx`` / ``used_idx`` and calls :meth:`resubmit` with the heads still in flight (oldest first); pop()
returns those chains again before looking at the avail ring, without calling ``on_pop``.
"""

from __future__ import annotations

import collections
import logging
import platform
import struct
import sys
import threading

from . import features as F
from .memory import GuestMemory, GuestMemoryError

log = logging.getLogger(__name__)

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

MAX_QUEUE_SIZE = 32768
DESC_SIZE = 16

# Descriptor tables are read with struct: the driver fills a descriptor before it publishes the avail index, so
# nothing writes one while we read it.  Ring *fields* are different (see _resolve).
_DESC_STRUCTS = {order: struct.Struct(order + "QIHH") for order in ("<", ">")}
_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"
# x86 (TSO) keeps stores in program order; elsewhere publishing needs an explicit barrier between element and index.
_STORES_ORDERED = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")

_fence_lock = threading.Lock()


def memory_barrier() -> None:
    """Full memory barrier (store-load), needed between publishing an index and reading the peer's event index.

    CPython offers no fence primitive; a lock round trip executes an atomic read-modify-write (a full barrier on
    x86, acquire+release elsewhere), which is what the virtio ring protocol needs here.
    """
    _fence_lock.acquire()
    _fence_lock.release()


def _bswap16(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


def _bswap32(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "little"), "big")


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """virtio 1.2 2.7.10: notify iff new passed event since old (all u16, free-running)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


class QueueBroken(Exception):
    """Internal: raised inside the queue to unwind a chain walk; never escapes the public API."""


class DescriptorChain:
    """One popped request: driver-readable buffers first, then device-writable buffers (zero-copy views)."""

    __slots__ = ("head", "readable", "writable", "readable_len", "writable_len")

    def __init__(self, head: int, readable: list, writable: list, readable_len: int, writable_len: int):
        self.head = head
        self.readable: list[memoryview] = readable
        self.writable: list[memoryview] = writable
        self.readable_len = readable_len
        self.writable_len = writable_len

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={len(self.readable)}/{self.readable_len}B, "
                f"writable={len(self.writable)}/{self.writable_len}B)")


class VirtQueue:
    """Device side of one split virtqueue.

    Set-up order used by the vhost-user transport: ``VirtQueue(size)`` (SET_VRING_NUM), ``set_memory`` (SET_MEM_TABLE),
    ``set_features`` (SET_FEATURES), ``set_addresses`` (SET_VRING_ADDR, guest-physical), ``last_avail_idx = n``
    (SET_VRING_BASE); ``enabled`` (default True) goes False while the ring is stopped or disabled.  ``last_avail_idx`` is also the
    GET_VRING_BASE answer.  Any order works: the ring is resolved as soon as memory and addresses are both known.
    """

    def __init__(self, size: int, index: int = 0):
        if not 1 <= size <= MAX_QUEUE_SIZE:
            raise ValueError(f"queue size {size} out of range 1..{MAX_QUEUE_SIZE}")
        self.index = index
        self.size = size
        self.mem: GuestMemory | None = None
        self.desc_gpa: int | None = None
        self.avail_gpa: int | None = None
        self.used_gpa: int | None = None
        self.features = 0
        # The transport gates kicks itself; it clears ``enabled`` when the ring is stopped (GET_VRING_BASE) or
        # disabled, so that device-initiated work (net/console RX from io_sources) leaves the ring alone.
        self.enabled = True
        self.broken = False
        self.broken_reason: str | None = None
        self.legacy_big_endian = sys.byteorder == "big"
        self.on_pop = None
        self.on_push = None
        self.on_flush = None
        self.on_broken = None  # callable(vq), set by the device to raise NEEDS_RESET
        self._inflight = None
        self._resubmit: collections.deque[int] = collections.deque()
        self._flushed_heads: list[int] = []
        self._desc = None
        self._clear_ring_views()
        self._used_synced = False
        self._select_structs()
        self._reset_indexes()

    # -- configuration --------------------------------------------------------------------------------------
    def _reset_indexes(self) -> None:
        self._last_avail = 0         # next avail ring index to consume (SET/GET_VRING_BASE)
        self.used_idx = 0            # next used index we will publish (shadow of used->idx)
        self._shadow_avail = 0       # avail->idx as last read and validated; == _last_avail means "re-read"
        self._published_used = 0     # used->idx as last written
        self._signalled_used = 0
        self._signalled_valid = False
        self._pending_notify = False

    def _select_structs(self) -> None:
        if F.has(self.features, F.F_VERSION_1):
            order = "<"
        else:
            order = ">" if self.legacy_big_endian else "<"
        self.byteorder = order
        self._desc_s = _DESC_STRUCTS[order]
        self._swap = order != _NATIVE_ORDER
        self._event_idx = F.has(self.features, F.F_RING_EVENT_IDX)
        self._indirect = F.has(self.features, F.F_RING_INDIRECT_DESC)
        self._notify_on_empty = F.has(self.features, F.F_NOTIFY_ON_EMPTY)

    def set_features(self, features: int) -> None:
        """Apply the negotiated features: EVENT_IDX, INDIRECT_DESC, NOTIFY_ON_EMPTY, VERSION_1 (endianness)."""
        self.features = features
        self._select_structs()
        self._resolve(strict=False)

    def set_vring_endian(self, big_endian: bool) -> None:
        """SET_VRING_ENDIAN: byte order used while VERSION_1 is not negotiated (default: this host's)."""
        self.legacy_big_endian = big_endian
        self._select_structs()

    def set_memory(self, mem: GuestMemory | None) -> None:
        """(Re)attach guest memory; ring views are re-resolved (a ring that no longer fits breaks the queue)."""
        self.mem = mem
        self._resolve(strict=False)

    def set_addresses(self, desc_gpa: int, avail_gpa: int, used_gpa: int) -> None:
        """Set the guest-physical ring addresses. Raises GuestMemoryError if memory is known and they don't fit."""
        self.desc_gpa, self.avail_gpa, self.used_gpa = desc_gpa, avail_gpa, used_gpa
        self._used_synced = False
        self._resolve(strict=True)

    def _clear_ring_views(self) -> None:
        self._avail = self._used = None
        self._avail16: memoryview | None = None
        self._used16: memoryview | None = None
        self._used32: memoryview | None = None

    def _resolve(self, strict: bool) -> None:
        self._desc = None
        self._clear_ring_views()
        if self.mem is None or self.desc_gpa is None:
            return
        n = self.size
        ev = 2 if self._event_idx else 0  # used_event / avail_event exist only with EVENT_IDX
        try:
            if self.desc_gpa % 16 or self.avail_gpa % 2 or self.used_gpa % 4:
                raise GuestMemoryError("misaligned ring address")
            desc = self.mem.view(self.desc_gpa, DESC_SIZE * n)
            avail = self.mem.view(self.avail_gpa, 4 + 2 * n + ev)
            used = self.mem.view(self.used_gpa, 4 + 8 * n + ev, writable=True)
        except GuestMemoryError as e:
            if strict:
                raise
            self.mark_broken(f"ring not in guest memory: {e}")
            return
        self._desc, self._avail, self._used = desc, avail, used
        # The driver reads and writes ring fields concurrently from another CPU.  struct.pack_into zero-fills a
        # field before writing it (a reader can see used->idx == 0) and struct reads go byte by byte (a reader
        # can see half an index), so every field shared with the driver goes through these typed views: one
        # aligned load or store of the field's full width (memoryview item access is a fixed-size memcpy).
        # The ring addresses are aligned (checked above) and regions are page-aligned mappings.
        #   avail16: flags [0], idx [1], ring [2 + i], used_event [2 + size]
        #   used16:  flags [0], idx [1], avail_event [2 + 4 * size];  used32: elem i = id [1 + 2i], len [2 + 2i]
        self._avail16 = avail.cast("H")
        self._used16 = used.cast("H")
        self._used32 = used[:4 + 8 * n].cast("I")
        if not self._used_synced:
            # Like libvhost-user: on (re)configuration we continue from the used index the ring already holds.
            self.used_idx = self._published_used = self._load16(self._used16, 1)
            self._used_synced = True

    # Single full-width loads and stores of ring fields, in the ring's byte order.
    def _load16(self, view: memoryview, i: int) -> int:
        v = view[i]
        return _bswap16(v) if self._swap else v

    def _store16(self, view: memoryview, i: int, v: int) -> None:
        view[i] = _bswap16(v) if self._swap else v

    def reset(self) -> None:
        """Forget everything guest-provided (device reset / RESET_OWNER)."""
        self.enabled = True
        self.broken = False
        self.broken_reason = None
        self.desc_gpa = self.avail_gpa = self.used_gpa = None
        self._desc = None
        self._clear_ring_views()
        self._used_synced = False
        self._resubmit.clear()
        self._flushed_heads.clear()
        self.features = 0
        self._select_structs()
        self._reset_indexes()

    @property
    def last_avail_idx(self) -> int:
        return self._last_avail

    @last_avail_idx.setter
    def last_avail_idx(self, idx: int) -> None:
        self._last_avail = self._shadow_avail = idx & 0xFFFF

    @property
    def ready(self) -> bool:
        """Enabled, resolved and not broken: pop() may return chains."""
        return self.enabled and not self.broken and self._desc is not None

    def mark_broken(self, reason: str) -> None:
        if not self.broken:
            self.broken = True
            self.broken_reason = reason
            log.warning("virtqueue %d broken: %s", self.index, reason)
            if self.on_broken is not None:
                self.on_broken(self)

    def set_used_idx(self, idx: int) -> None:
        """Restore the used index (reconnect with in-flight state); it is not read back from the ring then."""
        self.used_idx = self._published_used = idx & 0xFFFF
        self._used_synced = True
        self._signalled_valid = False

    def resubmit(self, heads) -> None:
        """Queue descriptor heads that were in flight before a reconnect; pop() returns them first."""
        self._resubmit.extend(heads)

    @property
    def inflight(self):
        return self._inflight

    @inflight.setter
    def inflight(self, region) -> None:
        """Bind an in-flight tracker (mark / begin_put / end_put) or None; sets the on_* hooks accordingly."""
        self._inflight = region
        if region is None:
            self.on_pop = self.on_push = self.on_flush = None
        else:
            self.on_pop, self.on_push, self.on_flush = region.mark, region.begin_put, region.end_put
        self._flushed_heads.clear()

    # -- avail side -----------------------------------------------------------------------------------------
    def avail_idx(self) -> int:
        return self._load16(self._avail16, 1)

    def avail_flags(self) -> int:
        return self._load16(self._avail16, 0)

    def has_pending(self) -> bool:
        """Whether pop() would find work (never raises; False when not ready)."""
        if not self.ready:
            return False
        if self._resubmit:
            return True
        return self.avail_idx() != self._last_avail

    def pop(self) -> DescriptorChain | None:
        """Take the next available chain, fully validated; None if there is none or the queue is (now) broken."""
        if not self.enabled or self.broken or self._desc is None:
            return None
        try:
            if self._resubmit:
                head = self._resubmit.popleft()
                if not 0 <= head < self.size:
                    raise QueueBroken(f"resubmitted head {head} >= queue size {self.size}")
                return self._walk(head)
            last = self._last_avail
            if self._shadow_avail == last:
                shadow = self._load16(self._avail16, 1)
                if shadow == last:
                    return None
                if (shadow - last) & 0xFFFF > self.size:
                    raise QueueBroken(f"avail idx {shadow} jumped more than queue size {self.size} past {last}")
                self._shadow_avail = shadow
            head = self._load16(self._avail16, 2 + last % self.size)
            self._last_avail = (last + 1) & 0xFFFF
            chain = self._walk(head)
            if self.on_pop is not None:
                self.on_pop(head)
            return chain
        except QueueBroken as e:
            self.mark_broken(str(e))
        except Exception as e:  # defensive: a bug here must not take the server down
            log.exception("unexpected error walking virtqueue %d", self.index)
            self.mark_broken(f"internal error: {e!r}")
        return None

    def unpop(self) -> None:
        """Give back the last popped chain (e.g. RX with no packet to deliver). Not for resubmitted chains."""
        self._last_avail = (self._last_avail - 1) & 0xFFFF

    def _walk(self, head: int) -> DescriptorChain:
        size = self.size
        if head >= size:
            raise QueueBroken(f"head index {head} >= queue size {size}")
        unpack = self._desc_s.unpack_from
        view = self.mem.view
        table = self._desc
        limit = size          # descriptors allowed in the current table (loop / length guard)
        count = 0
        indirect = False
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        rlen = wlen = 0
        i = head
        while True:
            count += 1
            if count > limit:
                raise QueueBroken(f"descriptor chain from head {head} longer than {limit} (loop?)")
            addr, length, flags, nxt = unpack(table, i * DESC_SIZE)
            if flags & VRING_DESC_F_INDIRECT:
                if indirect:
                    raise QueueBroken(f"indirect descriptor inside an indirect table (head {head})")
                if not self._indirect:
                    raise QueueBroken("INDIRECT descriptor without VIRTIO_F_RING_INDIRECT_DESC")
                if flags & VRING_DESC_F_NEXT:
                    raise QueueBroken(f"descriptor {i} has both INDIRECT and NEXT")
                if count != 1:
                    raise QueueBroken(f"indirect descriptor {i} is not the head of its chain")
                if length == 0 or length % DESC_SIZE or length > size * DESC_SIZE:
                    raise QueueBroken(f"indirect table length {length} invalid for queue size {size}")
                try:
                    table = view(addr, length)
                except GuestMemoryError as e:
                    raise QueueBroken(f"indirect table: {e}") from None
                limit = length // DESC_SIZE
                indirect = True
                count = 0
                i = 0
                continue
            if length:
                try:
                    buf = view(addr, length, flags & VRING_DESC_F_WRITE)
                except GuestMemoryError as e:
                    raise QueueBroken(f"descriptor {i} of head {head}: {e}") from None
                if flags & VRING_DESC_F_WRITE:
                    writable.append(buf)
                    wlen += length
                else:
                    if writable:
                        raise QueueBroken(f"readable descriptor {i} after a writable one (head {head})")
                    readable.append(buf)
                    rlen += length
            elif not flags & VRING_DESC_F_WRITE and writable:
                raise QueueBroken(f"readable descriptor {i} after a writable one (head {head})")
            if not flags & VRING_DESC_F_NEXT:
                return DescriptorChain(head, readable, writable, rlen, wlen)
            if nxt >= limit:
                raise QueueBroken(f"next index {nxt} >= table size {limit} (head {head})")
            i = nxt

    # -- used side ------------------------------------------------------------------------------------------
    def push(self, head: int, written_len: int) -> None:
        """Record a completed chain in the used ring (visible to the driver after flush_used())."""
        if self.broken or self._used is None:
            return
        if self.on_push is not None:
            self.on_push(head)
            self._flushed_heads.append(head)
        # The element is written now, each field with one 32-bit store; the driver only looks at it once
        # flush_used() has published an index past it.
        used32 = self._used32
        slot = 1 + 2 * (self.used_idx % self.size)
        written_len &= 0xFFFFFFFF
        if self._swap:
            head, written_len = _bswap32(head), _bswap32(written_len)
        used32[slot] = head
        used32[slot + 1] = written_len
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def flush_used(self) -> None:
        """Publish the used index (one write for a batch of push()es)."""
        if self._used is None or self.used_idx == self._published_used:
            return
        # Publication order: the elements (push) first, then used->idx with ONE 16-bit store, never a zero-fill
        # followed by a write (struct.pack_into), or a driver polling the index sees it go back to 0.  x86 keeps
        # stores in program order; other CPUs need a barrier between the element stores and the index store.
        if not _STORES_ORDERED:
            memory_barrier()
        self._store16(self._used16, 1, self.used_idx)
        self._published_used = self.used_idx
        self._pending_notify = True
        if self.on_flush is not None and self._flushed_heads:
            heads, self._flushed_heads = self._flushed_heads, []
            self.on_flush(heads, self.used_idx)

    def should_notify(self) -> bool:
        """Whether the driver must be interrupted for what flush_used() published since the last call."""
        if self._avail is None or not self._pending_notify:
            return False
        self._pending_notify = False
        memory_barrier()  # used idx store must be visible before we read the driver's used_event / flags
        if self._notify_on_empty and not self._resubmit and self.avail_idx() == self._last_avail:
            return True
        if not self._event_idx:
            return not self.avail_flags() & VRING_AVAIL_F_NO_INTERRUPT
        valid = self._signalled_valid
        old = self._signalled_used
        new = self._signalled_used = self.used_idx
        self._signalled_valid = True
        used_event = self._load16(self._avail16, 2 + self.size)
        return not valid or vring_need_event(used_event, new, old)

    def disable_notification(self) -> None:
        """Ask the driver not to kick while we are processing (NO_NOTIFY; no-op with EVENT_IDX)."""
        if self._used is not None and not self._event_idx and not self.broken:
            self._store16(self._used16, 0, VRING_USED_F_NO_NOTIFY)

    def enable_notification(self) -> bool:
        """Re-arm driver kicks (avail_event with EVENT_IDX, else clear NO_NOTIFY); True if work arrived meanwhile."""
        if self._used is None or self.broken:
            return False
        if self._event_idx:
            self._store16(self._used16, 2 + 4 * self.size, self.avail_idx())
        else:
            self._store16(self._used16, 0, 0)
        memory_barrier()
        return self.has_pending()
