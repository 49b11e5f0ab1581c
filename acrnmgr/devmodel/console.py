"""virtio-console (virtio 1.2 section 5.3), single port: queue 0 receive, queue 1 transmit.

API: ``ConsoleDevice(pty=True)`` (``pty_path`` property) or ``ConsoleDevice(socket_path=PATH)`` (Unix socket server,
one client at a time).  ``io_sources()`` lists the backend fds.  (Implementation in progress.)
"""

from __future__ import annotations

from . import features as F
from .device import VirtioDevice


class ConsoleDevice(VirtioDevice):
    device_id = F.ID_CONSOLE
    name = "virtio-console"
    num_queues = 2

    def __init__(self, pty: bool = True, socket_path: str | None = None, max_queue_size: int = 256):
        super().__init__()
        raise NotImplementedError
