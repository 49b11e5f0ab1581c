"""The socket server: socket safety, fd passing, reconnection, bad peers, clean stop. A Python front-end
drives the real server over a real Unix socket."""

import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.blk import BlkDevice
from acrnmgr.devmodel.rng import RngDevice
from acrnmgr.devmodel.server import ServerError, VhostUserServer
from acrnmgr.devmodel.vhost_user import F_PROTOCOL_FEATURES, HEADER, U64, Request

from .frontend import Frontend

MODERN = (1 << F.F_VERSION_1) | F_PROTOCOL_FEATURES | (1 << F.F_RING_EVENT_IDX)


class Running:
    def __init__(self, device, path):
        self.device = device
        self.server = VhostUserServer(device, path)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.device.close()


@pytest.fixture
def sock_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def rng_server(sock_dir):
    r = Running(RngDevice(), sock_dir / "rng.sock")
    yield r
    r.stop()


def rng_roundtrip(path, n=3):
    fe = Frontend(path)
    try:
        fe.handshake()
        (q,) = fe.start(MODERN, {0: 16}).values()
        for _ in range(n):
            q.post(ins=[32])
        q.notify()
        return q.wait(n)
    finally:
        fe.close()


def test_socket_is_0600_in_a_created_0700_directory(tmp_path):
    path = tmp_path / "new" / "deeper" / "dev.sock"
    old = os.umask(0o022)
    try:
        r = Running(RngDevice(), path)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        r.stop()
    assert not path.exists()  # removed on stop


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_group_or_world_writable_directory_is_refused(tmp_path, mode):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(ServerError, match="writable"):
        VhostUserServer(RngDevice(), d / "x.sock")


def test_a_regular_file_at_the_path_is_not_replaced(sock_dir):
    victim = sock_dir / "data"
    victim.write_text("keep me")
    with pytest.raises(ServerError, match="not a socket"):
        VhostUserServer(RngDevice(), victim)
    assert victim.read_text() == "keep me"


def test_stale_socket_of_a_killed_server_is_replaced(sock_dir):
    path = sock_dir / "rng.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    r = Running(RngDevice(), path)
    try:
        assert len(rng_roundtrip(path)) == 3
    finally:
        r.stop()


def test_serves_again_after_the_front_end_disconnects(rng_server):
    path = rng_server.server.path
    for _ in range(3):
        assert len(rng_roundtrip(path)) == 3
    assert rng_server.server.connections == 3


def test_bad_peer_is_dropped_and_the_next_one_served(rng_server):
    path = rng_server.server.path
    bad = socket.socket(socket.AF_UNIX)
    bad.connect(str(path))
    bad.sendall(HEADER.pack(Request.GET_FEATURES, 0x2, 0))  # version 2: framing cannot be trusted
    bad.settimeout(5)
    assert bad.recv(64) == b""  # connection closed by the server
    bad.close()
    half = socket.socket(socket.AF_UNIX)
    half.connect(str(path))
    half.sendall(HEADER.pack(Request.SET_FEATURES, 1, 8)[:7])  # a peer that dies mid-header
    half.close()
    assert len(rng_roundtrip(path)) == 3


def test_unknown_request_with_need_reply_is_refused_over_the_socket(rng_server):
    fe = Frontend(rng_server.server.path)
    try:
        fe.handshake()
        fe._send(HEADER.pack(77, 1 | 8, 0), [])
        ack = fe.recv()
        assert ack.request == 77 and U64.unpack(ack.payload)[0] != 0
        assert fe.get_u64(Request.GET_QUEUE_NUM) == 1  # still talking
    finally:
        fe.close()


def test_blk_multiqueue_over_the_socket(sock_dir, tmp_path):
    image = tmp_path / "disk.img"
    data = os.urandom(1 << 20)
    image.write_bytes(data)
    r = Running(BlkDevice(str(image), num_queues=2), sock_dir / "blk.sock")
    fe = Frontend(r.server.path)
    try:
        fe.handshake()
        assert fe.get_u64(Request.GET_QUEUE_NUM) == 2
        queues = fe.start(MODERN, {0: 32, 1: 32})
        hdr = struct.Struct("<IIQ")
        for qi, q in queues.items():
            for sector in range(4):
                q.post(out=[hdr.pack(0, 0, sector + 8 * qi)], ins=[512, 1])
            q.notify()
        for qi, q in queues.items():
            got = {h: payload for h, _, payload in q.wait(4)}
            assert len(got) == 4
            for payload in got.values():
                assert payload[512:] == b"\0"
                assert payload[:512] in {data[s * 512:(s + 1) * 512] for s in range(8 * qi, 8 * qi + 4)}
    finally:
        fe.close()
        r.stop()


def test_cli_serves_until_sigterm_and_cleans_up(sock_dir):
    path = sock_dir / "cli.sock"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "acrnmgr"), "devmodel", "serve", "--device", "rng",
                             "--socket", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        assert len(rng_roundtrip(path)) == 3
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not path.exists()


@pytest.mark.parametrize("argv, code, text", [
    (["--device", "blk"], 2, "needs --image"),
    (["--device", "rng", "--tap", "t0"], 2, "--device net only"),
    (["--device", "net", "--tap", "t0", "--mac", "nope"], 1, "not a MAC"),
    (["--device", "blk", "--image", "/nonexistent/disk.img"], 1, "does not exist"),
    (["--device", "console", "--pty", "--console-socket", "/x"], 2, "mutually exclusive"),
    (["--device", "tape"], 2, ""),
])
def test_cli_bad_arguments_exit_cleanly(sock_dir, argv, code, text):
    proc = subprocess.run([str(Path(sys.executable).parent / "acrnmgr"), "devmodel", "serve", "--socket",
                           str(sock_dir / "x.sock"), *argv], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == code, proc.stderr
    assert text in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_refuses_world_writable_socket_directory(tmp_path):
    d = tmp_path / "pub"
    d.mkdir()
    os.chmod(d, 0o777)
    proc = subprocess.run([str(Path(sys.executable).parent / "acrnmgr"), "devmodel", "serve", "--device", "rng",
                           "--socket", str(d / "x.sock")], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert "world-writable" in proc.stderr and "Traceback" not in proc.stderr


def test_a_saturated_blocking_call_fd_does_not_block_the_server(rng_server):
    """A front-end's call eventfd that is blocking and whose counter is at its maximum would block a plain
    eventfd_write forever: the server makes received fds non-blocking and skips the signal instead."""
    fe = Frontend(rng_server.server.path)
    call = os.eventfd(0, os.EFD_CLOEXEC)  # blocking
    try:
        fe.handshake()
        (q,) = fe.start(MODERN, {0: 16}).values()
        os.eventfd_write(call, 0xFFFF_FFFF_FFFF_FFFE)
        fe.send(Request.SET_VRING_CALL, U64.pack(0), fds=[call])
        q.post(ins=[32])
        q.notify()
        assert len(q.wait(1, timeout=5)) == 1  # completed (the signal itself is lost: the counter is full)
        assert fe.get_u64(Request.GET_QUEUE_NUM) == 1  # and still answering after signalling
    finally:
        os.close(call)
        fe.close()


def test_a_kick_fd_that_cannot_be_polled_does_not_drop_the_connection(rng_server, tmp_path):
    fe = Frontend(rng_server.server.path)
    regular = os.open(tmp_path / "not-an-eventfd", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fe.handshake()
        fe.start(MODERN, {0: 16})
        fe.send(Request.SET_VRING_KICK, U64.pack(0), fds=[regular])
        assert fe.get_u64(Request.GET_QUEUE_NUM) == 1
    finally:
        os.close(regular)
        fe.close()


def test_poll_window_adapts_as_qemu_polling_does():
    from acrnmgr.devmodel.server import PollWindow
    poll = PollWindow(32e-6)
    assert poll.window == 0
    for expected in (4e-6, 8e-6, 16e-6, 32e-6, 32e-6):  # waits polling could have caught: it widens, up to max
        poll.waited(20e-6)
        assert poll.window == pytest.approx(expected)
    poll.waited(10e-6)  # caught within the window: as it is
    assert poll.window == pytest.approx(32e-6)
    poll.waited(5e-3)  # a wait longer than the most it may poll: polling stops, no CPU burnt while idle
    assert poll.window == 0
    off = PollWindow(0)
    off.waited(1e-6)
    off.waited(0)
    assert off.window == 0


@pytest.mark.parametrize("poll_max", [0.0, 1.0])
def test_the_loop_polls_within_its_window_and_sleeps_without_one(sock_dir, poll_max):
    """An event that comes while the window lasts is found polling (select(0)), not after a sleep; with no window
    (--poll-us 0) the loop only ever sleeps.  The window is wide here, so a loaded machine cannot close it."""
    server = VhostUserServer(RngDevice(), sock_dir / "rng.sock", poll_max=poll_max)
    server.poll.window = poll_max
    later = threading.Timer(0.02, server.stop)  # stop() wakes the loop through its pipe
    later.start()
    try:
        ready = server._wait(None)
        assert [key.fileobj for key, _ in ready] == [server._wake_r]
        assert server.polled_rounds == (1 if poll_max else 0)
    finally:
        later.join()
        server.serve_forever()  # stopping: closes everything
        server.device.close()
