"""Guest memory: the regions the frontend shares with us, and bounds-checked zero-copy views into them.

Every guest-supplied address goes through :meth:`GuestMemory.view`, which only hands out a slice that lies
entirely inside ONE mapped region.  Python ints cannot overflow, but guest values are up to 2**64, so the checks
are written as ``offset <= size - length`` rather than ``gpa + length <= end`` anyway, keeping the intent clear.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import stat
import struct
from collections.abc import Iterator

PAGE_SIZE = mmap.PAGESIZE

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


# Generations are unique across all GuestMemory objects, so a cache keyed by one never mistakes a new table for an
# old one (not even a new table allocated at a dead one's address).
_generations: Iterator[int] = itertools.count()


class GuestMemoryError(ValueError):
    """A guest address range is not fully inside one mapped region (a ValueError: bad input from the peer)."""


def is_memfd(fd: int) -> bool:
    """Whether ``fd`` is a memfd (its /proc/self/fd link reads ``/memfd:NAME (deleted)``)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    except OSError:
        # No /proc: a file that knows about seals is a memfd (or a shmem file, which is sealed the same way).
        try:
            fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            return False
        return True


def check_shared_fd(fd: int, offset: int, size: int, what: str) -> None:
    """Refuse a front-end fd that could take its memory away while we have it mapped.

    Accessing a MAP_SHARED mapping past the end of its file raises SIGBUS, which kills the process.  So the
    file must be a regular file (memfd, tmpfs, hugetlbfs, a disk file) that holds ``offset + size`` bytes
    now, and a memfd must be sealed against shrinking (F_SEAL_SHRINK, as QEMU's memory-backend-memfd and our
    own inflight buffer are), so that its size stays.  Other files cannot be sealed: their owner could still
    truncate them, which is why the front-end is trusted not to (README, "Security").
    Raises ValueError with the reason."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ValueError(f"{what}: fd {fd}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what}: fd {fd} is not a memory file (memfd, tmpfs or hugetlbfs file)")
    if is_memfd(fd):
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            raise ValueError(f"{what}: cannot read the seals of memfd {fd}: {exc.strerror}") from exc
        if not seals & fcntl.F_SEAL_SHRINK:
            raise ValueError(f"{what}: memfd {fd} is not sealed against shrinking (F_SEAL_SHRINK); "
                             f"refusing to map memory the front-end could truncate under us")
    if st.st_size < offset + size:
        raise ValueError(f"{what}: fd {fd} holds {st.st_size} bytes, less than offset {offset:#x} + size {size:#x}")


class MemoryRegion:
    """One contiguous range of guest-physical memory, backed by an mmap (or a test buffer).

    ``rw`` is a writable memoryview of exactly ``size`` bytes, ``ro`` a read-only one over the same memory.
    """

    __slots__ = ("_mm", "gpa", "mmap_offset", "ro", "rw", "size", "uva")

    def __init__(self, gpa: int, size: int, uva: int, mmap_offset: int, rw: memoryview, mm: mmap.mmap | None) -> None:
        self.gpa = gpa
        self.size = size
        self.uva = uva
        self.mmap_offset = mmap_offset
        self.rw = rw
        self.ro = rw.toreadonly()
        self._mm = mm

    def __repr__(self) -> str:
        return f"MemoryRegion(gpa={self.gpa:#x}, size={self.size:#x}, uva={self.uva:#x})"

    def close(self) -> None:
        self.ro.release()
        self.rw.release()
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                # A chain or ring still holds a slice; the mapping goes away when the last one is dropped.
                pass
            self._mm = None


_NO_REGION = MemoryRegion(0, 0, 0, 0, memoryview(bytearray(0)), None)  # holds no non-empty range


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value < 1 << 64:
        raise GuestMemoryError(f"{name} {value:#x} is not a u64")


class GuestMemory:
    """A set of non-overlapping guest memory regions.

    Translation: guest-physical (``view``) and frontend-virtual (``uva_to_gpa``) addresses.
    The transport converts vring addresses (frontend virtual) with :meth:`uva_to_gpa`.

    ``generation`` changes whenever the set of regions does (and on close): views derived from the table (the
    virtqueues' cached ring views) are valid while it stays the same.
    """

    def __init__(self) -> None:
        self.regions: list[MemoryRegion] = []
        self._last: MemoryRegion | None = None
        # The region the last lookup found (an empty one before any): a hint for callers that check ranges
        # against it inline and call region() when the range is not inside it.  An attribute, not a property:
        # the descriptor walk reads it per request.
        self.last_region = _NO_REGION
        self.generation = next(_generations)

    # -- building -------------------------------------------------------------------------------------------
    def add_region(self, guest_phys_addr: int, size: int, userspace_addr: int, mmap_offset: int,
                   fd: int) -> MemoryRegion:
        """mmap ``size`` bytes of ``fd`` at ``mmap_offset`` (MAP_SHARED, read/write) as guest memory.

        ``fd`` must pass :func:`check_shared_fd` (a memfd sealed against shrinking, or another regular file big
        enough).  The caller keeps ownership of ``fd`` (mmap keeps the mapping alive after it is closed).
        """
        for name, v in (("guest_phys_addr", guest_phys_addr), ("size", size), ("userspace_addr", userspace_addr),
                        ("mmap_offset", mmap_offset)):
            _check_u64(name, v)
        if size == 0:
            raise GuestMemoryError("memory region of size 0")
        try:
            check_shared_fd(fd, mmap_offset, size, f"memory region gpa={guest_phys_addr:#x}")
        except ValueError as e:
            raise GuestMemoryError(str(e)) from e
        aligned = mmap_offset - (mmap_offset % PAGE_SIZE)
        delta = mmap_offset - aligned
        try:
            mm = mmap.mmap(fd, size + delta, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                           offset=aligned)
        except (OSError, ValueError, OverflowError) as e:
            raise GuestMemoryError(f"cannot mmap region gpa={guest_phys_addr:#x} size={size:#x}: {e}") from e
        rw = memoryview(mm)[delta:delta + size]
        return self._insert(MemoryRegion(guest_phys_addr, size, userspace_addr, mmap_offset, rw, mm))

    def add_buffer_region(self, guest_phys_addr: int, buf: bytearray | memoryview | mmap.mmap,
                          userspace_addr: int | None = None) -> MemoryRegion:
        """Use an existing writable buffer (bytearray, mmap, memoryview) as a region; for tests and tools."""
        rw = memoryview(buf).cast("B")
        if rw.readonly:
            raise GuestMemoryError("buffer region must be writable")
        _check_u64("guest_phys_addr", guest_phys_addr)
        uva = guest_phys_addr if userspace_addr is None else userspace_addr
        _check_u64("userspace_addr", uva)
        return self._insert(MemoryRegion(guest_phys_addr, len(rw), uva, 0, rw, None))

    def _insert(self, region: MemoryRegion) -> MemoryRegion:
        end = region.gpa + region.size
        if end > 1 << 64:
            region.close()
            raise GuestMemoryError(f"{region!r} wraps the address space")
        for r in self.regions:
            if region.gpa < r.gpa + r.size and r.gpa < end:
                region.close()
                raise GuestMemoryError(f"{region!r} overlaps {r!r}")
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.gpa)
        self.generation = next(_generations)
        return region

    def close(self) -> None:
        """Unmap every region. Views handed out earlier must no longer be used."""
        regions, self.regions, self._last = self.regions, [], None
        self.last_region = _NO_REGION
        self.generation = next(_generations)
        for r in regions:
            r.close()

    # -- translation ----------------------------------------------------------------------------------------
    def region(self, gpa: int, length: int) -> MemoryRegion:
        """The ONE region holding all of [gpa, gpa+length); GuestMemoryError if there is none."""
        return self._find(gpa, length)

    def _find(self, gpa: int, length: int) -> MemoryRegion:
        r = self._last
        if r is not None and r.gpa <= gpa and 0 <= length <= r.size and gpa - r.gpa <= r.size - length:
            return r
        for r in self.regions:
            if r.gpa <= gpa and 0 <= length <= r.size and gpa - r.gpa <= r.size - length:
                self._last = self.last_region = r
                return r
        raise GuestMemoryError(f"guest range [{gpa:#x}, +{length:#x}) is not inside one memory region")

    def view(self, gpa: int, length: int, writable: bool = False) -> memoryview:
        """A zero-copy view of guest memory [gpa, gpa+length); length 0 is allowed.

        Read-only unless ``writable``. Raises GuestMemoryError unless the whole range is inside ONE region.
        """
        r = self._find(gpa, length)
        off = gpa - r.gpa
        return (r.rw if writable else r.ro)[off:off + length]

    def uva_to_gpa(self, uva: int) -> int:
        """Translate a frontend virtual address (vring addresses) to a guest-physical address."""
        for r in self.regions:
            if r.uva <= uva and uva - r.uva < r.size:
                return r.gpa + (uva - r.uva)
        raise GuestMemoryError(f"frontend address {uva:#x} is not inside any memory region")

    # -- little-endian scalar helpers ----------------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.view(gpa, len(view), writable=True)[:] = view

    def read_u16(self, gpa: int) -> int:
        return int(_U16.unpack(self.view(gpa, 2))[0])

    def read_u32(self, gpa: int) -> int:
        return int(_U32.unpack(self.view(gpa, 4))[0])

    def read_u64(self, gpa: int) -> int:
        return int(_U64.unpack(self.view(gpa, 8))[0])

    def write_u16(self, gpa: int, value: int) -> None:
        _U16.pack_into(self.view(gpa, 2, True), 0, value)

    def write_u32(self, gpa: int, value: int) -> None:
        _U32.pack_into(self.view(gpa, 4, True), 0, value)

    def write_u64(self, gpa: int, value: int) -> None:
        _U64.pack_into(self.view(gpa, 8, True), 0, value)

    def __len__(self) -> int:
        return len(self.regions)

