"""A Python test driver that plays the guest: it lays out a split virtqueue in memfd-backed guest memory,
posts descriptor chains (direct or indirect), and reads back the used ring.

The guest RAM region sits between two guard pages of the same memfd that are NOT part of guest memory; tests
check that the guard bytes never change, i.e. the device model never touched memory outside the region.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.memory import GuestMemory
from acrnmgr.devmodel.virtqueue import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VirtQueue

PAGE = mmap.PAGESIZE
GUARD = 0xA5
RAM_GPA = 0x100000


class GuestRam:
    """Guest memory: one region of ``size`` bytes at RAM_GPA, mapped from a memfd between two guard pages."""

    def __init__(self, size: int = 1 << 20):
        self.size = size
        self.fd = os.memfd_create("test-guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size + 2 * PAGE)
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)  # the device model refuses unsealed memfds
        self.raw = mmap.mmap(self.fd, size + 2 * PAGE, flags=mmap.MAP_SHARED)
        self.raw[:PAGE] = bytes([GUARD]) * PAGE
        self.raw[PAGE + size:] = bytes([GUARD]) * PAGE
        self.mem = GuestMemory()
        self.mem.add_region(RAM_GPA, size, 0x7F00_0000_0000, PAGE, self.fd)
        self._next = RAM_GPA

    def guards_intact(self) -> bool:
        g = bytes([GUARD]) * PAGE
        return self.raw[:PAGE] == g and self.raw[PAGE + self.size:] == g

    def off(self, gpa: int) -> int:
        assert RAM_GPA <= gpa <= RAM_GPA + self.size
        return PAGE + gpa - RAM_GPA

    def alloc(self, n: int, align: int = 16) -> int:
        gpa = (self._next + align - 1) // align * align
        assert gpa + n <= RAM_GPA + self.size, "test guest RAM exhausted"
        self._next = gpa + n
        return gpa

    def write(self, gpa: int, data: bytes) -> None:
        o = self.off(gpa)
        self.raw[o:o + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        o = self.off(gpa)
        return bytes(self.raw[o:o + n])

    def close(self) -> None:
        self.mem.close()
        self.raw.close()
        os.close(self.fd)


class Rings:
    """The RingAccess a device's io callback gets from the transport; here every queue the device has attached
    runs, over this guest memory."""

    def __init__(self, mem: GuestMemory, queues: dict[int, VirtQueue]):
        self.mem = mem
        self.queues = queues

    def ring(self, qidx: int) -> tuple[VirtQueue, GuestMemory] | None:
        vq = self.queues.get(qidx)
        return None if vq is None else (vq, self.mem)


class GuestQueue:
    """Driver side of one split virtqueue in GuestRam, plus the device-side VirtQueue wired to it."""

    def __init__(self, ram: GuestRam, size: int = 16, features: int = F.COMMON_FEATURES, big_endian: bool = False,
                 index: int = 0):
        self.ram = ram
        self.size = size
        self.features = features
        order = ">" if big_endian and not F.has(features, F.F_VERSION_1) else "<"
        self.desc_s = struct.Struct(order + "QIHH")
        self.u16 = struct.Struct(order + "H")
        self.elem = struct.Struct(order + "II")
        self.desc = ram.alloc(16 * size, 16)
        self.avail = ram.alloc(6 + 2 * size, 2)
        self.used = ram.alloc(6 + 8 * size, 4)
        self.avail_idx = 0
        self.last_used = 0
        self.free = list(range(size))
        self.chain_of: dict[int, list[int]] = {}
        self.mem = ram.mem
        self.vq = VirtQueue(size, index)
        if big_endian:
            self.vq.set_vring_endian(True)
        self.vq.set_features(features)
        self.vq.set_addresses(self.desc, self.avail, self.used, ram.mem)

    # -- raw ring access ------------------------------------------------------------------------------------
    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int, table: int | None = None) -> None:
        self.ram.write((self.desc if table is None else table) + 16 * i, self.desc_s.pack(addr, length, flags, nxt))

    def set_avail_flags(self, flags: int) -> None:
        self.ram.write(self.avail, self.u16.pack(flags))

    def set_used_event(self, idx: int) -> None:
        self.ram.write(self.avail + 4 + 2 * self.size, self.u16.pack(idx & 0xFFFF))

    def avail_event(self) -> int:
        return self.u16.unpack(self.ram.read(self.used + 4 + 8 * self.size, 2))[0]

    def used_flags(self) -> int:
        return self.u16.unpack(self.ram.read(self.used, 2))[0]

    def used_idx(self) -> int:
        return self.u16.unpack(self.ram.read(self.used + 2, 2))[0]

    def publish(self, head: int) -> None:
        self.ram.write(self.avail + 4 + 2 * (self.avail_idx % self.size), self.u16.pack(head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.ram.write(self.avail + 2, self.u16.pack(self.avail_idx))

    # -- chains ---------------------------------------------------------------------------------------------
    def buf(self, data: bytes | int, writable: bool = False) -> tuple[int, int, bool]:
        """Allocate a buffer: ``data`` bytes (driver-readable) or an int size (zeroed). Returns (gpa, len, w)."""
        if isinstance(data, int):
            gpa = self.ram.alloc(max(data, 1))
            self.ram.write(gpa, bytes(data))
            return gpa, data, writable
        gpa = self.ram.alloc(max(len(data), 1))
        self.ram.write(gpa, data)
        return gpa, len(data), writable

    def add(self, bufs: list[tuple[int, int, bool]], indirect: bool = False, publish: bool = True) -> int:
        """Post a chain of (gpa, len, writable) buffers; returns the head descriptor index."""
        if indirect:
            table = self.ram.alloc(16 * len(bufs), 16)
            for i, (gpa, n, w) in enumerate(bufs):
                last = i == len(bufs) - 1
                self.write_desc(i, gpa, n, (VRING_DESC_F_WRITE if w else 0) | (0 if last else VRING_DESC_F_NEXT),
                                0 if last else i + 1, table=table)
            head = self.free.pop(0)
            self.write_desc(head, table, 16 * len(bufs), VRING_DESC_F_INDIRECT, 0)
            self.chain_of[head] = [head]
        else:
            ids = [self.free.pop(0) for _ in bufs]
            for k, (gpa, n, w) in enumerate(bufs):
                last = k == len(bufs) - 1
                self.write_desc(ids[k], gpa, n, (VRING_DESC_F_WRITE if w else 0) | (0 if last else VRING_DESC_F_NEXT),
                                0 if last else ids[k + 1])
            head = ids[0]
            self.chain_of[head] = ids
        if publish:
            self.publish(head)
        return head

    def get_used(self) -> list[tuple[int, int]]:
        """New used elements (id, len) since the last call; recycles their descriptors."""
        out = []
        end = self.used_idx()
        while self.last_used != end:
            slot = self.last_used % self.size
            out.append(self.elem.unpack(self.ram.read(self.used + 4 + 8 * slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        for head, _ in out:
            self.free.extend(self.chain_of.pop(head, []))
        return out
