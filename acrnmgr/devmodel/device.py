"""Virtio device base class: features, config space, status, and the queue-draining loop.

Contract with the transport (vhost_user.py / server.py):

* ``device_features()`` -> 64-bit virtio features (VERSION_1, INDIRECT_DESC, EVENT_IDX + device bits).  The
  transport adds VHOST_USER_F_PROTOCOL_FEATURES itself and strips it before ``set_driver_features(f)``, then calls
  ``vq.set_features(device.driver_features)`` on each queue.
* ``attach_queue(qidx, vq)`` when a queue object exists (``process_queue`` also attaches).  Attaching wires
  ``vq.on_broken`` so a broken queue sets NEEDS_RESET in ``status``.
* ``process_queue(qidx, vq, mem) -> bool`` on every kick (and once when a queue gets enabled), with the current
  guest memory table: handles everything pending; True means "signal the call eventfd of qidx".
* ``io_sources() -> list[(fd, callback)]``: fds the device wants polled for *reading*.  The list is dynamic (e.g. a
  tap fd is only listed while RX buffers are available): call ``io_sources()`` again after every
  ``process_queue`` and every callback and (un)register the difference.  ``callback(rings)`` gets a
  :class:`RingAccess` (``rings.ring(qidx)`` is the queue and memory table while that ring may be processed, else
  None) and returns the queue indexes whose call eventfd must be signalled.
* ``host_sources() -> list[(fd, callback)]``: fds polled for reading for the server's whole lifetime, with or
  without a front-end (a control socket the host talks to); fixed when the server starts.  Without a front-end
  the callback gets :data:`NO_RINGS` and what it returns is ignored.
* ``read_config(offset, size)`` / ``write_config(offset, data)`` for GET_CONFIG / SET_CONFIG.
* ``reset()`` on RESET_OWNER / RESET_DEVICE / status 0; ``close()`` on shutdown.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

from . import features as F
from .memory import GuestMemory
from .virtqueue import DescriptorChain, VirtQueue
from .logs import get_logger

log = get_logger(__name__)

CONFIG_SPACE_MAX = 256  # vhost-user GET_CONFIG payload limit


class RingAccess(Protocol):
    """What a device's io callback gets from the transport: the rings it may touch right now."""

    def ring(self, qidx: int) -> tuple[VirtQueue, GuestMemory] | None:
        """Queue ``qidx`` and the guest memory table, if the ring is running (started, enabled, not broken)."""
        ...


class _NoRings:
    """The RingAccess of a server without a front-end: no ring may be touched."""

    def ring(self, qidx: int) -> tuple[VirtQueue, GuestMemory] | None:
        return None


NO_RINGS = _NoRings()

IoCallback = Callable[[RingAccess], list[int]]
ChainHandler = Callable[[VirtQueue, DescriptorChain], "int | None"]


class VirtioDevice:
    device_id: int = 0
    name: str = "virtio"
    num_queues: int = 1
    max_queue_size: int = 1024  # QEMU VIRTQUEUE_MAX_SIZE; the transport refuses larger rings

    def __init__(self) -> None:
        self.status = 0
        self.driver_features = 0
        self.queues: dict[int, VirtQueue] = {}
        # Legacy (no VERSION_1) drivers use guest-native byte order; vhost-user's SET_VRING_ENDIAN can change it.
        self.guest_big_endian = sys.byteorder == "big"

    # -- features -------------------------------------------------------------------------------------------
    def device_features(self) -> int:
        """The device's full 64-bit virtio feature set (without the vhost-user PROTOCOL_FEATURES bit)."""
        return F.COMMON_FEATURES | self._type_features()

    def _type_features(self) -> int:
        return 0

    def set_driver_features(self, features: int) -> int:
        """Accept the driver's features (bits we never offered are dropped, logged); returns the accepted set."""
        offered = self.device_features()
        if features & ~offered:
            log.warning("%s: driver acked unoffered features %#x; ignoring them", self.name, features & ~offered)
        self.driver_features = F.negotiate(offered, features, strict=False)
        self._features_changed()
        return self.driver_features

    def _features_changed(self) -> None:
        """Hook for device types whose layouts depend on features (header sizes, byte order)."""

    @property
    def modern(self) -> bool:
        return F.has(self.driver_features, F.F_VERSION_1)

    @property
    def byteorder(self) -> str:
        """struct byte-order prefix for headers and config space: '<' modern, guest-native when legacy."""
        if self.modern or not self.guest_big_endian:
            return "<"
        return ">"

    # -- config space ---------------------------------------------------------------------------------------
    def config_space(self) -> bytes:
        """The device-specific configuration structure, in the driver's byte order."""
        return b""

    def read_config(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; bytes past the structure read as zero. ValueError if outside 0..256."""
        if offset < 0 or size < 0 or offset + size > CONFIG_SPACE_MAX:
            raise ValueError(f"config access [{offset}, +{size}) outside {CONFIG_SPACE_MAX} bytes")
        cfg = self.config_space()
        chunk = cfg[offset:offset + size]
        return chunk + bytes(size - len(chunk))

    def write_config(self, offset: int, data: bytes) -> None:
        """Driver write to config space; read-only fields ignore writes. ValueError if outside 0..256."""
        if offset < 0 or offset + len(data) > CONFIG_SPACE_MAX:
            raise ValueError(f"config write [{offset}, +{len(data)}) outside {CONFIG_SPACE_MAX} bytes")

    # -- status ---------------------------------------------------------------------------------------------
    def set_status(self, status: int) -> None:
        """VHOST_USER_SET_STATUS; writing 0 resets the device.  NEEDS_RESET stays set until a reset."""
        if status == 0:
            self.reset()
            return
        self.status = (status & 0xFF) | (self.status & F.S_NEEDS_RESET)

    @property
    def needs_reset(self) -> bool:
        return bool(self.status & F.S_NEEDS_RESET)

    def _queue_broken(self, vq: VirtQueue) -> None:
        if not self.status & F.S_NEEDS_RESET:
            log.error("%s: queue %d broken (%s); device needs reset", self.name, vq.index, vq.broken_reason)
        self.status |= F.S_NEEDS_RESET

    # -- queues ---------------------------------------------------------------------------------------------
    def attach_queue(self, qidx: int, vq: VirtQueue) -> None:
        if not 0 <= qidx < self.num_queues:
            raise ValueError(f"{self.name}: queue index {qidx} out of range 0..{self.num_queues - 1}")
        vq.index = qidx
        vq.on_broken = self._queue_broken
        self.queues[qidx] = vq
        if vq.broken:
            self._queue_broken(vq)

    def _attached(self, qidx: int, vq: VirtQueue) -> bool:
        """Attach ``vq`` as queue ``qidx`` on first use; False (logged) for an index the device lacks."""
        if self.queues.get(qidx) is not vq:
            try:
                self.attach_queue(qidx, vq)
            except ValueError as e:
                log.warning("%s", e)
                return False
        return True

    def process_queue(self, qidx: int, vq: VirtQueue, mem: GuestMemory) -> bool:
        """Handle everything pending on queue ``qidx``; True if the driver must be notified. Never raises."""
        if not self._attached(qidx, vq):
            return False
        return self._drain(vq, mem, self._handle)

    def _handle(self, vq: VirtQueue, chain: DescriptorChain) -> int | None:
        """Serve one chain; return the number of bytes written into its writable buffers (None: leave it queued)."""
        raise NotImplementedError

    def _drain(self, vq: VirtQueue, mem: GuestMemory, handle: ChainHandler) -> bool:
        """Pop/handle/push until the ring is empty; returns should_notify() for what is left unsignalled.

        With ``vq.notifier`` (set by the transport) completions are also published while draining
        (:meth:`VirtQueue.publish_early`); without one the batch is published once, at the end."""
        try:
            while True:
                vq.disable_notification(mem)
                unpublished = 0
                while (chain := vq.pop(mem)) is not None:
                    written = handle(vq, chain)
                    if written is None:  # device cannot serve it now (e.g. no packet): give it back
                        vq.unpop()
                        vq.flush_used(mem)
                        vq.enable_notification(mem)
                        return vq.should_notify(mem)
                    vq.push(mem, chain[0], written)
                    unpublished += 1
                    if vq.publish_early(mem, unpublished):
                        unpublished = 0
                vq.flush_used(mem)
                if not vq.enable_notification(mem):
                    break
        except Exception as e:  # a device bug must not take the server down
            self._device_bug(vq, mem, e)
        return vq.should_notify(mem)

    def _device_bug(self, vq: VirtQueue, mem: GuestMemory, exc: Exception) -> None:
        """Processing ``vq`` raised (a bug here, not the guest's): log it and put the queue into NEEDS_RESET; the
        server runs on."""
        log.exception("%s: error processing queue %d", self.name, vq.index)
        vq.mark_broken(f"internal error: {exc!r}")
        vq.flush_used(mem)

    def io_sources(self) -> list[tuple[int, IoCallback]]:
        """[(fd, callback)] to poll for readability; see the module docstring."""
        return []

    def host_sources(self) -> list[tuple[int, IoCallback]]:
        """[(fd, callback)] polled for the server's lifetime, front-end or not; see the module docstring."""
        return []

    def reset(self) -> None:
        """Back to the initial state: status 0, no features; queues are the transport's to reset."""
        self.status = 0
        self.driver_features = 0
        self.queues.clear()
        self._features_changed()

    def close(self) -> None:
        """Release host resources (files, taps, ptys, sockets)."""
