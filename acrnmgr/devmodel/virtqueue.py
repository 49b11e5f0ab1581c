"""Split virtqueue over guest memory (virtio 1.2 section 2.7), device side.

Sans-IO: the queue reads and writes guest memory through :class:`~acrnmgr.devmodel.memory.GuestMemory` views
and never touches a file descriptor.  Like rust-vmm's ``Queue``, it does not hold the guest memory: every call
that touches the ring takes the memory table (``pop(mem)``, ``push(mem, head, len)``...).  The ring views are
cached per memory-table generation (:attr:`GuestMemory.generation`), so the per-request path costs one integer
comparison for that.  Every value the driver controls is checked; a violation marks the queue *broken* (logged
once, ``broken_reason`` set) and makes :meth:`VirtQueue.pop` return None from then on.  Nothing guest-triggered
raises out of :meth:`pop`, :meth:`push`, :meth:`flush_used` or :meth:`should_notify`.

Whether the ring may be processed at all (started, enabled, not in NEEDS_RESET) is the transport's business
(:mod:`acrnmgr.devmodel.ringstate`); the queue itself only refuses to walk a ring it found corrupt.

Typical device loop (see ``VirtioDevice._drain``)::

    while True:
        vq.disable_notification(mem)
        while (chain := vq.pop(mem)) is not None:
            ...                                  # use chain.readable / chain.writable memoryviews
            vq.push(mem, chain.head, bytes_written)
        vq.flush_used(mem)
        if not vq.enable_notification(mem):      # re-arms kicks, then re-checks for a race with the driver
            break
    notify = vq.should_notify(mem)               # EVENT_IDX / NO_INTERRUPT decision for the call eventfd

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
import platform
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NamedTuple, Protocol

from . import features as F
from .memory import GuestMemory, GuestMemoryError, MemoryRegion
from .logs import get_logger

log = get_logger(__name__)

VRING_DESC_F_NEXT: Final = 1
VRING_DESC_F_WRITE: Final = 2
VRING_DESC_F_INDIRECT: Final = 4
VRING_AVAIL_F_NO_INTERRUPT: Final = 1
VRING_USED_F_NO_NOTIFY: Final = 1

MAX_QUEUE_SIZE: Final = 32768
DESC_SIZE: Final = 16

# Descriptor tables are read with struct: the driver fills a descriptor before it publishes the avail index, so
# nothing writes one while we read it.  Ring *fields* are different (see _resolve).
_DESC_STRUCTS = {order: struct.Struct(order + "QIHH") for order in ("<", ">")}
_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"


# indirect tables up to this many descriptors are unpacked in one call (bounded struct cache)
_FLAT_TABLE_MAX: Final = 256


# An indirect table of n <= _FLAT_TABLE_MAX descriptors is unpacked with one struct call into a flat tuple.
_TableEntry = tuple[Callable[[memoryview, int], tuple[int, ...]], tuple[int, ...], int]

# x86 (TSO) keeps stores in program order; elsewhere publishing needs an explicit barrier between element and index.
_STORES_ORDERED: Final = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_UNRESOLVED: Final = -1  # _gen value that matches no memory table: resolve on the next access

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


class InflightTracker(Protocol):
    """What ``VirtQueue.inflight`` accepts (acrnmgr.devmodel.inflight.InflightQueue implements it)."""

    def mark(self, head: int) -> None: ...

    def begin_put(self, head: int) -> None: ...

    def end_put(self, heads: Sequence[int], used_idx: int) -> None: ...


class DescriptorChain(NamedTuple):
    """One popped request: driver-readable buffers first, then device-writable buffers (zero-copy views).

    A named tuple: the queue builds one per request (with ``_new_chain``, which skips the generated __new__)."""

    head: int                    # index of the chain's first descriptor (the used element's id)
    readable: list[memoryview]   # driver-written buffers, in order
    writable: list[memoryview]   # device-writable buffers, in order
    readable_len: int            # total bytes of the readable buffers
    writable_len: int            # total bytes of the writable buffers

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={len(self.readable)}/{self.readable_len}B, "
                f"writable={len(self.writable)}/{self.writable_len}B)")


_new_chain = tuple.__new__


class VirtQueue:
    """Device side of one split virtqueue.

    Set-up used by the vhost-user transport: ``VirtQueue(size)`` (SET_VRING_NUM), ``set_features``
    (SET_FEATURES), ``set_addresses`` (SET_VRING_ADDR, guest-physical, checked against the memory table when one
    is given), ``last_avail_idx = n`` (SET_VRING_BASE; also the GET_VRING_BASE answer).  Any order works: the ring
    views are resolved on the first access with a memory table, and again whenever the table's generation changes
    (SET_MEM_TABLE); a ring that does not fit the table then breaks the queue.
    """

    __slots__ = (
        "_avail16", "_desc", "_desc_s", "_event_idx", "_flushed_heads", "_gen", "_indirect", "_inflight", "_last_avail",
        "_notify_on_empty", "_pending_notify", "_published_used", "_resubmit", "_shadow_avail", "_signalled_used",
        "_signalled_valid", "_swap", "_used16", "_used32", "_used_synced", "avail_gpa", "broken_reason", "byteorder",
        "desc_gpa", "features", "index", "legacy_big_endian", "notifier", "on_broken", "on_flush", "on_pop", "on_push",
        "size", "used_gpa", "used_idx", "_tables",
    )

    def __init__(self, size: int, index: int = 0) -> None:
        if not 1 <= size <= MAX_QUEUE_SIZE:
            raise ValueError(f"queue size {size} out of range 1..{MAX_QUEUE_SIZE}")
        self.index = index
        self.size = size
        self.desc_gpa: int | None = None
        self.avail_gpa: int | None = None
        self.used_gpa: int | None = None
        self.features = 0
        self.broken_reason: str | None = None
        self.legacy_big_endian = sys.byteorder == "big"
        self.on_pop: Callable[[int], None] | None = None
        self.on_push: Callable[[int], None] | None = None
        self.on_flush: Callable[[Sequence[int], int], None] | None = None
        self.on_broken: Callable[[VirtQueue], None] | None = None  # set by the device to raise NEEDS_RESET
        # Set by the transport: interrupts the driver now (writes the call eventfd).  With it, a device publishes
        # completions while it is still draining, so the driver refills the ring meanwhile (see VirtioDevice).
        self.notifier: Callable[[], None] | None = None
        self._inflight: InflightTracker | None = None
        self._resubmit: collections.deque[int] = collections.deque()
        self._flushed_heads: list[int] = []
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
        # Per indirect table length (bytes) found valid for this queue, with n <= _FLAT_TABLE_MAX descriptors:
        # (unpack of the whole table, the next fields 1..n-1 of a table laid out in order, n).  Bounded by
        # _FLAT_TABLE_MAX entries; one dict lookup per request replaces the length checks and the struct lookup.
        self._tables: dict[int, _TableEntry] = {}
        self._swap = order != _NATIVE_ORDER
        self._event_idx = F.has(self.features, F.F_RING_EVENT_IDX)
        self._indirect = F.has(self.features, F.F_RING_INDIRECT_DESC)
        self._notify_on_empty = F.has(self.features, F.F_NOTIFY_ON_EMPTY)

    def set_features(self, features: int) -> None:
        """Apply the negotiated features: EVENT_IDX, INDIRECT_DESC, NOTIFY_ON_EMPTY, VERSION_1 (endianness).
        EVENT_IDX changes the ring sizes, so the views are resolved again on the next access."""
        self.features = features
        self._select_structs()
        self._gen = _UNRESOLVED

    def set_vring_endian(self, big_endian: bool) -> None:
        """SET_VRING_ENDIAN: byte order used while VERSION_1 is not negotiated (default: this host's)."""
        self.legacy_big_endian = big_endian
        self._select_structs()

    def set_addresses(self, desc_gpa: int, avail_gpa: int, used_gpa: int, mem: GuestMemory | None = None) -> None:
        """Set the guest-physical ring addresses.  With ``mem`` they are resolved at once: GuestMemoryError if
        they are misaligned or do not fit (the queue is left unresolved, not broken)."""
        self.desc_gpa, self.avail_gpa, self.used_gpa = desc_gpa, avail_gpa, used_gpa
        self._used_synced = False
        self._clear_ring_views()
        if mem is not None:
            self._resolve(mem, strict=True)

    def _clear_ring_views(self) -> None:
        self._gen = _UNRESOLVED
        self._desc: memoryview | None = None
        self._avail16: memoryview | None = None
        self._used16: memoryview | None = None
        self._used32: memoryview | None = None

    def _resolve(self, mem: GuestMemory, strict: bool = False) -> None:
        """(Re)build the ring views for memory table ``mem``; they stay valid while ``mem.generation`` does."""
        self._clear_ring_views()
        self._gen = mem.generation
        if self.desc_gpa is None or self.avail_gpa is None or self.used_gpa is None:
            return
        n = self.size
        ev = 2 if self._event_idx else 0  # used_event / avail_event exist only with EVENT_IDX
        try:
            if self.desc_gpa % 16 or self.avail_gpa % 2 or self.used_gpa % 4:
                raise GuestMemoryError("misaligned ring address")
            desc = mem.view(self.desc_gpa, DESC_SIZE * n)
            avail = mem.view(self.avail_gpa, 4 + 2 * n + ev)
            used = mem.view(self.used_gpa, 4 + 8 * n + ev, writable=True)
        except GuestMemoryError as e:
            if strict:
                self._gen = _UNRESOLVED
                raise
            self.mark_broken(f"ring not in guest memory: {e}")
            return
        # The driver reads and writes ring fields concurrently from another CPU.  struct.pack_into zero-fills a
        # field before writing it (a reader can see used->idx == 0) and struct reads go byte by byte (a reader
        # can see half an index), so every field shared with the driver goes through these typed views: one
        # aligned load or store of the field's full width (memoryview item access is a fixed-size memcpy).
        # The ring addresses are aligned (checked above) and regions are page-aligned mappings.
        #   avail16: flags [0], idx [1], ring [2 + i], used_event [2 + size]
        #   used16:  flags [0], idx [1], avail_event [2 + 4 * size];  used32: elem i = id [1 + 2i], len [2 + 2i]
        # A broken queue keeps its avail/used views (completions pushed before the break are still published)
        # but no descriptor table: pop() checks only that.
        self._desc = None if self.broken_reason is not None else desc
        self._avail16 = avail.cast("H")
        self._used16 = used.cast("H")
        self._used32 = used[:4 + 8 * n].cast("I")
        if not self._used_synced:
            # Like libvhost-user: on (re)configuration we continue from the used index the ring already holds.
            self.used_idx = self._published_used = self._load16(self._used16, 1)
            self._used_synced = True

    # Single full-width loads and stores of ring fields, in the ring's byte order.
    def _load16(self, view: memoryview, i: int) -> int:
        v: int = view[i]
        return _bswap16(v) if self._swap else v

    def _store16(self, view: memoryview, i: int, v: int) -> None:
        view[i] = _bswap16(v) if self._swap else v

    def reset(self) -> None:
        """Forget everything guest-provided (device reset / RESET_OWNER)."""
        self.broken_reason = None
        self.desc_gpa = self.avail_gpa = self.used_gpa = None
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
    def broken(self) -> bool:
        """The driver broke the ring protocol (``broken_reason`` says how); pop() returns None from then on."""
        return self.broken_reason is not None

    def ready(self, mem: GuestMemory) -> bool:
        """Resolved in ``mem`` and not broken: pop() may return chains."""
        if mem.generation != self._gen:
            self._resolve(mem)
        return self._desc is not None

    def mark_broken(self, reason: str) -> None:
        if self.broken_reason is None:
            self.broken_reason = reason
            self._desc = None
            log.warning("virtqueue %d broken: %s", self.index, reason)
            if self.on_broken is not None:
                self.on_broken(self)

    def set_used_idx(self, idx: int) -> None:
        """Restore the used index (reconnect with in-flight state); it is not read back from the ring then."""
        self.used_idx = self._published_used = idx & 0xFFFF
        self._used_synced = True
        self._signalled_valid = False

    def resubmit(self, heads: Iterable[int]) -> None:
        """Queue descriptor heads that were in flight before a reconnect; pop() returns them first."""
        self._resubmit.extend(heads)

    @property
    def inflight(self) -> InflightTracker | None:
        return self._inflight

    @inflight.setter
    def inflight(self, region: InflightTracker | None) -> None:
        """Bind an in-flight tracker (mark / begin_put / end_put) or None; sets the on_* hooks accordingly."""
        self._inflight = region
        if region is None:
            self.on_pop = self.on_push = self.on_flush = None
        else:
            self.on_pop, self.on_push, self.on_flush = region.mark, region.begin_put, region.end_put
        self._flushed_heads.clear()

    # -- avail side -----------------------------------------------------------------------------------------
    def avail_idx(self, mem: GuestMemory) -> int | None:
        """The driver's avail->idx, or None while the ring is not resolved in ``mem``."""
        if mem.generation != self._gen:
            self._resolve(mem)
        avail16 = self._avail16
        return None if avail16 is None else self._load16(avail16, 1)

    @property
    def known_pending(self) -> int:
        """Chains the driver has made available that pop() has not taken yet, as of the last avail idx read
        (no memory access: a cheap lower bound of the work left)."""
        return (self._shadow_avail - self._last_avail) & 0xFFFF

    def refresh_pending(self, mem: GuestMemory) -> int:
        """Re-read the driver's avail idx (one load) and return :attr:`known_pending`; never raises (a bad index
        is left for pop() to report)."""
        if mem.generation != self._gen:
            self._resolve(mem)
        avail16 = self._avail16
        if avail16 is not None and self.broken_reason is None:
            idx = avail16[1]
            if self._swap:
                idx = _bswap16(idx)
            if (idx - self._last_avail) & 0xFFFF <= self.size:
                self._shadow_avail = idx
        return (self._shadow_avail - self._last_avail) & 0xFFFF

    def has_pending(self, mem: GuestMemory) -> bool:
        """Whether pop() would find work (never raises; False when not ready)."""
        if not self.ready(mem):
            return False
        if self._resubmit:
            return True
        return self.avail_idx(mem) != self._last_avail

    def pop(self, mem: GuestMemory) -> DescriptorChain | None:
        """Take the next available chain, fully validated; None if there is none or the queue is (now) broken."""
        chains = self.pop_batch(mem, 1)
        return chains[0] if chains else None

    def pop_batch(self, mem: GuestMemory, limit: int) -> list[DescriptorChain]:
        """Take up to ``limit`` available chains (resubmitted ones first), fully validated, with one read of the
        avail index; [] if there is none or the queue is (now) broken.  A bad chain after good ones is left in
        the ring, so the good ones are served and the next call breaks the queue on it."""
        if mem.generation != self._gen:
            self._resolve(mem)
        table = self._desc
        chains: list[DescriptorChain] = []
        if table is None:
            return chains
        on_pop = self.on_pop
        resubmit = self._resubmit
        try:
            while resubmit and len(chains) < limit:
                head = resubmit[0]
                if not 0 <= head < self.size:
                    raise QueueBroken(f"resubmitted head {head} >= queue size {self.size}")
                chains.append(self._walk(mem, table, head))
                resubmit.popleft()
            avail16 = self._avail16
            assert avail16 is not None  # resolved together with _desc
            last = self._last_avail
            shadow = avail16[1]
            if self._swap:
                shadow = _bswap16(shadow)
            if (shadow - last) & 0xFFFF > self.size:
                raise QueueBroken(f"avail idx {shadow} jumped more than queue size {self.size} past {last}")
            self._shadow_avail = shadow
            size, swap = self.size, self._swap
            while last != shadow and len(chains) < limit:
                head = avail16[2 + last % size]
                if swap:
                    head = _bswap16(head)
                chains.append(self._walk(mem, table, head))
                last = self._last_avail = (last + 1) & 0xFFFF
                if on_pop is not None:
                    on_pop(head)
            return chains
        except QueueBroken as e:
            if not chains:
                self.mark_broken(str(e))
        except Exception as e:  # defensive: a bug here must not take the server down
            log.exception("unexpected error walking virtqueue %d", self.index)
            self.mark_broken(f"internal error: {e!r}")
        return chains

    def chain(self, mem: GuestMemory, head: int) -> DescriptorChain | None:
        """Walk the chain at ``head`` again, fully validated: one the device popped and still holds (an event
        buffer it completes later), whose views may predate a change of the memory table.  None if the queue is
        (now) broken; the driver must not change a chain it made available, so a bad walk breaks the queue."""
        if mem.generation != self._gen:
            self._resolve(mem)
        table = self._desc
        if table is None:
            return None
        try:
            return self._walk(mem, table, head)
        except QueueBroken as e:
            self.mark_broken(str(e))
        return None

    def unpop(self) -> None:
        """Give back the last popped chain (e.g. RX with no packet to deliver). Not for resubmitted chains."""
        self._last_avail = (self._last_avail - 1) & 0xFFFF

    def _walk(self, mem: GuestMemory, table: memoryview, head: int) -> DescriptorChain:
        """Follow the chain from ``head``: every descriptor checked, each buffer a view of ONE memory region.

        The hot path of every device, so it avoids per-descriptor calls: the memory region of the previous
        buffer is tried first inline (a chain's buffers nearly always share one), and an indirect table is
        unpacked with one struct call into a flat tuple (addr, len, flags, next) * n."""
        size = self.size
        if head >= size:
            raise QueueBroken(f"head index {head} >= queue size {size}")
        addr, length, flags, nxt = self._desc_s.unpack_from(table, head * DESC_SIZE)
        if flags & VRING_DESC_F_INDIRECT:
            if not self._indirect:
                raise QueueBroken("INDIRECT descriptor without VIRTIO_F_RING_INDIRECT_DESC")
            if flags & VRING_DESC_F_NEXT:
                raise QueueBroken(f"descriptor {head} has both INDIRECT and NEXT")
            entry = self._tables.get(length)
            if entry is None:
                if length == 0 or length % DESC_SIZE or length > size * DESC_SIZE:
                    raise QueueBroken(f"indirect table length {length} invalid for queue size {size}")
                entry = self._table_entry(length)
            region = mem.last_region
            off = addr - region.gpa
            if off < 0 or off > region.size - length:
                try:
                    region = mem.region(addr, length)
                except GuestMemoryError as e:
                    raise QueueBroken(f"indirect table: {e}") from None
                off = addr - region.gpa
            flat = entry is not None
            if entry is not None:
                unpack_table, in_order, limit = entry
                descs = unpack_table(region.ro, off)
                if descs[3:4 * limit - 4:4] == in_order:  # how Linux fills a table
                    return self._walk_in_order(mem, head, descs, limit)
            else:
                limit = length // DESC_SIZE
                descs = ()
                table = region.ro[off:off + length]
            i = 0
            indirect = True
        else:
            limit = size
            flat = False
            descs = ()
            i = head
            indirect = False
        unpack = self._desc_s.unpack_from
        region = mem.last_region
        rgpa, rsize = region.gpa, region.size
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        rlen = wlen = 0
        count = 0
        while True:
            count += 1
            if count > limit:
                raise QueueBroken(f"descriptor chain from head {head} longer than {limit} (loop?)")
            if flat:
                k = 4 * i
                addr, length, flags, nxt = descs[k], descs[k + 1], descs[k + 2], descs[k + 3]
            elif indirect or count > 1:
                addr, length, flags, nxt = unpack(table, i * DESC_SIZE)
            if flags & VRING_DESC_F_INDIRECT and (indirect or count > 1):
                if indirect:
                    raise QueueBroken(f"indirect descriptor inside an indirect table (head {head})")
                raise QueueBroken(f"indirect descriptor {i} is not the head of its chain")
            write = flags & VRING_DESC_F_WRITE
            if writable and not write:
                raise QueueBroken(f"readable descriptor {i} after a writable one (head {head})")
            if length:
                off = addr - rgpa
                if off < 0 or off > rsize - length:
                    region = self._region(mem, addr, length, i, head)
                    rgpa, rsize = region.gpa, region.size
                    off = addr - rgpa
                if write:
                    writable.append(region.rw[off:off + length])
                    wlen += length
                else:
                    readable.append(region.ro[off:off + length])
                    rlen += length
            if not flags & VRING_DESC_F_NEXT:
                return _new_chain(DescriptorChain, (head, readable, writable, rlen, wlen))
            if nxt >= limit:
                raise QueueBroken(f"next index {nxt} >= table size {limit} (head {head})")
            i = nxt

    def _table_entry(self, length: int) -> _TableEntry | None:
        """Cache and return the _tables entry of a valid indirect table length; None past _FLAT_TABLE_MAX."""
        n = length // DESC_SIZE
        if n > _FLAT_TABLE_MAX:
            return None
        entry = self._tables[length] = (struct.Struct(self.byteorder + "QIHH" * n).unpack_from, tuple(range(1, n)), n)
        return entry

    def _walk_in_order(self, mem: GuestMemory, head: int, descs: tuple[int, ...], n: int) -> DescriptorChain:
        """_walk over an unpacked indirect table whose descriptor i links to i + 1: the chain is the table in
        order, so no index needs following or bounding (the same checks, fewer steps)."""
        region = mem.last_region
        rgpa, rsize = region.gpa, region.size
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        rlen = wlen = 0
        for k in range(0, 4 * n, 4):
            addr, length, flags = descs[k], descs[k + 1], descs[k + 2]
            if flags & VRING_DESC_F_INDIRECT:
                raise QueueBroken(f"indirect descriptor inside an indirect table (head {head})")
            write = flags & VRING_DESC_F_WRITE
            if writable and not write:
                raise QueueBroken(f"readable descriptor {k // 4} after a writable one (head {head})")
            if length:
                off = addr - rgpa
                if off < 0 or off > rsize - length:
                    region = self._region(mem, addr, length, k // 4, head)
                    rgpa, rsize = region.gpa, region.size
                    off = addr - rgpa
                if write:
                    writable.append(region.rw[off:off + length])
                    wlen += length
                else:
                    readable.append(region.ro[off:off + length])
                    rlen += length
            if not flags & VRING_DESC_F_NEXT:
                return _new_chain(DescriptorChain, (head, readable, writable, rlen, wlen))
        nxt = descs[4 * n - 1]  # the last descriptor says NEXT: following it would revisit or leave the table
        if nxt >= n:
            raise QueueBroken(f"next index {nxt} >= table size {n} (head {head})")
        raise QueueBroken(f"descriptor chain from head {head} longer than {n} (loop?)")

    @staticmethod
    def _region(mem: GuestMemory, addr: int, length: int, i: int, head: int) -> MemoryRegion:
        try:
            return mem.region(addr, length)
        except GuestMemoryError as e:
            raise QueueBroken(f"descriptor {i} of head {head}: {e}") from None

    # -- used side ------------------------------------------------------------------------------------------
    def push(self, mem: GuestMemory, head: int, written_len: int) -> None:
        """Record a completed chain in the used ring (visible to the driver after flush_used())."""
        if mem.generation != self._gen:
            self._resolve(mem)
        used32 = self._used32
        if used32 is None or self.broken_reason is not None:
            return
        if self.on_push is not None:
            self.on_push(head)
            self._flushed_heads.append(head)
        # The element is written now, each field with one 32-bit store; the driver only looks at it once
        # flush_used() has published an index past it.
        slot = 1 + 2 * (self.used_idx % self.size)
        written_len &= 0xFFFFFFFF
        if self._swap:
            head, written_len = _bswap32(head), _bswap32(written_len)
        used32[slot] = head
        used32[slot + 1] = written_len
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def flush_used(self, mem: GuestMemory) -> None:
        """Publish the used index (one write for a batch of push()es)."""
        if mem.generation != self._gen:
            self._resolve(mem)
        used16 = self._used16
        if used16 is None or self.used_idx == self._published_used:
            return
        # Publication order: the elements (push) first, then used->idx with ONE 16-bit store, never a zero-fill
        # followed by a write (struct.pack_into), or a driver polling the index sees it go back to 0.  x86 keeps
        # stores in program order; other CPUs need a barrier between the element stores and the index store.
        if not _STORES_ORDERED:
            memory_barrier()
        self._store16(used16, 1, self.used_idx)
        self._published_used = self.used_idx
        self._pending_notify = True
        if self.on_flush is not None and self._flushed_heads:
            heads, self._flushed_heads = self._flushed_heads, []
            self.on_flush(heads, self.used_idx)

    def publish_early(self, mem: GuestMemory, unpublished: int, held: int = 0) -> bool:
        """Publish while still draining: once the ``unpublished`` completions pushed since the last flush are as
        many as the requests still waiting (``held`` popped but not yet served, plus those in the ring, the avail
        idx re-read), flush them and interrupt the driver if it asked to be (EVENT_IDX: it sets used_event when it
        goes idle) through :attr:`notifier`.  So the driver refills the ring while the device works on the rest,
        at about one interrupt per half ring.  True if it published; never without a notifier."""
        notifier = self.notifier
        if (notifier is None or unpublished < held + self.known_pending
                or unpublished < held + self.refresh_pending(mem)):
            return False
        self.flush_used(mem)
        if self.should_notify(mem):
            notifier()
        return True

    def should_notify(self, mem: GuestMemory) -> bool:
        """Whether the driver must be interrupted for what flush_used() published since the last call."""
        if mem.generation != self._gen:
            self._resolve(mem)
        avail16 = self._avail16
        if avail16 is None or not self._pending_notify:
            return False
        self._pending_notify = False
        memory_barrier()  # used idx store must be visible before we read the driver's used_event / flags
        if self._notify_on_empty and not self._resubmit and self._load16(avail16, 1) == self._last_avail:
            return True
        if not self._event_idx:
            return not self._load16(avail16, 0) & VRING_AVAIL_F_NO_INTERRUPT
        valid = self._signalled_valid
        old = self._signalled_used
        new = self._signalled_used = self.used_idx
        self._signalled_valid = True
        used_event = self._load16(avail16, 2 + self.size)
        return not valid or vring_need_event(used_event, new, old)

    def disable_notification(self, mem: GuestMemory) -> None:
        """Ask the driver not to kick while we are processing (NO_NOTIFY; no-op with EVENT_IDX)."""
        if mem.generation != self._gen:
            self._resolve(mem)
        if self._used16 is not None and not self._event_idx and self.broken_reason is None:
            self._store16(self._used16, 0, VRING_USED_F_NO_NOTIFY)

    def enable_notification(self, mem: GuestMemory) -> bool:
        """Re-arm driver kicks (avail_event with EVENT_IDX, else clear NO_NOTIFY); True if work arrived meanwhile."""
        if mem.generation != self._gen:
            self._resolve(mem)
        used16, avail16 = self._used16, self._avail16
        if used16 is None or avail16 is None or self.broken_reason is not None:
            return False
        if self._event_idx:
            self._store16(used16, 2 + 4 * self.size, self._load16(avail16, 1))
        else:
            self._store16(used16, 0, 0)
        memory_barrier()
        return self.has_pending(mem)
