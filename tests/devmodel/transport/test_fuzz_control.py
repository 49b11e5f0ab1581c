"""Hostile front-ends at the control plane, against the real server process: hypothesis mutates a QEMU-like
vhost-user session: payload bytes and sizes, header size fields, how a message is split over sends, and the
fds that come with each message (how many, and of which kind: eventfds, a blocking eventfd at its maximum,
pipes, sockets, a regular file, /dev/null, sealed memfds and unsealed ones that shrink after they are sent).
After every example the server must be alive, hold no more fds than when it was idle before, and serve a
fresh well-behaved front-end correctly.

CI runs it with a fixed budget: derandomized (the same examples every run) and a bounded example count.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acrnmgr.devmodel.vhost_user import (
    FLAG_NEED_REPLY, HEADER, INFLIGHT, MEM_HEADER, MEM_REGION, U64, VERSION, VRING_ADDR, VRING_STATE, Request,
)

from .frontend import DESC, REGIONS, VRING_DESC_F_WRITE, GuestRam
from .served import MODERN, Served, rng_roundtrip

EXAMPLES = int(os.environ.get("ACRNMGR_FUZZ_EXAMPLES", "600"))
FD_KINDS = ["ram", "eventfd", "eventfd-blocking-at-max", "pipe-read-writer-closed", "pipe-write-reader-closed",
            "socket-peer-closed", "regular-file", "dev-null", "memfd-sealed", "memfd-unsealed-shrinks"]
PROTOCOL = (1 << 0) | (1 << 3) | (1 << 9) | (1 << 12) | (1 << 13) | (1 << 16)
INFLIGHT_SIZE = 4096
FD_SLOTS = 8  # fds the unmutated session passes


class Server:
    """One server for all examples; an example that kills it gets a fresh one for the next (so that a
    failure replays as the same failure when hypothesis shrinks it)."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.runs = 0
        self.ok = True
        self.s = self._start()

    def _start(self) -> Served:
        self.runs += 1
        s = Served(self.directory / f"run{self.runs}")
        rng_roundtrip(s.path, 1)
        s.baseline = s.quiet_fds()
        return s

    def fresh(self) -> Served:
        """The server, restarted if the previous example failed (it may be dead, or wedged)."""
        if not self.ok or not self.s.alive():
            self.s.proc.kill()
            self.s.stop()
            self.s = self._start()
        self.ok = False  # until this example passes
        return self.s


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    holder = Server(tmp_path_factory.mktemp("fuzz"))
    yield holder
    holder.s.stop()


class Fds:
    """The fds of one example, by kind; everything is closed at the end of the example."""

    def __init__(self, ram: GuestRam, tmp: str) -> None:
        self.ram, self.tmp = ram, tmp
        self.mine: list[int] = []  # ours to close
        self.kicks: list[int] = []
        self.shrink: list[int] = []

    def _keep(self, *fds: int) -> int:
        self.mine += fds
        return fds[0]

    def make(self, kind: str) -> int:
        if kind == "ram":
            return self.ram.fd
        if kind == "eventfd":
            fd = self._keep(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
            self.kicks.append(fd)
            return fd
        if kind == "eventfd-blocking-at-max":
            fd = self._keep(os.eventfd(0, os.EFD_CLOEXEC))
            os.eventfd_write(fd, 0xFFFF_FFFF_FFFF_FFFE)
            return fd
        if kind == "pipe-read-writer-closed":
            r, w = os.pipe()
            os.close(w)
            return self._keep(r)
        if kind == "pipe-write-reader-closed":
            r, w = os.pipe()
            os.close(r)
            return self._keep(w)
        if kind == "socket-peer-closed":
            a, b = socket.socketpair()
            b.close()
            return self._keep(a.detach())
        if kind == "regular-file":
            fd = os.open(os.path.join(self.tmp, "file"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(fd, 4 << 20)
            return self._keep(fd)
        if kind == "dev-null":
            return self._keep(os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC))
        fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 4 << 20)
        if kind == "memfd-sealed":
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        else:
            self.shrink.append(fd)
        return self._keep(fd)

    def close(self) -> None:
        for fd in self.mine:
            os.close(fd)


def session() -> list[list]:
    """[request, flags, payload, fd kinds] for a QEMU-like start of one ring, with inflight tracking."""
    desc, avail, used = 0x1_0000_1000, 0x1_0000_2000, 0x1_0000_3000
    uva = GuestRam.uva
    need = VERSION | FLAG_NEED_REPLY
    return [[r, need if p is not None else VERSION, p or b"", k] for r, p, k in [
        (Request.GET_FEATURES, None, []),
        (Request.GET_PROTOCOL_FEATURES, None, []),
        (Request.SET_PROTOCOL_FEATURES, U64.pack(PROTOCOL), []),
        (Request.SET_OWNER, b"", []),
        (Request.SET_INFLIGHT_FD, INFLIGHT.pack(INFLIGHT_SIZE, 0, 1, 16), ["memfd-sealed"]),
        (Request.SET_FEATURES, U64.pack(MODERN), []),
        (Request.SET_MEM_TABLE, MEM_HEADER.pack(2, 0) + b"".join(MEM_REGION.pack(*r) for r in REGIONS),
         ["ram", "ram"]),
        (Request.SET_VRING_NUM, VRING_STATE.pack(0, 16), []),
        (Request.SET_VRING_BASE, VRING_STATE.pack(0, 0), []),
        (Request.SET_VRING_ADDR, VRING_ADDR.pack(0, 0, uva(desc), uva(used), uva(avail), 0), []),
        (Request.SET_VRING_KICK, U64.pack(0), ["eventfd"]),
        (Request.SET_VRING_CALL, U64.pack(0), ["eventfd"]),
        (Request.SET_VRING_ERR, U64.pack(0), ["eventfd"]),
        (Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 1), []),
        (Request.GET_STATUS, None, []),
        (Request.GET_VRING_BASE, VRING_STATE.pack(0, 0), []),
        (Request.SET_VRING_KICK, U64.pack(0), ["eventfd"]),
        (Request.RESET_DEVICE, b"", []),
    ]]


kinds = st.sampled_from(FD_KINDS)
mutation = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 40), st.integers(0, 300), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 40), st.integers(0, 300)),
    st.tuples(st.just("fd-kind"), st.integers(0, 40), st.integers(0, 12), kinds),
    st.tuples(st.just("fd-count"), st.integers(0, 40), st.lists(kinds, max_size=12)),
    st.tuples(st.just("header-size"), st.integers(0, 40), st.sampled_from([0, 1, 7, 8, 24, 300, 4096, 4097, 1 << 31])),
    st.tuples(st.just("split"), st.integers(0, 40), st.integers(1, 13)),
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("dup"), st.integers(0, 40)),
    st.tuples(st.just("flags"), st.integers(0, 40), st.sampled_from([0, 1, 2, 3, 1 | 4, 1 | 8, 0xFFFF_FFFF])),
)


def _mutate(steps: list[list], mutations: list[tuple], slots: list[str | None]) -> list[dict]:
    """The session with each fd slot's kind replaced where `slots` names one, then `mutations` applied."""
    out = [{"request": r, "flags": f, "payload": p, "kinds": list(k), "size": None, "split": 0}
           for r, f, p, k in steps]
    choices = iter(slots)
    for step in out:
        step["kinds"] = [next(choices, None) or kind for kind in step["kinds"]]
    for m in mutations:
        if not out:
            break
        step = out[m[1] % len(out)]
        match m:
            case ("byte", _, pos, value) if step["payload"]:
                b = bytearray(step["payload"])
                b[pos % len(b)] = value
                step["payload"] = bytes(b)
            case ("truncate", _, pos):
                step["payload"] = step["payload"][:pos % (len(step["payload"]) + 1)]
            case ("fd-kind", _, pos, kind):
                if step["kinds"]:
                    step["kinds"][pos % len(step["kinds"])] = kind
                else:
                    step["kinds"] = [kind]
            case ("fd-count", _, new):
                step["kinds"] = list(new)
            case ("header-size", _, size):
                step["size"] = size
            case ("split", _, chunk):
                step["split"] = chunk
            case ("drop", _):
                out.remove(step)
            case ("dup", _):
                out.insert(m[1] % len(out), dict(step, kinds=list(step["kinds"])))
            case ("flags", _, flags):
                step["flags"] = flags
    return out


def _post_a_buffer(ram: GuestRam) -> None:
    """One writable buffer in the ring the session sets up, so that starting the ring touches guest memory."""
    ram.write(0x1_0000_1000, DESC.pack(0x10000, 32, VRING_DESC_F_WRITE, 0))
    ram.write(0x1_0000_2000, struct.pack("<HHH", 0, 1, 0))


def _send(sock: socket.socket, step: dict, fds: Fds) -> None:
    payload = step["payload"]
    size = len(payload) if step["size"] is None else step["size"]
    data = HEADER.pack(step["request"], step["flags"], size & 0xFFFF_FFFF) + payload
    passed = [fds.make(k) for k in step["kinds"]]
    chunk = step["split"] or len(data)
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        if i == 0 and passed:
            socket.send_fds(sock, [piece], passed)
        else:
            sock.sendall(piece)
    # Shrink what may shrink right away, once the server has mapped it (a round trip): the next messages
    # (ring start, kicks) make the server touch it.
    if fds.shrink:
        _sync(sock)
        for fd in fds.shrink:
            os.ftruncate(fd, 0)
        fds.shrink.clear()


def _sync(sock: socket.socket, timeout: float = 0.5) -> None:
    """A GET_QUEUE_NUM round trip, skipping (and closing the fds of) other replies; gives up after `timeout`
    (a mutated header may have made the server take our request for payload)."""
    sock.sendall(HEADER.pack(Request.GET_QUEUE_NUM, VERSION, 0))
    deadline = time.monotonic() + timeout
    buf = b""
    sock.settimeout(timeout)
    try:
        while time.monotonic() < deadline:
            data, got, _, _ = socket.recv_fds(sock, 4096, 8)
            for fd in got:
                os.close(fd)
            if not data:
                return
            buf += data
            while len(buf) >= HEADER.size:
                request, _flags, size = HEADER.unpack_from(buf)
                if len(buf) < HEADER.size + size:
                    break
                buf = buf[HEADER.size + size:]
                if request == Request.GET_QUEUE_NUM:
                    return
    except OSError:
        pass
    finally:
        sock.settimeout(5)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, max_size=6),
       slots=st.lists(st.one_of(st.none(), kinds), min_size=FD_SLOTS, max_size=FD_SLOTS))
def test_mutated_control_messages_and_fds(servers, tmp_path, mutations, slots):
    server = servers.fresh()
    steps = _mutate(session(), mutations, slots)
    ram = GuestRam()
    _post_a_buffer(ram)
    fds = Fds(ram, str(tmp_path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(5)  # before connecting: a wedged server's full backlog would block connect() for good
    try:
        sock.connect(str(server.path))
        try:
            for step in steps:
                _send(sock, step, fds)
            for fd in fds.kicks:
                os.eventfd_write(fd, 1)
            time.sleep(0.01)
        except OSError:
            pass  # the server dropped the connection: allowed
    finally:
        sock.close()
        fds.close()
        ram.close()
    assert server.alive(), f"server died (rc {server.proc.returncode}):\n{server.log()[-3000:]}"
    assert server.settle_fds(server.baseline) == server.baseline, "the server kept fds of a closed session"
    got = rng_roundtrip(server.path, 2, timeout=10)
    assert [(n, len(data)) for _, n, data in got] == [(32, 32)] * 2
    assert server.alive()
    servers.ok = True


def test_the_log_stays_small(servers):
    """Whatever the examples did, the rate limit kept the log to a reasonable size."""
    assert servers.runs == 1, "some example killed the server"
    assert servers.s.log_path.stat().st_size < 2 << 20
