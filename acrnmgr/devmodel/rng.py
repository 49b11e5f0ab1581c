"""virtio-rng (virtio 1.2 section 5.4): fills device-writable buffers from the kernel's CSPRNG.

Zero-copy: os.readv from /dev/urandom straight into the guest buffers (same source as os.urandom).
"""

from __future__ import annotations

import os

from . import features as F
from .device import VirtioDevice
from .virtqueue import DescriptorChain, VirtQueue
from .logs import get_logger

log = get_logger(__name__)

MAX_FILL = 1 << 16  # per request: a hostile driver must not make us read megabytes per descriptor


class RngDevice(VirtioDevice):
    device_id = F.ID_RNG
    name = "virtio-rng"
    num_queues = 1

    def __init__(self, max_queue_size: int = 1024) -> None:
        super().__init__()
        self.max_queue_size = max_queue_size
        self._fd = os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC)

    def _handle(self, vq: VirtQueue, chain: DescriptorChain) -> int:
        bufs, budget = [], MAX_FILL
        for b in chain.writable:
            if budget <= 0:
                break
            if len(b) > budget:
                b = b[:budget]
            bufs.append(b)
            budget -= len(b)
        done = 0
        try:
            while bufs:
                n = os.readv(self._fd, bufs)
                if n <= 0:
                    break
                done += n
                while bufs and n >= len(bufs[0]):
                    n -= len(bufs.pop(0))
                if n:
                    bufs[0] = bufs[0][n:]
        except OSError as e:
            log.warning("virtio-rng: reading /dev/urandom: %s", e)
        return done

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
