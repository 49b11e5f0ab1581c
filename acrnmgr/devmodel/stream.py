"""Receive-side plumbing shared by the devices that are fed by a host fd (virtio-net, virtio-console).

The host fd is polled level-triggered by the transport for the device's lifetime, so a readable fd must always be
drained, even when the guest has posted no receive buffers: otherwise the server loop would spin.  Data that
arrives without guest buffers goes to a small bounded backlog (a copy; the normal path reads straight into the
guest's buffers) and is delivered when buffers appear; beyond the bound it is dropped, like a full NIC queue.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable

from .memory import GuestMemory
from .virtqueue import DescriptorChain, VirtQueue
from .logs import get_logger

log = get_logger(__name__)


def copy_into(views: list[memoryview], data: bytes | bytearray | memoryview, offset: int = 0) -> int:
    """Copy ``data`` into a list of writable views starting at byte ``offset``; returns bytes copied."""
    data = memoryview(data)
    done = 0
    for v in views:
        n = len(v)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, len(data) - done)
        v[offset:offset + take] = data[done:done + take]
        done += take
        offset = 0
        if done == len(data):
            break
    return done


def gather(views: list[memoryview], n: int) -> bytes:
    """The first ``n`` bytes of a list of views (fewer when they hold fewer)."""
    out = bytearray()
    for v in views:
        if len(out) >= n:
            break
        out += v[:n - len(out)]
    return bytes(out)


class RxPump:
    """Moves data from a non-blocking fd into the device-writable buffers of one receive queue.

    ``packet`` mode keeps message boundaries (one read = one chain, for tap); stream mode (console) may spread
    a backlog over several chains.  ``fixup(chain, n)`` may patch a delivered chain (virtio-net num_buffers).
    """

    def __init__(self, name: str, packet: bool, max_backlog: int, read_size: int = 65536,
                 fixup: Callable[[DescriptorChain, int], None] | None = None) -> None:
        self.name = name
        self.packet = packet
        self.max_backlog = max_backlog
        self.read_size = read_size
        self.fixup = fixup
        self.backlog: collections.deque[bytes] = collections.deque()
        self.backlog_bytes = 0
        self.dropped = 0
        self.eof = False

    def pump(self, fd: int | None, ring: tuple[VirtQueue, GuestMemory] | None) -> bool:
        """Deliver backlog then fresh data into ``ring`` (None: the ring may not be used now); with no buffers,
        drain fd into the backlog.  Returns should_notify()."""
        pushed = False
        vq, mem = ring if ring is not None else (None, None)
        if vq is not None and mem is not None and vq.ready(mem):
            vq.disable_notification(mem)
            while True:
                while self.backlog:
                    chain = vq.pop(mem)
                    if chain is None:
                        break
                    data = self.backlog[0]
                    n = copy_into(chain.writable, data)
                    if self.packet or n == len(data):
                        self.backlog.popleft()
                        self.backlog_bytes -= len(data)
                    else:
                        self.backlog[0] = data[n:]
                        self.backlog_bytes -= n
                    self._push(vq, mem, chain, n)
                    pushed = True
                if self.backlog or fd is None or self.eof:
                    break
                chain = vq.pop(mem)
                if chain is None:
                    if not vq.enable_notification(mem):
                        break
                    continue
                try:
                    n = os.readv(fd, chain.writable)
                except (BlockingIOError, InterruptedError):
                    vq.unpop()
                    break
                except OSError as e:  # EIO: pty peer gone; other errors: nothing to read
                    log.debug("%s: read: %s", self.name, e)
                    vq.unpop()
                    break
                if n == 0:
                    vq.unpop()
                    self.eof = True
                    break
                self._push(vq, mem, chain, min(n, chain.writable_len))  # a truncated frame reports its full size
                pushed = True
            vq.flush_used(mem)
            vq.enable_notification(mem)
        if fd is not None and not self.eof:
            self._drain_to_backlog(fd)
        return vq.should_notify(mem) if (vq is not None and mem is not None and pushed) else False

    def _push(self, vq: VirtQueue, mem: GuestMemory, chain: DescriptorChain, n: int) -> None:
        if self.fixup is not None:
            self.fixup(chain, n)
        vq.push(mem, chain.head, n)

    def _drain_to_backlog(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, self.read_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("%s: read: %s", self.name, e)
                return
            if not data:
                self.eof = True
                return
            if self.backlog_bytes + len(data) > self.max_backlog:
                if not self.dropped:
                    log.warning("%s: guest is not receiving; dropping input", self.name)
                self.dropped += len(data)
                continue
            self.backlog.append(data)
            self.backlog_bytes += len(data)

    def clear(self) -> None:
        self.backlog.clear()
        self.backlog_bytes = 0
        self.eof = False
