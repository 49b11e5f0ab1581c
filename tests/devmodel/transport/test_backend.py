"""The vhost-user backend state machine, driven message by message without sockets (Loopback front-end),
over the real core devices (rng, blk) and real guest memory in a memfd."""

import os
import struct

import pytest

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.blk import BlkDevice
from acrnmgr.devmodel.rng import RngDevice
from acrnmgr.devmodel.vhost_user import (
    CONFIG_HEADER, F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, FLAG_REPLY, INFLIGHT, SUPPORTED_PROTOCOL_FEATURES, U64,
    VERSION, VRING_STATE, Disconnect, Message, ProtocolFeature, Request, VhostUserBackend, encode,
)

from .frontend import DESC, FrontQueue, Loopback

MODERN = (1 << F.F_VERSION_1) | F_PROTOCOL_FEATURES
BLK_HDR = struct.Struct("<IIQ")


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@pytest.fixture
def rng():
    dev = RngDevice()
    backend = VhostUserBackend(dev)
    fe = Loopback(backend)
    yield fe
    fe.close_backend()
    fe.close()
    dev.close()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    data = bytearray(os.urandom(1 << 20))
    path.write_bytes(data)
    return path, data


@pytest.fixture
def blk(image):
    dev = BlkDevice(str(image[0]))
    backend = VhostUserBackend(dev)
    fe = Loopback(backend)
    yield fe
    fe.close_backend()
    fe.close()
    dev.close()


def handle(backend, request, payload=b"", *, flags=VERSION, fds=()):
    """Feed one raw message and carry out its effects; return the decoded reply (request, flags, payload, fds)
    or None."""
    fe = Loopback(backend)
    fe.execute(backend.handle(Message(request, flags, payload, list(fds))))
    fe.ram.close()
    try:
        return fe.recv()
    except AssertionError:
        return None


def test_features_offer_protocol_bit_and_device_bits(rng):
    features, protocol = rng.handshake()
    assert features & F_PROTOCOL_FEATURES
    assert features & (1 << F.F_VERSION_1) and features & (1 << F.F_RING_EVENT_IDX)
    # virtio-rng has no config space: CONFIG is not offered (QEMU would warn that it does not support it).
    assert protocol == SUPPORTED_PROTOCOL_FEATURES & ~(1 << ProtocolFeature.CONFIG)
    assert protocol & (1 << ProtocolFeature.REPLY_ACK)
    assert rng.get_u64(Request.GET_QUEUE_NUM) == 1


def test_config_is_offered_for_a_device_with_a_config_space(blk):
    _, protocol = blk.handshake()
    assert protocol == SUPPORTED_PROTOCOL_FEATURES and protocol & (1 << ProtocolFeature.CONFIG)


def test_reply_ack_answers_zero_on_success_and_nonzero_on_failure(rng):
    backend = rng.backend
    ok = handle(backend, Request.SET_OWNER, flags=VERSION | FLAG_NEED_REPLY)
    assert ok.request == Request.SET_OWNER and ok.flags & FLAG_REPLY and U64.unpack(ok.payload) == (0,)
    bad = handle(backend, Request.SET_VRING_NUM, VRING_STATE.pack(0, 3), flags=VERSION | FLAG_NEED_REPLY)
    assert U64.unpack(bad.payload)[0] != 0  # 3 is not a power of two
    assert handle(backend, Request.SET_VRING_NUM, VRING_STATE.pack(0, 3)) is None  # no NEED_REPLY: silent


def test_unknown_and_unsupported_requests_are_refused_not_fatal(rng):
    backend = rng.backend
    assert U64.unpack(handle(backend, 99, b"xyz", flags=VERSION | FLAG_NEED_REPLY).payload)[0] != 0
    assert handle(backend, 99) is None
    r, w = os.pipe()
    os.close(w)
    assert handle(backend, Request.SET_LOG_FD, fds=[r]) is None
    assert not fd_open(r)  # fds of refused messages are closed, not leaked


def test_set_features_rejects_bits_never_offered(rng):
    backend = rng.backend
    msg = handle(backend, Request.SET_FEATURES, U64.pack(1 << 45), flags=VERSION | FLAG_NEED_REPLY)
    assert U64.unpack(msg.payload)[0] != 0


@pytest.mark.parametrize("request_, payload", [
    (Request.SET_FEATURES, b"\0" * 7),
    (Request.SET_VRING_NUM, b"\0" * 9),
    (Request.SET_VRING_ADDR, b"\0" * 8),
    (Request.SET_VRING_KICK, U64.pack(0)),  # no fd and no NOFD flag
    (Request.SET_VRING_CALL, U64.pack(5)),  # queue 5 does not exist
    (Request.SET_MEM_TABLE, struct.pack("<II", 1, 0) + bytes(32)),  # region without its fd
    (Request.SET_CONFIG, b"\0" * 4),
    (Request.SET_INFLIGHT_FD, INFLIGHT.pack(4096, 0, 1, 8)),  # no fd
    (Request.SET_VRING_ENABLE, VRING_STATE.pack(7, 1)),
])
def test_malformed_messages_are_refused(rng, request_, payload):
    msg = handle(rng.backend, request_, payload, flags=VERSION | FLAG_NEED_REPLY)
    assert U64.unpack(msg.payload)[0] != 0


def test_mem_table_with_wrong_fd_count_closes_every_fd(rng):
    fds = [os.memfd_create("x") for _ in range(3)]
    payload = struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 0, 4096, 0, 0) * 2
    msg = handle(rng.backend, Request.SET_MEM_TABLE, payload, fds=fds, flags=VERSION | FLAG_NEED_REPLY)
    assert U64.unpack(msg.payload)[0] != 0
    assert not any(fd_open(fd) for fd in fds)


def test_requests_that_must_answer_drop_the_connection_when_they_cannot(rng):
    with pytest.raises(Disconnect):
        rng.backend.handle(Message(Request.GET_VRING_BASE, VERSION, VRING_STATE.pack(9, 0)))
    with pytest.raises(Disconnect):
        rng.backend.handle(Message(Request.GET_INFLIGHT_FD, VERSION, b"short"))


def test_rng_fills_guest_buffers_through_rings_at_translated_addresses(rng):
    rng.handshake()
    (q,) = rng.start(MODERN | (1 << F.F_RING_EVENT_IDX), {0: 8}).values()
    heads = [q.post(ins=[64]), q.post(ins=[16, 16])]
    q.notify()
    done = q.wait(2)
    assert sorted(h for h, _, _ in done) == sorted(heads)
    assert {n for _, n, _ in done} == {64, 32}
    assert all(data != b"\xAA" * len(data) for _, _, data in done)


def test_with_protocol_features_a_ring_waits_for_enable(rng):
    rng.handshake()
    q = FrontQueue(rng, 0, 8)
    rng.queues[0] = q
    rng.send(Request.SET_FEATURES, U64.pack(MODERN))
    rng.set_mem_table()
    q.configure(enable=False)
    q.post(ins=[8])
    q.notify()
    assert q.completions() == []  # started, but disabled: no side effects
    rng.send(Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 1))
    assert len(q.completions()) == 1  # enabling processes what was already queued


def test_without_protocol_features_a_ring_runs_on_kick(rng):
    rng.handshake()
    q = FrontQueue(rng, 0, 8)
    rng.queues[0] = q
    rng.send(Request.SET_FEATURES, U64.pack(1 << F.F_VERSION_1))
    rng.set_mem_table()
    q.configure(enable=False)
    q.post(ins=[8])
    q.notify()
    assert len(q.completions()) == 1


def test_get_vring_base_stops_the_ring_and_returns_the_avail_position(rng):
    rng.handshake()
    (q,) = rng.start(MODERN, {0: 8}, bases={0: 0}).values()
    for _ in range(3):
        q.post(ins=[4])
    q.notify()
    q.wait(3)
    kick_copy = rng.backend.queues[0].kick_fd
    base = rng.call(Request.GET_VRING_BASE, VRING_STATE.pack(0, 0))
    assert VRING_STATE.unpack(base.payload) == (0, 3)
    assert not fd_open(kick_copy)  # the back-end let go of the kick fd
    q.post(ins=[4])
    q.notify()
    assert q.completions() == []  # stopped


def test_restart_from_base_continues_where_the_ring_was(rng):
    rng.handshake()
    (q,) = rng.start(MODERN, {0: 8}).values()
    q.post(ins=[4])
    q.notify()
    q.wait(1)
    rng.call(Request.GET_VRING_BASE, VRING_STATE.pack(0, 0))
    q.post(ins=[4])
    q.configure(base=1)
    q.notify()
    assert len(q.wait(1)) == 1


def test_blk_config_and_io(blk, image):
    path, data = image
    blk.handshake()
    cfg = blk.get_config(0, 60)
    assert len(cfg) == 60
    assert struct.unpack_from("<Q", cfg)[0] == len(data) // 512  # capacity in sectors
    assert blk.call(Request.GET_CONFIG, CONFIG_HEADER.pack(250, 16, 0) + bytes(16)).payload == b""  # outside: error
    (q,) = blk.start(MODERN | (1 << F.BLK_F_FLUSH), {0: 16}).values()
    q.post(out=[BLK_HDR.pack(0, 0, 8)], ins=[4096, 1])  # read 8 sectors at sector 8
    new = os.urandom(512)
    q.post(out=[BLK_HDR.pack(1, 0, 100), new], ins=[1])  # write sector 100
    q.post(out=[BLK_HDR.pack(4, 0, 0)], ins=[1])  # flush
    q.notify()
    (rd, wr, fl) = q.wait(3)
    assert rd[1] == 4097 and rd[2][:4096] == bytes(data[4096:8192]) and rd[2][4096] == 0
    assert wr[2] == b"\0" and fl[2] == b"\0"
    with open(path, "rb") as f:
        f.seek(100 * 512)
        assert f.read(512) == new


def test_broken_ring_sets_needs_reset_in_status_and_signals_err_fd(rng):
    rng.handshake()
    (q,) = rng.start(MODERN, {0: 8}).values()
    err = os.eventfd(0, os.EFD_NONBLOCK)
    rng.send(Request.SET_VRING_ERR, U64.pack(0), fds=[err])
    rng.send(Request.SET_STATUS, U64.pack(F.S_ACKNOWLEDGE | F.S_DRIVER | F.S_FEATURES_OK | F.S_DRIVER_OK))
    assert rng.get_u64(Request.GET_STATUS) == 0xF
    head = q.post(ins=[8])
    rng.ram.write(q.desc + 16 * head, DESC.pack(0xDEAD_0000_0000, 8, 2, 0))  # buffer outside guest RAM
    q.notify()
    assert rng.get_u64(Request.GET_STATUS) & F.S_NEEDS_RESET
    assert os.eventfd_read(err) == 1
    os.close(err)
    rng.send(Request.RESET_DEVICE)
    assert rng.get_u64(Request.GET_STATUS) == 0
    assert rng.backend.queues[0].vq is None


def test_set_status_zero_keeps_ring_positions_for_get_vring_base(rng):
    # QEMU stops a device with SET_STATUS(0) *before* GET_VRING_BASE.
    rng.handshake()
    (q,) = rng.start(MODERN, {0: 8}).values()
    q.post(ins=[4])
    q.notify()
    q.wait(1)
    rng.send(Request.SET_STATUS, U64.pack(0))
    assert VRING_STATE.unpack(rng.call(Request.GET_VRING_BASE, VRING_STATE.pack(0, 0)).payload) == (0, 1)


def test_new_mem_table_moves_rings_to_the_new_mapping(rng):
    rng.handshake()
    (q,) = rng.start(MODERN, {0: 8}).values()
    rng.set_mem_table()  # QEMU re-sends the table on memory hotplug; rings keep working
    q.post(ins=[8])
    q.notify()
    assert len(q.wait(1)) == 1


def _blk_read(q, sector):
    return q.post(out=[BLK_HDR.pack(0, 0, sector)], ins=[512, 1])


def test_inflight_requests_survive_a_backend_crash(image):
    """Back-end 1 pops two requests and dies before completing the second; back-end 2, given the same
    inflight buffer, completes it exactly once and then carries on with the ring."""
    path, data = image
    dev = BlkDevice(str(path))
    first = Loopback(VhostUserBackend(dev))
    first.handshake()
    fd, size, offset = first.get_inflight(1, 16)
    assert offset == 0 and size >= 16 * 16 + 16
    (q,) = first.start(MODERN, {0: 16}, inflight=(fd, size)).values()
    heads = [_blk_read(q, s) for s in (1, 2, 3)]
    vq = first.backend.queues[0].vq
    # Serve the first request normally, then pop the second and "crash" before pushing it.
    mem = first.backend.memory
    chain = vq.pop(mem)
    dev._handle(vq, chain)
    vq.push(mem, chain.head, 513)
    vq.flush_used(mem)
    assert vq.pop(mem).head == heads[1]
    done = q.completions()
    assert [h for h, _, _ in done] == [heads[0]]
    first.close_backend()  # the process is gone; QEMU keeps RAM, rings and the inflight fd

    second = Loopback(VhostUserBackend(dev))
    second.ram.close()
    second.ram = first.ram  # same guest
    second.handshake()
    second.queues[0] = q
    q.fe = second
    # QEMU restores last_avail_idx from the used index when GET_VRING_BASE failed: base = 1.
    second.start(MODERN, {0: 16}, inflight=(fd, size), bases={0: 1})
    got = q.wait(2)
    assert [h for h, _, _ in got] == heads[1:]
    for (_h, n, payload), sector in zip(got, (2, 3), strict=True):
        assert n == 513 and payload[:512] == bytes(data[sector * 512:(sector + 1) * 512])
    q.post(ins=[1], out=[BLK_HDR.pack(4, 0, 0)])
    q.notify()
    assert len(q.wait(1)) == 1  # and the ring goes on
    second.close_backend()
    os.close(fd)
    dev.close()


def test_backend_close_releases_every_fd(rng):
    rng.handshake()
    (_q,) = rng.start(MODERN, {0: 8}).values()
    kept = [rng.backend.queues[0].kick_fd, rng.backend.queues[0].call_fd]
    rng.close_backend()
    assert not any(fd_open(fd) for fd in kept)
    assert rng.backend.memory is None


def test_encode_reply_roundtrip():
    assert encode(Request.GET_FEATURES, U64.pack(1), flags=VERSION | FLAG_REPLY)[4:8] == b"\x05\0\0\0"
