"""QEMU's inflight I/O tracking buffer for split virtqueues (vhost-user GET/SET_INFLIGHT_FD).

The back-end allocates one shared memfd with a region per queue and hands it to the front-end,
which keeps it across back-end restarts and gives it back with SET_INFLIGHT_FD. While serving a
queue the back-end marks each popped head inflight (with a global fetch counter) and clears it once
the head is in the used ring; after a restart it resubmits the heads still marked, oldest first.

Layout per queue (QEMU's docs/interop/vhost-user.rst, "Inflight I/O tracking"), native = little-endian:
    u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16 used_idx,
    then desc_num x DescStateSplit {u8 inflight, u8 pad[5], u16 next, u64 counter}.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Sequence

from acrnmgr.devmodel.memory import check_shared_fd
from acrnmgr.devmodel.logs import get_logger

log = get_logger(__name__)

VERSION = 1
ALIGN = 64
_HEADER = struct.Struct("<QHHHH")
_DESC = struct.Struct("<B5xHQ")
_COUNTER = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_DESC0 = _HEADER.size  # offset of desc[0] inside a queue region
_OFF_VERSION = 8
_OFF_DESC_NUM = 10
_OFF_LAST_BATCH = 12
_OFF_USED_IDX = 14


class InflightError(ValueError):
    """The front-end described an inflight buffer we cannot use."""


def queue_region_size(queue_size: int) -> int:
    """Bytes one queue's region takes, rounded up to a 64-byte boundary."""
    raw = _HEADER.size + _DESC.size * queue_size
    return (raw + ALIGN - 1) // ALIGN * ALIGN


class InflightQueue:
    """One queue's region of the shared buffer. Every index read from it is bounds-checked:
    the buffer outlives us and a corrupt one must not make recovery crash."""

    __slots__ = ("_buf", "_counter", "_size")

    def __init__(self, buf: memoryview, queue_size: int) -> None:
        self._buf = buf
        self._size = queue_size
        self._counter = 0

    @property
    def queue_size(self) -> int:
        return self._size

    @property
    def used_idx(self) -> int:
        return int(_U16.unpack_from(self._buf, _OFF_USED_IDX)[0])

    def is_inflight(self, head: int) -> bool:
        return self._buf[_DESC0 + head * _DESC.size] == 1

    def inflight_heads(self) -> list[int]:
        return [h for h in range(self._size) if self.is_inflight(h)]

    def _initialise(self) -> None:
        self._buf[: _DESC0 + _DESC.size * self._size] = bytes(_DESC0 + _DESC.size * self._size)
        _HEADER.pack_into(self._buf, 0, 0, VERSION, self._size, 0, 0)
        self._counter = 0

    def mark(self, head: int) -> None:
        """`head` was fetched from the avail ring."""
        off = _DESC0 + head * _DESC.size
        _COUNTER.pack_into(self._buf, off + 8, self._counter)
        self._counter += 1
        self._buf[off] = 1

    def begin_put(self, head: int) -> None:
        """`head` is about to be written to the used ring: link it into the last-batch list so a
        crash between the used-index update and `end_put` can be undone on recovery."""
        _U16.pack_into(self._buf, _DESC0 + head * _DESC.size + 6, _U16.unpack_from(self._buf, _OFF_LAST_BATCH)[0])
        _U16.pack_into(self._buf, _OFF_LAST_BATCH, head)

    def end_put(self, heads: Sequence[int], used_idx: int) -> None:
        """`heads` are now visible in the used ring whose index is `used_idx`."""
        buf = self._buf
        for head in heads:
            buf[_DESC0 + head * _DESC.size] = 0
        _U16.pack_into(buf, _OFF_USED_IDX, used_idx & 0xFFFF)

    def recover(self, ring_used_idx: int) -> list[int]:
        """Reconcile with the used ring after a (re)connect and return the heads to resubmit,
        in fetch order. A fresh (version 0) or mismatched region is (re)initialised."""
        version, desc_num = _U16.unpack_from(self._buf, _OFF_VERSION)[0], _U16.unpack_from(self._buf, _OFF_DESC_NUM)[0]
        if version != VERSION or desc_num != self._size:
            if version != 0:
                log.warning("inflight region version %d / %d descriptors does not fit queue size %d; resetting",
                            version, desc_num, self._size)
            self._initialise()
            _U16.pack_into(self._buf, _OFF_USED_IDX, ring_used_idx & 0xFFFF)
            return []
        stale = (ring_used_idx - self.used_idx) & 0xFFFF
        if stale:
            # The last batch reached the used ring but its inflight flags were not cleared yet.
            head = _U16.unpack_from(self._buf, _OFF_LAST_BATCH)[0]
            for _ in range(min(stale, self._size)):
                if head >= self._size:
                    break
                off = _DESC0 + head * _DESC.size
                self._buf[off] = 0
                head = _U16.unpack_from(self._buf, off + 6)[0]
            _U16.pack_into(self._buf, _OFF_USED_IDX, ring_used_idx & 0xFFFF)
        pending = []
        for head in range(self._size):
            off = _DESC0 + head * _DESC.size
            if self._buf[off] == 1:
                pending.append((_COUNTER.unpack_from(self._buf, off + 8)[0], head))
            elif self._buf[off] != 0:
                self._buf[off] = 0
        pending.sort()
        self._counter = pending[-1][0] + 1 if pending else 0
        return [head for _, head in pending]


class InflightArea:
    """The whole shared buffer: `num_queues` regions of `queue_region_size(queue_size)` bytes."""

    def __init__(self, fd: int, mmap_size: int, mmap_offset: int, num_queues: int, queue_size: int) -> None:
        if num_queues < 1 or queue_size < 1 or queue_size > 32768:
            raise InflightError(f"bad inflight geometry: {num_queues} queues of {queue_size}")
        need = queue_region_size(queue_size) * num_queues
        if mmap_size < need:
            raise InflightError(f"inflight buffer of {mmap_size} bytes is smaller than the {need} needed")
        if mmap_offset % mmap.PAGESIZE:
            raise InflightError(f"inflight mmap offset {mmap_offset} is not page aligned")
        try:
            check_shared_fd(fd, mmap_offset, mmap_size, "inflight buffer")
        except ValueError as exc:
            raise InflightError(str(exc)) from exc
        self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=mmap_offset)
        self.mmap_size = mmap_size
        self.num_queues = num_queues
        self.queue_size = queue_size
        self._view = memoryview(self._map)
        step = queue_region_size(queue_size)
        self._queues = [InflightQueue(self._view[i * step:(i + 1) * step], queue_size) for i in range(num_queues)]

    @classmethod
    def create(cls, num_queues: int, queue_size: int) -> tuple[InflightArea, int]:
        """A zeroed buffer in a fresh memfd; returns the area and the fd (the caller sends and closes it)."""
        if num_queues < 1 or queue_size < 1 or queue_size > 32768:
            raise InflightError(f"bad inflight geometry: {num_queues} queues of {queue_size}")
        size = queue_region_size(queue_size) * num_queues
        size = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        fd = os.memfd_create("acrnmgr-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            # Sealed as QEMU seals guest RAM: the front-end keeps this fd and hands it back after a restart,
            # and a buffer it could shrink would be refused then.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            return cls(fd, size, 0, num_queues, queue_size), fd
        except BaseException:
            os.close(fd)
            raise

    def queue(self, index: int) -> InflightQueue | None:
        return self._queues[index] if 0 <= index < len(self._queues) else None

    def close(self) -> None:
        for q in self._queues:
            q._buf.release()
        self._queues = []
        self._view.release()
        self._map.close()
