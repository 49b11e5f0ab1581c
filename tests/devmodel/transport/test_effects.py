"""The effects VhostUserBackend.handle() / process() / close() return: the backend itself never closes, polls
or signals an fd; it says what the shell must do, in order (fds stay open until the shell acts)."""

import os
import struct

import pytest

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.rng import RngDevice
from acrnmgr.devmodel.vhost_user import (
    F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, U64, VERSION, VRING_NOFD, VRING_STATE, Close, Message, Notify, Process, Reply,
    Request, Unwatch, VhostUserBackend, Watch,
)

from .frontend import DESC, MEM_HEADER, MEM_REGION, REGIONS, Loopback

MODERN = (1 << F.F_VERSION_1) | F_PROTOCOL_FEATURES


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@pytest.fixture
def fe():
    dev = RngDevice()
    fe = Loopback(VhostUserBackend(dev))
    fe.handshake(reply_ack=False)
    yield fe
    fe.close_backend()
    fe.close()
    dev.close()


def handle(fe, request, payload=b"", fds=(), flags=VERSION):
    return fe.backend.handle(Message(request, flags, payload, list(fds)))


def test_set_vring_kick_twice_unwatches_and_closes_the_old_fd(fe):
    (_q,) = fe.start(MODERN, {0: 8}).values()
    ring = fe.backend.queues[0]
    old = ring.kick_fd
    new = os.eventfd(0, os.EFD_NONBLOCK)
    effects = handle(fe, Request.SET_VRING_KICK, U64.pack(0), [new])
    # The ring is enabled and resolved, so the new start also owes it a run.
    assert effects == [Unwatch(old), Close(old), Watch(new, 0), Process(0)]
    assert fd_open(old) and ring.kick_fd == new  # sans-IO: closing is the shell's job
    fe.execute(effects)
    assert not fd_open(old)


def test_kick_without_fd_stops_watching_but_watches_nothing(fe):
    fe.start(MODERN, {0: 8})
    old = fe.backend.queues[0].kick_fd
    effects = handle(fe, Request.SET_VRING_KICK, U64.pack(VRING_NOFD | 0))
    assert effects == [Unwatch(old), Close(old), Process(0)]
    fe.execute(effects)


def test_a_started_but_disabled_ring_owes_no_run(fe):
    fe.send(Request.SET_FEATURES, U64.pack(MODERN))
    fe.set_mem_table()
    fe.send(Request.SET_VRING_NUM, VRING_STATE.pack(0, 8))
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    effects = handle(fe, Request.SET_VRING_KICK, U64.pack(0), [kick])
    assert effects == [Watch(kick, 0)]
    fe.execute(effects)


def test_set_vring_call_and_err_replace_without_watching(fe):
    fe.start(MODERN, {0: 8})
    old = fe.backend.queues[0].call_fd
    new = os.eventfd(0, os.EFD_NONBLOCK)
    effects = handle(fe, Request.SET_VRING_CALL, U64.pack(0), [new])
    assert effects == [Close(old)]
    fe.execute(effects)
    err1, err2 = os.eventfd(0), os.eventfd(0)
    assert handle(fe, Request.SET_VRING_ERR, U64.pack(0), [err1]) == []
    assert handle(fe, Request.SET_VRING_ERR, U64.pack(0), [err2]) == [Close(err1)]
    os.close(err1)


def test_get_vring_base_gives_back_kick_and_call_then_replies(fe):
    fe.start(MODERN, {0: 8})
    ring = fe.backend.queues[0]
    kick, call = ring.kick_fd, ring.call_fd
    effects = handle(fe, Request.GET_VRING_BASE, VRING_STATE.pack(0, 0))
    assert effects[:3] == [Unwatch(kick), Close(kick), Close(call)]
    (answer,) = effects[3:]
    assert isinstance(answer, Reply) and answer.data[12:] == VRING_STATE.pack(0, 0)
    fe.execute(effects)
    fe.recv()


def test_mem_table_fds_are_closed_after_mapping_and_refused_fds_too(fe):
    fds = [os.dup(fe.ram.fd) for _ in REGIONS]
    payload = MEM_HEADER.pack(len(REGIONS), 0) + b"".join(MEM_REGION.pack(*r) for r in REGIONS)
    effects = handle(fe, Request.SET_MEM_TABLE, payload, fds, flags=VERSION | FLAG_NEED_REPLY)
    assert effects[0] == Reply(struct.pack("<IIIQ", Request.SET_MEM_TABLE, VERSION | 4, 8, 0))
    assert effects[1:] == [Close(fd) for fd in fds]
    assert fe.backend.memory is not None and len(fe.backend.memory) == len(REGIONS)
    fe.execute(effects)
    fe.recv()
    r, w = os.pipe()
    assert handle(fe, 99, b"", [r, w]) == [Close(r), Close(w)]  # unknown request: its fds come straight back
    os.close(r)
    os.close(w)


def test_process_notifies_the_call_fd_and_a_broken_ring_its_err_fd_once(fe):
    (q,) = fe.start(MODERN, {0: 8}).values()
    ring = fe.backend.queues[0]
    q.post(ins=[8])
    assert fe.backend.process(0) == [Notify(ring.call_fd)]
    assert fe.backend.process(0) == []  # nothing new: no interrupt
    err = os.eventfd(0, os.EFD_NONBLOCK)
    fe.send(Request.SET_VRING_ERR, U64.pack(0), fds=[err])
    err_fd = ring.err_fd
    head = q.post(ins=[8])
    fe.ram.write(q.desc + 16 * head, DESC.pack(0xDEAD_0000_0000, 8, 2, 0))  # buffer outside guest RAM
    assert fe.backend.process(0) == [Notify(err_fd)]
    assert fe.backend.process(0) == []
    os.close(err)


def test_close_gives_back_every_fd(fe):
    fe.start(MODERN, {0: 8})
    err = os.eventfd(0)
    fe.send(Request.SET_VRING_ERR, U64.pack(0), fds=[err])
    os.close(err)
    ring = fe.backend.queues[0]
    kick, call, err = ring.kick_fd, ring.call_fd, ring.err_fd
    effects = fe.backend.close()
    assert effects == [Unwatch(kick), Close(kick), Close(call), Close(err)]
    assert all(fd_open(fd) for fd in (kick, call, err))
    fe.execute(effects)
    assert fe.backend.close() == []


def test_a_failed_kick_fd_is_unwatched_closed_and_breaks_the_ring_once(fe):
    fe.start(MODERN, {0: 8})
    ring = fe.backend.queues[0]
    kick = ring.kick_fd
    err = os.eventfd(0, os.EFD_NONBLOCK)
    fe.execute(handle(fe, Request.SET_VRING_ERR, U64.pack(0), [err]))
    err = ring.err_fd
    assert fe.backend.kick_failed(0, kick + 1000, "stale") == []  # not the ring's fd: nothing happens
    effects = fe.backend.kick_failed(0, kick, "reached end of file")
    assert effects == [Unwatch(kick), Close(kick), Notify(err)]
    fe.execute(effects)
    assert ring.kick_fd is None
    assert fe.get_u64(Request.GET_STATUS) & F.S_NEEDS_RESET
    assert fe.backend.kick_failed(0, kick, "again") == []  # once


def test_a_failed_call_fd_is_closed_and_forgotten(fe):
    fe.start(MODERN, {0: 8})
    ring = fe.backend.queues[0]
    call = ring.call_fd
    assert fe.backend.notify_failed(call, "failed: broken pipe") == [Close(call)]
    assert ring.call_fd is None
    os.close(call)
    assert fe.backend.notify_failed(call, "again") == []
