"""virtio-net over a Linux tap device (virtio 1.2 section 5.1).  Queue 0 receive, queue 1 transmit.

API: ``NetDevice(tap="tap0" | tap_fd=fd, mac="52:54:00:12:34:56")``; ``io_sources()`` lists the tap fd while RX
buffers are available; ``tap_name`` property.  (Implementation in progress.)
"""

from __future__ import annotations

from . import features as F
from .device import VirtioDevice


class NetDevice(VirtioDevice):
    device_id = F.ID_NET
    name = "virtio-net"
    num_queues = 2

    def __init__(self, tap: str | None = None, tap_fd: int | None = None, mac: str | bytes | None = None,
                 max_queue_size: int = 256):
        super().__init__()
        raise NotImplementedError
