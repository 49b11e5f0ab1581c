"""Hypothesis: random and hostile rings thrown at every device type.

Invariants: nothing raises out of process_queue / io callbacks; a queue is either healthy or broken with the
device in NEEDS_RESET; every view GuestMemory hands out lies inside the region; the guard pages around the
region are untouched.
"""

import functools
import os

import pytest
from core_guest import RAM_GPA, GuestQueue, GuestRam, Rings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.blk import BlkDevice
from acrnmgr.devmodel.console import ConsoleDevice
from acrnmgr.devmodel.gpio import GpioDevice, LineConfig
from acrnmgr.devmodel.i2c import Eeprom24c02, I2cDevice, Lm75
from acrnmgr.devmodel.net import NetDevice
from acrnmgr.devmodel.rng import RngDevice
from acrnmgr.devmodel.virtqueue import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

RAM = 64 * 1024
QSIZE = 8
END = RAM_GPA + RAM
# The test driver allocates rings first; the table region and data area follow.
TABLE_GPA = RAM_GPA + 0x2000
DATA_GPA = RAM_GPA + 0x3000

addresses = st.one_of(
    st.integers(DATA_GPA, END),                       # plausible
    st.integers(END - 600, END + 16),                 # straddling the end of the region
    st.integers(RAM_GPA - 16, RAM_GPA + 16),          # straddling the start
    st.just(TABLE_GPA),                               # the indirect table (aliasing)
    st.integers(0, 2**64 - 1),                        # anything
    st.sampled_from([0, 2**64 - 1, 2**64 - 512, 2**63]),
)
lengths = st.one_of(st.sampled_from([0, 1, 15, 16, 17, 32, 128, 512, 513, 4096, 2**32 - 1]), st.integers(0, 2**32 - 1),
                    st.integers(0, 1024))
descriptors = st.tuples(addresses, lengths, st.integers(0, 7) | st.sampled_from([VRING_DESC_F_NEXT,
                        VRING_DESC_F_WRITE, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT]),
                        st.integers(0, QSIZE + 2) | st.integers(0, 0xFFFF))
ring_case = st.fixed_dictionaries({
    "desc": st.lists(descriptors, min_size=QSIZE, max_size=QSIZE),
    "table": st.lists(descriptors, min_size=0, max_size=12),
    "heads": st.lists(st.integers(0, QSIZE + 2) | st.integers(0, 0xFFFF), min_size=QSIZE, max_size=QSIZE),
    "avail_idx": st.integers(0, QSIZE + 2) | st.integers(0, 0xFFFF),
    "last_avail": st.sampled_from([0, 0, 0xFFFF, 0xFFF8]),
    "used_event": st.integers(0, 0xFFFF),
    "avail_flags": st.integers(0, 3),
    "features": st.sampled_from([F.COMMON_FEATURES, F.mask(F.F_VERSION_1),
                                 F.mask(F.F_RING_INDIRECT_DESC, F.F_RING_EVENT_IDX)]),
    "fill": st.binary(min_size=0, max_size=64),
})



@st.composite
def mostly_valid_case(draw):
    """Well-formed chains (direct or one indirect), with blk-like headers, then a few hostile mutations."""
    desc = [(0, 0, 0, 0)] * QSIZE
    table = []
    heads = []
    free = list(range(QSIZE))
    cursor = DATA_GPA
    fill = bytearray(4096)
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):  # request-shaped: 16-byte header, data, 1-byte status
            data_w = draw(st.booleans())
            sizes = [16] + [draw(st.sampled_from([512, 1024, 20]))] * draw(st.integers(0, 2)) + [1]
            nbuf = len(sizes)
            nread = 1 if data_w else nbuf - 1
        else:
            nbuf = draw(st.integers(1, 4))
            nread = draw(st.integers(0, nbuf))
            sizes = [draw(st.sampled_from([16, 1, 512, 1024, 20]) | st.integers(0, 600)) for _ in range(nbuf)]
        bufs = []
        for k in range(nbuf):
            n = sizes[k]
            if cursor + n > DATA_GPA + 4096:
                n = 0
            bufs.append((cursor, n, 0 if k < nread else VRING_DESC_F_WRITE))
            if k == 0 and n >= 16:
                hdr = draw(st.sampled_from([0, 1, 4, 8, 11, 13]) | st.integers(0, 2**32 - 1)).to_bytes(4, "little")
                length = draw(st.sampled_from([0, 1, 63, 64, 2**64 - 1]) | st.integers(0, 80))
                hdr += bytes(4) + length.to_bytes(8, "little")
                fill[cursor - DATA_GPA:cursor - DATA_GPA + 16] = hdr
            cursor += n
        if draw(st.booleans()) and not table and free:
            for k, (a, n, fl) in enumerate(bufs):
                last = k == len(bufs) - 1
                table.append((a, n, fl | (0 if last else VRING_DESC_F_NEXT), 0 if last else k + 1))
            h = free.pop(0)
            desc[h] = (TABLE_GPA, 16 * len(bufs), VRING_DESC_F_INDIRECT, 0)
            heads.append(h)
        elif len(free) >= nbuf:
            ids = [free.pop(0) for _ in bufs]
            for k, (a, n, fl) in enumerate(bufs):
                last = k == len(bufs) - 1
                desc[ids[k]] = (a, n, fl | (0 if last else VRING_DESC_F_NEXT), 0 if last else ids[k + 1])
            heads.append(ids[0])
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, QSIZE - 1))
        field = draw(st.integers(0, 3))
        d = list(desc[i])
        d[field] = draw([addresses, lengths, st.integers(0, 7), st.integers(0, QSIZE + 2)][field])
        desc[i] = tuple(d)
    avail_idx = len(heads) if draw(st.integers(0, 9)) else draw(st.integers(0, 0xFFFF))
    heads += [0] * (QSIZE - len(heads))
    return {"desc": desc, "table": table, "heads": heads, "avail_idx": avail_idx,
            "last_avail": draw(st.sampled_from([0, 0xFFFF, 0xFFFE])), "used_event": draw(st.integers(0, 0xFFFF)),
            "avail_flags": draw(st.integers(0, 1)),
            "features": draw(st.sampled_from([F.COMMON_FEATURES, F.mask(F.F_VERSION_1)])),
            "fill": bytes(fill), "raw_fill": True}


cases = ring_case | mostly_valid_case()

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])


def build(case, dev, qidx):
    ram = GuestRam(RAM)  # between guard pages: check() fails on any write outside it
    dev.set_driver_features(dev.device_features() & (case["features"] | ~F.COMMON_FEATURES))
    q = GuestQueue(ram, size=QSIZE, features=dev.driver_features, index=qidx)
    assert q.desc < TABLE_GPA and q.used + 6 + 8 * QSIZE < TABLE_GPA
    if case.get("raw_fill"):
        ram.write(DATA_GPA, case["fill"])
    elif case["fill"]:
        ram.write(DATA_GPA, (case["fill"] * (1 + 4096 // len(case["fill"])))[:4096])
    for i, (a, n, fl, nx) in enumerate(case["desc"]):
        q.write_desc(i, a, n, fl, nx)
    for i, (a, n, fl, nx) in enumerate(case["table"]):
        q.write_desc(i, a, n, fl, nx & 0xFFFF, table=TABLE_GPA)
    for i, h in enumerate(case["heads"]):
        ram.write(q.avail + 4 + 2 * ((case["last_avail"] + i) % QSIZE), q.u16.pack(h))
    q.vq.last_avail_idx = case["last_avail"]
    ram.write(q.avail, q.u16.pack(case["avail_flags"]))
    ram.write(q.avail + 2, q.u16.pack((case["last_avail"] + case["avail_idx"]) & 0xFFFF))
    q.set_used_event(case["used_event"])
    return ram, q


def check(ram, q, dev):
    assert ram.guards_intact()
    if q.vq.broken:
        assert dev.needs_reset and q.vq.broken_reason
        assert q.vq.pop(q.mem) is None
    else:
        assert not dev.needs_reset
    used = q.get_used()
    for head, _n in used:  # the device only ever completes heads that exist
        assert head < QSIZE
    event(f"broken={q.vq.broken} completed={min(len(used), 2)}")


def whole_buffers(dev):
    """Every chain a device handles must have buffers exactly as long as its descriptors say: a view that came
    out shorter (a slice clamped at the end of a region) would mean a buffer check let a bad range through.
    Returns the list of violations (_drain turns exceptions into a broken queue, so they are collected)."""
    real_drain = type(dev)._drain
    short: list[str] = []

    def checking(handle):
        def checked(vq, chain):
            if (sum(map(len, chain.readable)) != chain.readable_len
                    or sum(map(len, chain.writable)) != chain.writable_len):
                short.append(repr(chain))
            return handle(vq, chain)
        return checked

    def drain(vq, mem, handle):
        return real_drain(dev, vq, mem, checking(handle))

    dev._drain = drain
    if isinstance(dev, BlkDevice):  # its process_queue pops batches and calls _handle itself, not _drain
        dev._handle = checking(functools.partial(type(dev)._handle, dev))
    return short


def run_case(case, dev, qidx, extra=None):
    dev.reset()
    short = whole_buffers(dev)
    ram, q = build(case, dev, qidx)
    try:
        for _ in range(2):
            dev.process_queue(qidx, q.vq, q.mem)
            if extra is not None:
                extra(Rings(q.mem, dev.queues))
        check(ram, q, dev)
        assert not short, short
    finally:
        ram.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    p = tmp_path_factory.mktemp("hostile") / "disk.img"
    p.write_bytes(bytes(64 * 512))
    return p


@SETTINGS
@given(case=cases)
def test_hostile_blk(image, case):
    dev = BlkDevice(str(image), max_queue_size=QSIZE)
    try:
        run_case(case, dev, 0)
        assert os.path.getsize(image) == 64 * 512
    finally:
        dev.close()


@SETTINGS
@given(case=cases)
def test_hostile_rng(case):
    dev = RngDevice()
    try:
        run_case(case, dev, 0)
    finally:
        dev.close()


@pytest.fixture(scope="module")
def i2c(tmp_path_factory):
    eeprom = tmp_path_factory.mktemp("hostile") / "eeprom.bin"
    eeprom.write_bytes(bytes(256))
    dev = I2cDevice({0x50: Eeprom24c02(str(eeprom)), 0x48: Lm75()}, max_queue_size=QSIZE)
    yield dev, eeprom
    dev.close()


@SETTINGS
@given(case=cases)
def test_hostile_i2c(i2c, case):
    """virtio-i2c headers are 8 bytes, so the mostly-valid chains' 16-byte headers reach it with every flag and
    address the strategy draws; FAIL_NEXT groups may stay pending across the two passes."""
    dev, eeprom = i2c
    run_case(case, dev, 0)
    assert os.path.getsize(eeprom) == 256


@pytest.fixture(scope="module")
def console():
    dev = ConsoleDevice(pty=True)
    user = os.open(dev.pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    yield dev, user
    os.close(user)
    dev.close()


@SETTINGS
@given(case=cases, qidx=st.sampled_from([0, 1]))
def test_hostile_console(console, case, qidx):
    dev, user = console

    def traffic(rings):
        try:
            os.write(user, b"input from the host")
            os.read(user, 65536)  # keep the pty from filling up with guest output
        except BlockingIOError:
            pass
        for _fd, cb in dev.io_sources():
            cb(rings)

    run_case(case, dev, qidx, traffic)


@pytest.fixture(scope="module")
def gpio(tmp_path_factory):
    dev = GpioDevice([LineConfig("button", "in"), LineConfig("led", "out"), LineConfig("free")],
                     control_path=str(tmp_path_factory.mktemp("gpio") / "gpio.sock"), max_queue_size=QSIZE)
    yield dev
    dev.close()


@SETTINGS
@given(case=cases, qidx=st.sampled_from([0, 1]), edges=st.lists(st.integers(0, 1), max_size=4))
def test_hostile_gpio(gpio, case, qidx, edges):
    """Hostile requests and eventq buffers; after the first round, interrupts are on for every line, so the
    second round holds eventq buffers and host edges complete them."""
    def host_edges(rings):
        for line in gpio.core.lines:
            line.irq = line.irq or 3  # edge-both
        for level in edges:
            gpio.core.control({"op": "set", "line": "button", "value": level})
        for _fd, cb in gpio.host_sources():
            cb(rings)

    run_case(case, gpio, qidx, host_edges)


@pytest.fixture(scope="module")
def net():
    dev = NetDevice(tap=f"acrfz{os.getpid() % 10000}")
    yield dev
    dev.close()


@SETTINGS
@given(case=cases, qidx=st.sampled_from([0, 1]))
def test_hostile_net(net, case, qidx):
    def io(rings):
        for _fd, cb in net.io_sources():
            cb(rings)

    run_case(case, net, qidx, io)


@SETTINGS
@given(sizes=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(-2, 2**64)), max_size=20))
def test_memory_views_stay_inside(sizes):
    ram = GuestRam(4096)
    end = RAM_GPA + 4096
    try:
        for gpa, n in sizes + [(end - 1, 1), (end, 0), (RAM_GPA, 4096)]:
            try:
                v = ram.mem.view(gpa, n, writable=True)
            except ValueError:
                continue
            assert RAM_GPA <= gpa and gpa + n <= end and len(v) == n
            v[:] = b"\xff" * n
        assert ram.guards_intact()
    finally:
        ram.close()
