"""The ring state machine: the transition table itself, and the backend refusing illegal transitions as
protocol errors (a NACK, state and fds unchanged) rather than crashing."""

import os

import pytest

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.ringstate import TRANSITIONS, IllegalTransition, RingEvent, RingState, runnable, transition
from acrnmgr.devmodel.rng import RngDevice
from acrnmgr.devmodel.vhost_user import (
    F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, U64, VERSION, VRING_STATE, Close, Message, Request, VhostUserBackend,
)

from .frontend import DESC, FrontQueue, Loopback

MODERN = (1 << F.F_VERSION_1) | F_PROTOCOL_FEATURES
S, E = RingState, RingEvent


# -- the table ------------------------------------------------------------------------------------------------------
def test_every_state_has_a_row_and_every_target_is_a_state():
    assert set(TRANSITIONS) == set(RingState)
    for row in TRANSITIONS.values():
        assert set(row.values()) <= set(RingState)


@pytest.mark.parametrize("state", list(RingState))
def test_stop_reset_and_fail_are_always_legal(state):
    assert transition(state, E.RESET) is S.STOPPED
    assert transition(state, E.FAIL) is S.NEEDS_RESET
    assert transition(state, E.STOP) in (S.STOPPED, S.STOPPED_ENABLED)


def test_the_spec_walk_start_enable_stop():
    # SET_VRING_KICK, SET_VRING_ENABLE 1, GET_VRING_BASE, SET_VRING_KICK: the enable survives the stop.
    s = transition(S.STOPPED, E.KICK)
    assert s is S.STARTED and not runnable(s)
    s = transition(s, E.ENABLE)
    assert s is S.ENABLED and runnable(s)
    s = transition(s, E.STOP)
    assert s is S.STOPPED_ENABLED and not runnable(s)
    assert transition(s, E.KICK) is S.ENABLED
    # Enabled before the kick fd arrived.
    assert transition(transition(S.STOPPED, E.ENABLE), E.KICK) is S.ENABLED
    assert transition(S.ENABLED, E.DISABLE) is S.STARTED


@pytest.mark.parametrize("state, event", [
    (S.NEEDS_RESET, E.KICK),        # a broken ring is not restarted in place
    (S.NEEDS_RESET, E.CONFIGURE),
    (S.NEEDS_RESET, E.SET_ADDR),
    (S.STARTED, E.CONFIGURE),       # size / base / endianness only change while stopped
    (S.ENABLED, E.CONFIGURE),
])
def test_illegal_transitions_raise(state, event):
    with pytest.raises(IllegalTransition) as exc:
        transition(state, event)
    assert isinstance(exc.value, ValueError) and exc.value.state is state and exc.value.event is event


def test_only_enabled_is_runnable():
    assert [s for s in RingState if runnable(s)] == [S.ENABLED]


# -- the backend ----------------------------------------------------------------------------------------------------
@pytest.fixture
def fe():
    dev = RngDevice()
    fe = Loopback(VhostUserBackend(dev))
    yield fe
    fe.close_backend()
    fe.close()
    dev.close()


def _nack(fe, request, payload, fds=()):
    """Send with NEED_REPLY; return the ack value (0 = accepted) after carrying out the effects."""
    fe.execute(fe.backend.handle(Message(request, VERSION | FLAG_NEED_REPLY, payload, list(fds))))
    return U64.unpack(fe.recv().payload)[0]


def _fd_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_backend_walks_the_states(fe):
    fe.handshake()
    q = FrontQueue(fe, 0, 8)
    fe.queues[0] = q
    ring = fe.backend.queues[0]
    assert ring.state is S.STOPPED
    fe.send(Request.SET_FEATURES, U64.pack(MODERN))
    fe.set_mem_table()
    q.configure(enable=False)
    assert ring.state is S.STARTED and not fe.backend.ready(0)
    fe.send(Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 1))
    assert ring.state is S.ENABLED and fe.backend.ready(0)
    fe.call(Request.GET_VRING_BASE, VRING_STATE.pack(0, 0))
    assert ring.state is S.STOPPED_ENABLED
    fe.send(Request.RESET_DEVICE)
    assert ring.state is S.STOPPED


def test_without_protocol_features_the_kick_enables(fe):
    fe.handshake()
    q = FrontQueue(fe, 0, 8)
    fe.queues[0] = q
    fe.send(Request.SET_FEATURES, U64.pack(1 << F.F_VERSION_1))
    fe.set_mem_table()
    q.configure(enable=False)
    assert fe.backend.queues[0].state is S.ENABLED


def test_resizing_a_started_ring_is_refused_and_changes_nothing(fe):
    fe.handshake()
    (q,) = fe.start(MODERN, {0: 8}).values()
    ring = fe.backend.queues[0]
    vq = ring.vq
    assert _nack(fe, Request.SET_VRING_NUM, VRING_STATE.pack(0, 4)) != 0
    assert _nack(fe, Request.SET_VRING_BASE, VRING_STATE.pack(0, 5)) != 0
    assert ring.state is S.ENABLED and ring.vq is vq and vq.size == 8 and vq.last_avail_idx == 0
    q.post(ins=[8])
    q.notify()
    assert len(q.wait(1)) == 1  # and the ring still runs


def test_a_broken_ring_refuses_a_restart_until_stopped(fe):
    fe.handshake()
    (q,) = fe.start(MODERN, {0: 8}).values()
    ring = fe.backend.queues[0]
    head = q.post(ins=[8])
    fe.ram.write(q.desc + 16 * head, DESC.pack(0xDEAD_0000_0000, 8, 2, 0))  # buffer outside guest RAM
    q.notify()
    assert ring.state is S.NEEDS_RESET and not fe.backend.ready(0)
    kick = os.eventfd(0)
    effects = fe.backend.handle(Message(Request.SET_VRING_KICK, VERSION | FLAG_NEED_REPLY, U64.pack(0), [kick]))
    nack, close = effects  # refused, and the fd it came with is given back rather than adopted
    assert U64.unpack(nack.data[12:]) != (0,) and close == Close(kick)
    assert ring.state is S.NEEDS_RESET and ring.kick_fd != kick
    fe.execute(effects)
    fe.recv()
    assert not _fd_open(kick)
    assert _nack(fe, Request.SET_VRING_NUM, VRING_STATE.pack(0, 8)) != 0
    assert _nack(fe, Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 0)) == 0  # QEMU disables before stopping
    fe.call(Request.GET_VRING_BASE, VRING_STATE.pack(0, 0))
    assert ring.state is S.STOPPED
    # QEMU's restart after the guest reset the device: the ring runs again.
    q.outstanding.clear()
    q.free = list(range(q.size))
    q.avail_idx = q.last_used = 0
    fe.ram.write(q.used, bytes(4))
    fe.ram.write(q.avail, bytes(4))
    q.configure()
    assert ring.state is S.ENABLED
    q.post(ins=[8])
    q.notify()
    assert len(q.wait(1)) == 1
