import os
import socket
import struct
import subprocess
import time

import pytest
from core_guest import GuestQueue, Rings

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.console import ConsoleDevice
from acrnmgr.devmodel.net import NetDevice
from acrnmgr.devmodel.rng import RngDevice


RAM_SIZE = 2 << 20


def _queues(ram, dev, n=2, size=32):
    dev.set_driver_features(dev.device_features())
    return [GuestQueue(ram, size=size, features=dev.driver_features, index=i) for i in range(n)]


def _wait_readable(fd, timeout=5.0):
    import select
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, "timed out waiting for data"


# -- rng ------------------------------------------------------------------------------------------------------------
def test_rng_fills_buffers(ram):
    dev = RngDevice()
    q, = _queues(ram, dev, n=1)
    bufs = [q.buf(64, True), q.buf(100, True)]
    head = q.add(bufs)
    head2 = q.add([q.buf(32, True)], indirect=True)
    assert dev.process_queue(0, q.vq, q.mem)
    used = dict(q.get_used())
    assert used == {head: 164, head2: 32}
    a, b = ram.read(bufs[0][0], 64), ram.read(bufs[1][0], 100)
    assert a != bytes(64) and b != bytes(100) and a != b[:64]
    dev.close()


def test_rng_ignores_readable_only_chain(ram):
    dev = RngDevice()
    q, = _queues(ram, dev, n=1)
    head = q.add([q.buf(b"nothing to fill")])
    dev.process_queue(0, q.vq, q.mem)
    assert q.get_used() == [(head, 0)] and not dev.needs_reset
    dev.close()


# -- console --------------------------------------------------------------------------------------------------------
def _run_io(dev, ram):
    notified = []
    for _fd, cb in dev.io_sources():
        notified += cb(Rings(ram.mem, dev.queues))
    return notified


def test_console_pty_both_ways(ram):
    dev = ConsoleDevice(pty=True)
    assert dev.pty_path and dev.pty_path.startswith("/dev/pts/")
    assert dev.device_id == 3 and struct.unpack("<HHII", dev.config_space()) == (80, 25, 1, 0)
    rx, tx = _queues(ram, dev)
    user = os.open(dev.pty_path, os.O_RDWR | os.O_NOCTTY)
    try:
        # guest -> host
        tx.add([tx.buf(b"hello from the guest\n")])
        assert dev.process_queue(1, tx.vq, tx.mem)
        assert len(tx.get_used()) == 1
        _wait_readable(user)
        assert os.read(user, 100) == b"hello from the guest\n"  # raw mode: no CRLF mangling, no echo
        # host -> guest: typed before the guest posted buffers (backlog), then more afterwards
        os.write(user, b"early ")
        _wait_readable(dev.io_sources()[0][0])
        assert _run_io(dev, ram) == []
        buf = rx.buf(64, True)
        head = rx.add([buf])
        assert dev.process_queue(0, rx.vq, rx.mem)
        (h, n), = rx.get_used()
        assert h == head and ram.read(buf[0], n) == b"early "
        rx.set_used_event(1)  # as a real driver does: interrupt me for the next used entry
        buf2 = rx.buf(64, True)
        rx.add([buf2])
        dev.process_queue(0, rx.vq, rx.mem)
        os.write(user, b"typed")
        _wait_readable(dev.io_sources()[0][0])
        assert _run_io(dev, ram) == [0]
        (h, n), = rx.get_used()
        assert ram.read(buf2[0], n) == b"typed"
    finally:
        os.close(user)
        dev.close()


def test_console_unix_socket(ram, tmp_path):
    path = str(tmp_path / "con.sock")
    dev = ConsoleDevice(socket_path=path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    rx, tx = _queues(ram, dev)
    buf = rx.buf(16, True)
    rx.add([buf])
    dev.process_queue(0, rx.vq, rx.mem)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    try:
        epfd = dev.io_sources()[0][0]
        _wait_readable(epfd)
        _run_io(dev, ram)  # accept
        c.sendall(b"ping")
        _wait_readable(epfd)
        assert _run_io(dev, ram) == [0]
        (_h, n), = rx.get_used()
        assert ram.read(buf[0], n) == b"ping"
        tx.add([tx.buf(b"po"), tx.buf(b"ng")])
        dev.process_queue(1, tx.vq, tx.mem)
        c.settimeout(5)
        assert c.recv(10) == b"pong"
    finally:
        c.close()
    _wait_readable(dev.io_sources()[0][0])
    _run_io(dev, ram)  # EOF: client dropped, device keeps going
    assert dev._client is None
    dev.close()
    assert not os.path.exists(path)


# -- net ------------------------------------------------------------------------------------------------------------
ETH_P_ALL = 0x0003


def _frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", 0x88B5) + payload  # 0x88B5: local experimental ethertype


@pytest.fixture
def net():
    name = f"acrtst{os.getpid() % 10000}"
    dev = NetDevice(tap=name, mac="52:54:00:aa:bb:cc")
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((name, 0))
    s.settimeout(5)
    yield dev, s
    s.close()
    dev.close()


def test_net_config(net):
    dev, _ = net
    assert dev.device_id == 1
    cfg = dev.config_space()
    assert cfg[:6] == bytes.fromhex("525400aabbcc")
    assert struct.unpack_from("<H", cfg, 6)[0] == 1  # link up
    assert F.has(dev.device_features(), F.NET_F_MAC) and F.has(dev.device_features(), F.NET_F_STATUS)


@pytest.mark.parametrize("modern", [True, False])
def test_net_tx_and_rx_through_a_real_tap(ram, net, modern):
    dev, s = net
    feats = dev.device_features() if modern else dev.device_features() & ~F.bit(F.F_VERSION_1)
    dev.set_driver_features(feats)
    hdr_len = 12 if modern else 10
    assert dev.hdr_len == hdr_len
    rx, tx = (GuestQueue(ram, size=32, features=dev.driver_features, index=i) for i in range(2))
    host_mac = bytes.fromhex("02aabbccddee")
    # TX: guest -> tap, header in its own descriptor
    out = _frame(host_mac, dev.mac, b"guest says hi" + bytes(40))
    tx.add([tx.buf(bytes(hdr_len)), tx.buf(out)])
    dev.process_queue(1, tx.vq, tx.mem)
    assert len(tx.get_used()) == 1
    deadline = time.monotonic() + 5
    while True:
        data = s.recv(2048)
        if data[12:14] == b"\x88\xb5":
            break
        assert time.monotonic() < deadline
    assert data == out
    # RX: host -> tap -> guest buffers (posted first); the kernel may deliver its own IPv6 chatter too.
    bufs = {}
    for _ in range(8):
        b = rx.buf(hdr_len + 1514, True)
        bufs[rx.add([b])] = b
    dev.process_queue(0, rx.vq, rx.mem)
    inp = _frame(dev.mac, host_mac, b"host says hi" + bytes(40))
    s.send(inp)
    deadline = time.monotonic() + 5
    found = None
    while found is None:
        assert time.monotonic() < deadline, "frame never reached the guest"
        _wait_readable(dev.fd)
        for _fd, cb in dev.io_sources():
            cb(Rings(ram.mem, dev.queues))
        for head, n in rx.get_used():
            data = ram.read(bufs[head][0], n)
            if data[hdr_len:] == inp:
                found = data
            b = rx.buf(hdr_len + 1514, True)
            bufs[rx.add([b])] = b
        dev.process_queue(0, rx.vq, rx.mem)
    assert found[:2] == b"\0\0"  # no checksum/GSO flags: we offer no offloads
    if modern:
        assert struct.unpack_from("<H", found, 10)[0] == 1  # num_buffers
