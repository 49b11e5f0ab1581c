"""virtio-console over vhost-user. QEMU 7.2 has no vhost-user console front-end (its vhost-user devices are
blk, scsi, fs, gpio, i2c, input, rng, gpu, vsock and the net netdev; there is no generic vhost-user-device
before 8.x), so the console is driven end to end by our Python front-end: real server, real socket, real
guest-memory rings, and a real pty / Unix socket on the host side."""

import os
import select
import socket
import threading
import time

import pytest

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.console import ConsoleDevice
from acrnmgr.devmodel.server import VhostUserServer
from acrnmgr.devmodel.vhost_user import F_PROTOCOL_FEATURES

from .frontend import Frontend

MODERN = (1 << F.F_VERSION_1) | F_PROTOCOL_FEATURES | (1 << F.F_RING_EVENT_IDX)


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


def serve(device, path):
    server = VhostUserServer(device, path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def read_until(fd_or_sock, want: bytes, timeout=10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"only got {got!r}"
        r, _, _ = select.select([fd_or_sock], [], [], left)
        if r:
            chunk = fd_or_sock.recv(4096) if isinstance(fd_or_sock, socket.socket) else os.read(fd_or_sock, 4096)
            got += chunk
    return got


def test_console_over_a_unix_socket(run_dir):
    dev = ConsoleDevice(pty=False, socket_path=str(run_dir / "console.sock"))
    server, thread = serve(dev, run_dir / "vu.sock")
    fe = Frontend(server.path)
    host = socket.socket(socket.AF_UNIX)
    try:
        fe.handshake()
        cfg = fe.get_config(0, 8)
        assert len(cfg) == 8
        queues = fe.start(MODERN, {0: 16, 1: 16})
        rx, tx = queues[0], queues[1]
        for _ in range(4):
            rx.post(ins=[64])
        rx.notify()
        host.connect(str(run_dir / "console.sock"))
        host.sendall(b"hello guest\n")
        got = b""
        while b"hello guest\n" not in got:
            got += b"".join(data for _, _, data in rx.wait(1))
        tx.post(out=[b"hello ", b"host\n"])
        tx.notify()
        assert tx.wait(1)[0][1] == 0  # TX buffers are only read
        assert read_until(host, b"hello host\n")
    finally:
        host.close()
        fe.close()
        server.stop()
        thread.join(10)
        dev.close()


def test_console_over_a_pty_survives_front_end_reconnection(run_dir):
    dev = ConsoleDevice(pty=True)
    server, thread = serve(dev, run_dir / "vu.sock")
    term = os.open(dev.pty_path, os.O_RDWR | os.O_NOCTTY)
    try:
        for session in range(2):
            fe = Frontend(server.path)
            try:
                fe.handshake()
                queues = fe.start(MODERN, {0: 8, 1: 8})
                tx = queues[1]
                tx.post(out=[f"session {session}\n".encode()])
                tx.notify()
                tx.wait(1)
                assert read_until(term, f"session {session}\n".encode())
                queues[0].post(ins=[32])
                queues[0].notify()
                os.write(term, b"typed\n")
                assert queues[0].wait(1)[0][2].startswith(b"typed")
            finally:
                fe.close()
        assert server.connections == 2
    finally:
        os.close(term)
        server.stop()
        thread.join(10)
        dev.close()
