"""The vhost-user state of one vring, as ONE enum and an explicit transition table (modelled on h11's _state.py).

The vhost-user spec (QEMU's docs/interop/vhost-user.rst, "Ring states") gives a ring two independent properties:
*started* (a kick fd arrived with SET_VRING_KICK; GET_VRING_BASE stops it) and *enabled* (SET_VRING_ENABLE, or
implicitly on start when VHOST_USER_F_PROTOCOL_FEATURES was not negotiated).  The device processes a ring only
while it is both.  A ring whose driver broke the virtqueue protocol (a hostile or corrupt ring) is in
NEEDS_RESET: nothing is processed until the front-end stops it (GET_VRING_BASE) or resets the device.

:func:`transition` is the only way a ring changes state.  Events the table does not list for a state are
illegal: they raise :class:`IllegalTransition` (a ValueError), which the transport answers as a protocol error
(a NACK with REPLY_ACK); the ring's state does not change and the process never crashes.
"""

from __future__ import annotations

import enum


class RingState(enum.Enum):
    STOPPED = "stopped"                  # no kick fd, disabled: the initial state
    STOPPED_ENABLED = "stopped-enabled"  # enabled before it was started (or stopped while enabled)
    STARTED = "started"                  # kick fd set, disabled by the front-end
    ENABLED = "enabled"                  # started and enabled: the only state in which the device processes it
    NEEDS_RESET = "needs-reset"          # the driver broke the ring; left by STOP or RESET only


class RingEvent(enum.Enum):
    KICK = "kick"            # SET_VRING_KICK (with an fd or VRING_NOFD)
    ENABLE = "enable"        # SET_VRING_ENABLE 1, or the implicit enable without PROTOCOL_FEATURES
    DISABLE = "disable"      # SET_VRING_ENABLE 0
    CONFIGURE = "configure"  # SET_VRING_NUM / SET_VRING_BASE / SET_VRING_ENDIAN: only while stopped
    SET_ADDR = "set-addr"    # SET_VRING_ADDR: also while running (the spec lets the front-end move a live ring)
    STOP = "stop"            # GET_VRING_BASE, RESET_OWNER
    FAIL = "fail"            # the core queue found the ring corrupt
    RESET = "reset"          # RESET_DEVICE, end of the connection


class IllegalTransition(ValueError):
    """An event the current ring state does not allow (a protocol error by the front-end)."""

    def __init__(self, state: RingState, event: RingEvent) -> None:
        super().__init__(f"{event.value} is not allowed while the ring is {state.value}")
        self.state = state
        self.event = event


S, E = RingState, RingEvent

# TRANSITIONS[state][event] -> next state.  A missing entry is an illegal transition.
TRANSITIONS: dict[RingState, dict[RingEvent, RingState]] = {
    S.STOPPED: {
        E.KICK: S.STARTED, E.ENABLE: S.STOPPED_ENABLED, E.DISABLE: S.STOPPED, E.CONFIGURE: S.STOPPED,
        E.SET_ADDR: S.STOPPED, E.STOP: S.STOPPED, E.FAIL: S.NEEDS_RESET, E.RESET: S.STOPPED,
    },
    S.STOPPED_ENABLED: {
        E.KICK: S.ENABLED, E.ENABLE: S.STOPPED_ENABLED, E.DISABLE: S.STOPPED, E.CONFIGURE: S.STOPPED_ENABLED,
        E.SET_ADDR: S.STOPPED_ENABLED, E.STOP: S.STOPPED_ENABLED, E.FAIL: S.NEEDS_RESET, E.RESET: S.STOPPED,
    },
    S.STARTED: {
        E.KICK: S.STARTED, E.ENABLE: S.ENABLED, E.DISABLE: S.STARTED, E.SET_ADDR: S.STARTED, E.STOP: S.STOPPED,
        E.FAIL: S.NEEDS_RESET, E.RESET: S.STOPPED,
    },
    S.ENABLED: {
        E.KICK: S.ENABLED, E.ENABLE: S.ENABLED, E.DISABLE: S.STARTED, E.SET_ADDR: S.ENABLED,
        E.STOP: S.STOPPED_ENABLED, E.FAIL: S.NEEDS_RESET, E.RESET: S.STOPPED,
    },
    # A broken ring ignores enable changes (QEMU disables rings before stopping them), refuses to be restarted
    # or reconfigured in place, and leaves NEEDS_RESET only when stopped or reset.
    S.NEEDS_RESET: {
        E.ENABLE: S.NEEDS_RESET, E.DISABLE: S.NEEDS_RESET, E.STOP: S.STOPPED, E.FAIL: S.NEEDS_RESET,
        E.RESET: S.STOPPED,
    },
}
del S, E


def transition(state: RingState, event: RingEvent) -> RingState:
    """The state after ``event``; IllegalTransition if ``state`` does not allow it."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


def runnable(state: RingState) -> bool:
    """Whether the device may process a ring in ``state``."""
    return state is RingState.ENABLED


__all__ = ["TRANSITIONS", "IllegalTransition", "RingEvent", "RingState", "runnable", "transition"]
