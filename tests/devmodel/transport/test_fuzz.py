"""Hostile front-ends: random and mutated message streams never crash the backend or leak fds; the only
exception that may escape is Disconnect (the shell then drops the connection)."""

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acrnmgr.devmodel.gpio import GpioDevice, LineConfig
from acrnmgr.devmodel.rng import RngDevice
from acrnmgr.devmodel.vhost_user import (
    FLAG_NEED_REPLY, MAX_PAYLOAD, VERSION, Close, Disconnect, Message, MessageReader, Notify, Process, Reply, Request,
    VhostUserBackend,
)

from .frontend import MEM_HEADER, MEM_REGION, REGIONS, U64, VRING_ADDR, VRING_STATE, GuestRam

requests = st.one_of(st.sampled_from(list(Request)), st.integers(0, 0xFFFFFFFF))
payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda a, b: struct.pack("<II", a, b), st.integers(0, 300), st.integers(0, 1 << 32 - 1)),
    st.builds(lambda v: struct.pack("<Q", v), st.integers(0, (1 << 64) - 1)),
    st.builds(lambda *v: struct.pack("<IIQQQQ", *v), st.integers(0, 3), st.integers(0, 3),
              *[st.sampled_from([0, 0x7F00_1000_0000, 0x7F00_2000_0100, 1 << 63, 0xFFFF_FFFF_FFFF_FFF0])] * 4),
)
message = st.tuples(requests, st.booleans(), payloads, st.integers(0, 3))

# rng: no config space, one ring; gpio: a config space (GET_CONFIG), and ring 0 is its request queue.
DEVICES = {"rng": RngDevice, "gpio": lambda: GpioDevice([LineConfig("button", "in"), LineConfig("led")])}


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _execute(backend, effects) -> None:
    """Carry out effects as the server would: reply fds closed, Unwatch before Close, rings processed."""
    for e in effects:
        if isinstance(e, Reply):
            for fd in e.fds:
                os.close(fd)
        elif isinstance(e, Close):
            os.close(e.fd)
        elif isinstance(e, Process):
            _execute(backend, backend.process(e.queue))
        elif isinstance(e, Notify):
            os.eventfd_write(e.fd, 1)


def _apply(backend, ram, handed: list, request: int, flags: int, payload: bytes, nfds: int) -> bool:
    """Hand one message (with `nfds` dups of guest RAM, recorded in `handed`) to the backend as the server
    would. False once the backend disconnects."""
    fds = [os.dup(ram.fd) for _ in range(nfds)]
    handed += fds
    try:
        effects = backend.handle(Message(request, flags, payload, fds))
    except Disconnect as exc:
        for fd in exc.fds:
            os.close(fd)
        return False
    _execute(backend, effects)
    return True


@pytest.mark.parametrize("kind", sorted(DEVICES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message, max_size=25))
def test_random_message_streams(kind, stream):
    dev = DEVICES[kind]()
    backend = VhostUserBackend(dev)
    ram = GuestRam()
    handed = []
    try:
        for request, need_reply, payload, nfds in stream:
            flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
            if not _apply(backend, ram, handed, request, flags, payload, nfds):
                break
    finally:
        _execute(backend, backend.close())
        dev.close()
        ram.close()
    assert not any(_open(fd) for fd in handed)  # every fd we passed was either kept and then closed, or closed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 64))
def test_reader_on_random_bytes(data, chunk):
    reader = MessageReader()
    try:
        for i in range(0, len(data), chunk):
            for msg in reader.feed(data[i:i + chunk]):
                assert len(msg.payload) <= MAX_PAYLOAD
    except Disconnect:
        pass


def valid_setup(ram: GuestRam) -> list[tuple[int, bytes, int]]:
    """(request, payload, number of fds) for a correct single-ring start, rings in region 1."""
    desc, avail, used = 0x1_0000_1000, 0x1_0000_2000, 0x1_0000_3000
    uva = GuestRam.uva
    return [
        (Request.GET_FEATURES, b"", 0),
        (Request.SET_PROTOCOL_FEATURES, U64.pack(0xFFFF), 0),
        (Request.SET_OWNER, b"", 0),
        (Request.GET_INFLIGHT_FD, struct.pack("<QQHH4x", 0, 0, 1, 8), 0),
        (Request.SET_FEATURES, U64.pack((1 << 32) | (1 << 30) | (1 << 29) | (1 << 28)), 0),
        (Request.SET_MEM_TABLE, MEM_HEADER.pack(2, 0) + b"".join(MEM_REGION.pack(*r) for r in REGIONS), 2),
        (Request.SET_VRING_NUM, VRING_STATE.pack(0, 8), 0),
        (Request.SET_VRING_BASE, VRING_STATE.pack(0, 0), 0),
        (Request.SET_VRING_ADDR, VRING_ADDR.pack(0, 0, uva(desc), uva(used), uva(avail), 0), 0),
        (Request.SET_VRING_KICK, U64.pack(0), 1),
        (Request.SET_VRING_CALL, U64.pack(0), 1),
        (Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 1), 0),
        (Request.GET_VRING_BASE, VRING_STATE.pack(0, 0), 0),
        (Request.SET_VRING_KICK, U64.pack(0), 1),
        (Request.RESET_DEVICE, b"", 0),
    ]


mutation = st.tuples(st.integers(0, 14), st.sampled_from(["byte", "truncate", "fds", "drop", "dup"]),
                     st.integers(0, 300), st.integers(0, 255))


@pytest.mark.parametrize("kind", sorted(DEVICES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, max_size=6), st.binary(min_size=16, max_size=0x3100))
def test_mutated_setup_with_hostile_ring_contents(kind, mutations, ring_bytes):
    dev = DEVICES[kind]()
    backend = VhostUserBackend(dev)
    ram = GuestRam()
    ram.write(0x1_0000_0000, ring_bytes)  # whatever the "driver" left in the ring pages
    steps = [list(m) for m in valid_setup(ram)]
    for index, kind, pos, value in mutations:
        step = steps[index % len(steps)]
        if kind == "byte" and step[1]:
            b = bytearray(step[1])
            b[pos % len(b)] = value
            step[1] = bytes(b)
        elif kind == "truncate":
            step[1] = step[1][:pos % (len(step[1]) + 1)]
        elif kind == "fds":
            step[2] = value % 4
        elif kind == "drop":
            step[0] = -1
        elif kind == "dup":
            steps.insert(index % len(steps), list(step))
    handed = []
    try:
        for request, payload, nfds in steps:
            if request < 0:
                continue
            if not _apply(backend, ram, handed, request, VERSION | FLAG_NEED_REPLY, payload, nfds):
                break
    finally:
        _execute(backend, backend.close())
        dev.close()
        ram.close()
    assert not any(_open(fd) for fd in handed)
