import struct

import pytest
from core_guest import GuestQueue

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.blk import (
    S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES, BlkDevice,
)

IMG_SECTORS = 2048  # 1 MiB


def pattern(n: int, seed: int = 0) -> bytes:
    """Distinct content per sector (so an off-by-one sector shows), cheap to build."""
    sector = bytes((i * 7 + seed) & 0xFF for i in range(512))
    return b"".join(sector[k % 251:] + sector[:k % 251] for k in range((n + 511) // 512))[:n]


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(pattern(IMG_SECTORS * 512))
    return p


RAM_SIZE = 4 << 20


class Blk:
    """A guest-side virtio-blk driver over one queue."""

    def __init__(self, ram, dev, features=None, qidx=0, big_endian=False, size=64):
        self.dev = dev
        if big_endian:
            dev.guest_big_endian = True
        feats = dev.device_features() if features is None else features
        dev.set_driver_features(feats)
        self.q = GuestQueue(ram, size=size, features=dev.driver_features, big_endian=big_endian, index=qidx)
        self.qidx = qidx
        self.hdr = struct.Struct((">" if big_endian and not dev.modern else "<") + "IIQ")

    def submit(self, rtype, sector, out=b"", in_len=0, indirect=False, split_header=False):
        q = self.q
        hdr = self.hdr.pack(rtype, 0, sector)
        bufs = [q.buf(hdr[:5]), q.buf(hdr[5:])] if split_header else [q.buf(hdr)]
        if out:
            bufs.append(q.buf(out))
        if in_len:
            bufs.append(q.buf(in_len, True))
        bufs.append(q.buf(1, True))
        head = q.add(bufs, indirect=indirect)
        return head, bufs

    def run(self):
        return self.dev.process_queue(self.qidx, self.q.vq, self.q.mem)

    def request(self, rtype, sector, out=b"", in_len=0, **kw):
        head, bufs = self.submit(rtype, sector, out, in_len, **kw)
        self.run()
        used = self.q.get_used()
        assert [u[0] for u in used] == [head]
        status = self.q.ram.read(bufs[-1][0], 1)[0]
        data = self.q.ram.read(bufs[-2][0], in_len) if in_len else b""
        return status, used[0][1], data


@pytest.fixture
def blk(ram, image):
    dev = BlkDevice(str(image), serial="disk-serial-0")
    yield Blk(ram, dev)
    dev.close()


def test_features_and_config(image):
    dev = BlkDevice(str(image), num_queues=2)
    f = dev.device_features()
    for b in (F.F_VERSION_1, F.F_RING_INDIRECT_DESC, F.F_RING_EVENT_IDX, F.BLK_F_FLUSH, F.BLK_F_SEG_MAX,
              F.BLK_F_BLK_SIZE, F.BLK_F_MQ, F.BLK_F_DISCARD, F.BLK_F_WRITE_ZEROES):
        assert F.has(f, b)
    assert not F.has(f, F.BLK_F_RO)
    cfg = dev.config_space()
    assert len(cfg) == 60
    capacity, _size_max, seg_max = struct.unpack_from("<QII", cfg, 0)
    assert capacity == IMG_SECTORS and seg_max == 126
    assert struct.unpack_from("<I", cfg, 20)[0] == 512            # blk_size
    assert struct.unpack_from("<H", cfg, 34)[0] == 2              # num_queues
    assert dev.read_config(0, 8) == struct.pack("<Q", IMG_SECTORS)
    assert dev.read_config(56, 8)[4:] == bytes(4)                 # beyond the struct reads as zero
    dev.write_config(32, b"\0")
    assert dev.config_space()[32] == 0                            # writeback is driver-writable
    dev.write_config(0, b"\xff" * 8)
    assert dev.read_config(0, 8) == struct.pack("<Q", IMG_SECTORS)  # capacity is not
    with pytest.raises(ValueError):
        dev.read_config(250, 10)
    dev.close()


@pytest.mark.parametrize("indirect", [False, True])
def test_read(blk, image, indirect):
    status, used_len, data = blk.request(T_IN, 3, in_len=4096, indirect=indirect)
    assert status == S_OK and used_len == 4097
    assert data == image.read_bytes()[3 * 512:3 * 512 + 4096]


def test_read_scattered_and_split_header(blk, image):
    q = blk.q
    segs = [q.buf(512, True), q.buf(1024, True), q.buf(512, True)]
    status_buf = q.buf(1, True)
    hdr = blk.hdr.pack(T_IN, 0, 10)
    q.add([q.buf(hdr[:3]), q.buf(hdr[3:])] + segs + [status_buf])
    blk.run()
    (_head, used_len), = q.get_used()
    assert used_len == 2049 and q.ram.read(status_buf[0], 1) == b"\0"
    got = b"".join(q.ram.read(g, n) for g, n, _ in segs)
    assert got == image.read_bytes()[10 * 512:10 * 512 + 2048]


def test_status_in_last_byte_of_data_descriptor(blk, image):
    # Data and status share the last writable descriptor (ANY_LAYOUT framing).
    q = blk.q
    buf = q.buf(513, True)
    q.add([q.buf(blk.hdr.pack(T_IN, 0, 0)), buf])
    blk.run()
    assert q.get_used()[0][1] == 513
    assert q.ram.read(buf[0], 513) == image.read_bytes()[:512] + b"\0"


def test_write_and_flush(blk, image):
    data = pattern(8192, seed=99)
    status, used_len, _ = blk.request(T_OUT, 100, out=data)
    assert status == S_OK and used_len == 1
    assert image.read_bytes()[100 * 512:100 * 512 + 8192] == data
    status, _, _ = blk.request(T_FLUSH, 0)
    assert status == S_OK


def test_get_id(blk):
    status, used_len, data = blk.request(T_GET_ID, 0, in_len=20)
    assert status == S_OK and used_len == 21 and data == b"disk-serial-0".ljust(20, b"\0")


def test_discard_and_write_zeroes(blk, image):
    seg = struct.Struct("<QII")
    status, _, _ = blk.request(T_DISCARD, 0, out=seg.pack(8, 16, 0))
    assert status == S_OK
    assert image.read_bytes()[8 * 512:24 * 512] == bytes(16 * 512)
    status, _, _ = blk.request(T_WRITE_ZEROES, 0, out=seg.pack(100, 3, 0) + seg.pack(200, 5, 1))
    assert status == S_OK
    img = image.read_bytes()
    assert img[100 * 512:103 * 512] == bytes(3 * 512) and img[200 * 512:205 * 512] == bytes(5 * 512)
    assert img[103 * 512:104 * 512] == pattern(IMG_SECTORS * 512)[103 * 512:104 * 512]
    assert len(img) == IMG_SECTORS * 512
    # Unmap flag on DISCARD and unknown flags are unsupported; out-of-range segments are errors.
    assert blk.request(T_DISCARD, 0, out=seg.pack(0, 1, 1))[0] == S_UNSUPP
    assert blk.request(T_WRITE_ZEROES, 0, out=seg.pack(0, 1, 2))[0] == S_UNSUPP
    assert blk.request(T_DISCARD, 0, out=seg.pack(IMG_SECTORS - 1, 2, 0))[0] == S_IOERR
    assert blk.request(T_WRITE_ZEROES, 0, out=b"short")[0] == S_IOERR


@pytest.mark.parametrize("sector,nbytes", [(IMG_SECTORS, 512), (IMG_SECTORS - 1, 1024), (2**64 - 1, 512),
                                           (2**63, 512)])
def test_out_of_range(blk, sector, nbytes):
    assert blk.request(T_IN, sector, in_len=nbytes)[0] == S_IOERR
    assert blk.request(T_OUT, sector, out=bytes(nbytes))[0] == S_IOERR


def test_last_sector_and_zero_length(blk, image):
    status, _, data = blk.request(T_IN, IMG_SECTORS - 1, in_len=512)
    assert status == S_OK and data == image.read_bytes()[-512:]
    assert blk.request(T_IN, IMG_SECTORS, in_len=0)[0] == S_OK


def test_partial_sector_is_an_error(blk):
    assert blk.request(T_IN, 0, in_len=100)[0] == S_IOERR
    assert blk.request(T_OUT, 0, out=bytes(100))[0] == S_IOERR


def test_unsupported_type(blk):
    assert blk.request(0x1234, 0, in_len=512)[0] == S_UNSUPP
    assert not blk.q.vq.broken


def test_read_only(ram, image):
    before = image.read_bytes()
    dev = BlkDevice(str(image), read_only=True)
    assert F.has(dev.device_features(), F.BLK_F_RO)
    assert not F.has(dev.device_features(), F.BLK_F_DISCARD)
    b = Blk(ram, dev)
    assert b.request(T_OUT, 0, out=bytes(512))[0] == S_IOERR
    assert b.request(T_WRITE_ZEROES, 0, out=struct.pack("<QII", 0, 1, 0))[0] == S_IOERR
    assert b.request(T_DISCARD, 0, out=struct.pack("<QII", 0, 1, 0))[0] == S_IOERR
    assert b.request(T_IN, 0, in_len=512)[0] == S_OK
    assert b.request(T_FLUSH, 0)[0] == S_OK
    assert image.read_bytes() == before
    dev.close()


def test_missing_status_breaks_queue(blk):
    q = blk.q
    q.add([q.buf(blk.hdr.pack(T_IN, 0, 0))])
    assert not blk.dev.needs_reset
    blk.run()
    assert q.vq.broken and blk.dev.needs_reset
    assert q.get_used() == []


def test_nothing_is_served_after_a_request_that_breaks_the_queue(blk, image):
    q = blk.q
    q.add([q.buf(blk.hdr.pack(T_IN, 0, 0))])  # no status byte: breaks the queue
    blk.submit(T_OUT, 100, out=pattern(512, seed=5))  # taken in the same batch, must not be written
    before = image.read_bytes()
    blk.run()
    assert q.vq.broken and blk.dev.needs_reset
    assert image.read_bytes() == before and q.get_used() == []


def test_batch_and_multiqueue(ram, image):
    dev = BlkDevice(str(image), num_queues=2)
    b0 = Blk(ram, dev, qidx=0)
    b1 = GuestQueue(ram, size=64, features=dev.driver_features, index=1)
    heads = [b0.submit(T_IN, i * 8, in_len=4096) for i in range(20)]
    b1.add([b1.buf(b0.hdr.pack(T_OUT, 0, 500)), b1.buf(pattern(512, 5)), b1.buf(1, True)])
    assert b0.run()
    assert [u[0] for u in b0.q.get_used()] == [h for h, _ in heads]
    for i, (_, bufs) in enumerate(heads):
        assert ram.read(bufs[1][0], 4096) == image.read_bytes()[i * 4096:(i + 1) * 4096]
    assert dev.process_queue(1, b1.vq, b1.mem)
    assert len(b1.get_used()) == 1
    assert image.read_bytes()[500 * 512:501 * 512] == pattern(512, 5)
    dev.close()


def test_legacy_big_endian_guest(ram, image):
    dev = BlkDevice(str(image))
    feats = dev.device_features() & ~F.bit(F.F_VERSION_1)
    b = Blk(ram, dev, features=feats, big_endian=True)
    assert not dev.modern
    status, _, data = b.request(T_IN, 2, in_len=512)
    assert status == S_OK and data == image.read_bytes()[1024:1536]
    assert dev.read_config(0, 8) == struct.pack(">Q", IMG_SECTORS)
    dev.close()


def test_legacy_little_endian_guest_reads(ram, image):
    dev = BlkDevice(str(image))
    b = Blk(ram, dev, features=dev.device_features() & ~F.bit(F.F_VERSION_1))
    status, _, data = b.request(T_IN, 1, in_len=512, indirect=True)
    assert status == S_OK and data == image.read_bytes()[512:1024]
    dev.close()
