"""virtio-blk over a raw image file (virtio 1.2 section 5.2).

Zero-copy: IN/OUT use os.preadv/os.pwritev directly on the chain's guest-memory views.  FLUSH is fdatasync, so a
write the driver flushed survives a host crash.  DISCARD punches holes, WRITE_ZEROES uses fallocate ZERO_RANGE
(or PUNCH_HOLE with the unmap flag) and falls back to writing zeros.  Every sector range is checked against the
capacity; the status byte goes into the last byte of the last writable descriptor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import struct
from collections.abc import Callable, Sequence
from typing import Final

from . import features as F
from .device import VirtioDevice
from .stream import copy_into
from .memory import GuestMemory
from .virtqueue import DescriptorChain, VirtQueue
from .logs import get_logger

log = get_logger(__name__)

# Final: compiled (mypyc), a constant is inlined rather than looked up in the module's dict on every request.
SECTOR: Final = 512
T_IN: Final = 0
T_OUT: Final = 1
T_FLUSH: Final = 4
T_GET_ID: Final = 8
T_DISCARD: Final = 11
T_WRITE_ZEROES: Final = 13
S_OK: Final = 0
S_IOERR: Final = 1
S_UNSUPP: Final = 2
ID_BYTES: Final = 20
WRITE_ZEROES_FLAG_UNMAP: Final = 1

MAX_DISCARD_SECTORS: Final = 0x3FFFFF           # ~2 GiB per segment, as QEMU's request limit
MAX_DISCARD_SEG: Final = 32
MAX_WRITE_ZEROES_SECTORS: Final = 0x3FFFFF
MAX_WRITE_ZEROES_SEG: Final = 32

FALLOC_FL_KEEP_SIZE: Final = 0x01
FALLOC_FL_PUNCH_HOLE: Final = 0x02
FALLOC_FL_ZERO_RANGE: Final = 0x10

IOV_MAX: Final = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_ZEROS = bytes(1 << 20)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any mode (os.posix_fallocate only does mode 0)."""
    if _fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# os.preadv / os.pwritev: (fd, buffers, offset) -> bytes transferred
IovOp = Callable[[int, Sequence[memoryview], int], int]
_PREADV: Final[IovOp] = os.preadv  # one lookup less per request than os.preadv (none, compiled)
_PWRITEV: Final[IovOp] = os.pwritev


def _advance(bufs: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first n bytes of a list of views (after a short read/write)."""
    out = []
    for b in bufs:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(b[n:] if n else b)
        n = 0
    return out


def _iov_io(op: IovOp, fd: int, bufs: list[memoryview], offset: int, total: int) -> None:
    """preadv/pwritev all of bufs at offset, coping with short transfers and IOV_MAX; raises OSError."""
    n = op(fd, bufs if len(bufs) <= IOV_MAX else bufs[:IOV_MAX], offset)
    done = n
    while done < total:  # rare: short transfer or more than IOV_MAX segments
        if n <= 0:
            raise OSError(errno.EIO, "unexpected end of image file")
        bufs = _advance(bufs, n)
        n = op(fd, bufs[:IOV_MAX], offset + done)
        done += n


class BlkDevice(VirtioDevice):
    """virtio-blk backed by a raw image file or block device.

    ``num_queues`` > 1 offers VIRTIO_BLK_F_MQ.  ``serial`` (<= 20 bytes) answers GET_ID.  ``seg_max`` bounds the
    data segments per request; Linux sizes indirect tables as seg_max + 2, and a chain longer than the queue is a
    ring error, so it must stay <= queue size - 2 for the smallest queue the front-end uses (QEMU's
    vhost-user-blk-pci defaults to queue-size=128, hence 126).
    """

    device_id = F.ID_BLOCK
    name = "virtio-blk"

    def __init__(self, image_path: str, read_only: bool = False, num_queues: int = 1, serial: str | bytes | None = None,
                 max_queue_size: int = 1024, blk_size: int = SECTOR, discard: bool = True,
                 seg_max: int = 126) -> None:
        super().__init__()
        if num_queues < 1 or num_queues > 64:
            raise ValueError("num_queues must be 1..64")
        if blk_size < SECTOR or blk_size & (blk_size - 1):
            raise ValueError("blk_size must be a power of two >= 512")
        self.path = os.fspath(image_path)
        self.read_only = read_only
        self.num_queues = num_queues
        self.max_queue_size = max_queue_size
        self.seg_max = max(1, min(seg_max, max_queue_size - 2))
        self.blk_size = blk_size
        self.discard = discard and not read_only
        self.fd = os.open(self.path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        try:
            st = os.fstat(self.fd)
            size = os.lseek(self.fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
        except OSError:
            os.close(self.fd)
            raise
        self.capacity = size // SECTOR
        if serial is None:
            serial = os.path.basename(self.path)
        if isinstance(serial, str):
            serial = serial.encode("utf-8", "replace")
        self.serial = serial[:ID_BYTES].ljust(ID_BYTES, b"\0")
        self.writeback = 1
        self._punch_ok = True
        self._zero_range_ok = True
        self._features_changed()

    # -- features / config ----------------------------------------------------------------------------------
    def _type_features(self) -> int:
        f = F.mask(F.BLK_F_SEG_MAX, F.BLK_F_BLK_SIZE, F.BLK_F_FLUSH, F.BLK_F_CONFIG_WCE)
        if self.read_only:
            f |= F.bit(F.BLK_F_RO)
        else:
            f |= F.bit(F.BLK_F_WRITE_ZEROES)
            if self.discard:
                f |= F.bit(F.BLK_F_DISCARD)
        if self.num_queues > 1:
            f |= F.bit(F.BLK_F_MQ)
        return f

    def _features_changed(self) -> None:
        self._hdr_unpack = struct.Struct(self.byteorder + "IIQ").unpack_from
        self._seg = struct.Struct(self.byteorder + "QII")

    def config_space(self) -> bytes:
        o = self.byteorder
        return struct.pack(
            o + "QII" "HBB" "I" "BBHI" "BB" "H" "III" "II" "B3x",
            self.capacity, 0, self.seg_max,
            0, 0, 0,                                   # geometry (not offered)
            self.blk_size,
            0, 0, 0, 0,                                # topology (not offered)
            self.writeback, 0,
            self.num_queues,
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, max(1, self.blk_size // SECTOR),
            MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
            1,                                         # write_zeroes_may_unmap
        )

    def write_config(self, offset: int, data: bytes) -> None:
        super().write_config(offset, data)
        # Only 'writeback' (offset 32, with CONFIG_WCE) is driver-writable.  We always fdatasync on FLUSH and
        # never cache, so writethrough just means flushing after each write.
        if offset <= 32 < offset + len(data):
            self.writeback = 1 if data[32 - offset] else 0

    # -- requests -------------------------------------------------------------------------------------------
    def process_queue(self, qidx: int, vq: VirtQueue, mem: GuestMemory) -> bool:
        """VirtioDevice._drain with the requests taken in batches (VirtQueue.pop_batch), published early the same
        way (the requests of the batch not served yet count as waiting) at less interpreter work per request.
        Never raises."""
        if not self._attached(qidx, vq):
            return False
        handle = self._handle
        # vq.pop_batch and vq.push are called, not bound to locals: compiled (mypyc), that is a direct C call
        limit = vq.size
        try:
            while True:
                vq.disable_notification(mem)
                while chains := vq.pop_batch(mem, limit):
                    left = len(chains)
                    unpublished = 0
                    for chain in chains:
                        vq.push(mem, chain[0], handle(vq, chain))
                        if vq.broken_reason is not None:  # a bad request: serve nothing after it
                            break
                        unpublished += 1
                        left -= 1
                        if vq.publish_early(mem, unpublished, left):
                            unpublished = 0
                vq.flush_used(mem)
                if not vq.enable_notification(mem):
                    break
        except Exception as e:  # a device bug must not take the server down
            self._device_bug(vq, mem, e)
        return vq.should_notify(mem)

    def _handle(self, vq: VirtQueue, chain: DescriptorChain) -> int:
        _head, r, w, rlen, wlen = chain
        if not w or rlen < 16:
            vq.mark_broken(f"virtio-blk request without header or status byte (head {chain.head})")
            return 0
        first = r[0]
        if len(first) == 16:  # the usual layout: the header alone in the first descriptor
            rtype, _, sector = self._hdr_unpack(first)
            data_out = None   # r[1:], built only if needed
        else:
            rtype, sector, data_out = self._split_header(r)
        last = w[-1]
        ln = len(last) - 1  # data bytes before the status byte in the last writable buffer

        if rtype == T_IN or rtype == T_OUT:  # the hot path: no helper calls in it
            if rtype == T_IN:
                op, nbytes = _PREADV, wlen - 1
                bufs = w[:-1]
                if ln:
                    bufs.append(last[:ln])
            else:
                op, nbytes = _PWRITEV, rlen - 16
                bufs = r[1:] if data_out is None else data_out
            if rtype == T_OUT and self.read_only:
                status = S_IOERR
            elif not nbytes % SECTOR and sector + nbytes // SECTOR <= self.capacity:  # _range_ok, inline
                fd = self.fd
                try:
                    done = op(fd, bufs, sector * SECTOR) if nbytes and len(bufs) <= IOV_MAX else 0
                    if done != nbytes:  # a short transfer, or more than IOV_MAX buffers: finish it
                        _iov_io(op, fd, _advance(bufs, done), sector * SECTOR + done, nbytes - done)
                    status = S_OK
                    if rtype == T_IN:
                        last[ln] = S_OK
                        return nbytes + 1
                    if not self.writeback:
                        status = self._flush()
                except OSError as e:
                    log.warning("virtio-blk: %s at sector %d: %s", op.__name__, sector, e)
                    status = S_IOERR
            else:
                log.debug("virtio-blk: out-of-range request sector=%d bytes=%d", sector, nbytes)
                status = S_IOERR
            last[ln] = status
            return 1
        written = 0
        if rtype == T_FLUSH:
            status = self._flush()
        elif rtype == T_GET_ID:
            data_in = w[:-1]
            if ln:
                data_in.append(last[:ln])
            written = copy_into(data_in, self.serial)
            status = S_OK
        elif rtype == T_DISCARD or rtype == T_WRITE_ZEROES:
            status = self._discard_zeroes(rtype, r[1:] if data_out is None else data_out, rlen - 16)
        else:
            status = S_UNSUPP
        last[ln] = status
        return written + 1

    def _split_header(self, r: list[memoryview]) -> tuple[int, int, list[memoryview]]:
        """(type, sector, data buffers) when the 16-byte header spans or shares descriptors (ANY_LAYOUT)."""
        hdr = bytearray(16)
        got = 0
        data_out: list[memoryview] = []
        for i, b in enumerate(r):
            take = min(16 - got, len(b))
            hdr[got:got + take] = b[:take]
            got += take
            if got == 16:
                data_out = ([b[take:]] if take < len(b) else []) + r[i + 1:]
                break
        rtype, _, sector = self._hdr_unpack(hdr)
        return rtype, sector, data_out

    def _range_ok(self, sector: int, nbytes: int) -> bool:
        if nbytes % SECTOR:
            return False
        n = nbytes // SECTOR
        return sector <= self.capacity and n <= self.capacity - sector

    def _flush(self) -> int:
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            if e.errno != errno.EINVAL:  # fdatasync on a read-only special file; nothing to flush
                log.warning("virtio-blk: fdatasync: %s", e)
                return S_IOERR
        return S_OK

    def _discard_zeroes(self, rtype: int, data_out: list[memoryview], nbytes: int) -> int:
        if self.read_only:
            return S_IOERR
        is_wz = rtype == T_WRITE_ZEROES
        if not is_wz and not self.discard:
            return S_UNSUPP
        max_seg = MAX_WRITE_ZEROES_SEG if is_wz else MAX_DISCARD_SEG
        max_sectors = MAX_WRITE_ZEROES_SECTORS if is_wz else MAX_DISCARD_SECTORS
        if nbytes == 0 or nbytes % 16 or nbytes // 16 > max_seg:
            return S_IOERR
        raw = b"".join(data_out)  # at most max_seg * 16 bytes
        for sector, num, flags in self._seg.iter_unpack(raw):
            if flags & ~WRITE_ZEROES_FLAG_UNMAP or (not is_wz and flags):
                return S_UNSUPP
            if num > max_sectors or not self._range_ok(sector, num * SECTOR):
                return S_IOERR
            off, length = sector * SECTOR, num * SECTOR
            if length == 0:
                continue
            try:
                if is_wz:
                    self._write_zeroes(off, length, bool(flags & WRITE_ZEROES_FLAG_UNMAP))
                else:
                    self._punch(off, length)
            except OSError as e:
                log.warning("virtio-blk: %s at %d+%d: %s", "write-zeroes" if is_wz else "discard", off, length, e)
                return S_IOERR
        return S_OK

    def _punch(self, off: int, length: int) -> bool:
        """Deallocate; returns False if the file system cannot (discard is advisory, so that is not an error)."""
        if not self._punch_ok:
            return False
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length)
            return True
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
                self._punch_ok = False
                return False
            raise

    def _write_zeroes(self, off: int, length: int, unmap: bool) -> None:
        if unmap and self._punch(off, length):
            return
        if self._zero_range_ok:
            try:
                fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, length)
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
                    raise
                self._zero_range_ok = False
        end = off + length
        while off < end:
            n = os.pwrite(self.fd, memoryview(_ZEROS)[:min(len(_ZEROS), end - off)], off)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            off += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
