"""virtio-console (virtio 1.2 section 5.3), single port: queue 0 receive, queue 1 transmit.

Backends: a pty (``pty_path`` names the terminal to attach to; we keep the slave side open in raw mode so output
written before anyone attaches is buffered by the tty, and nothing echoes back) or a Unix socket server
(``socket_path``, created 0600; one client at a time, a new client replaces the old one).  Guest output with no
one to read it is dropped rather than blocking the device loop.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import struct
import tty

from . import features as F
from .device import IoCallback, RingAccess, VirtioDevice
from .memory import GuestMemory
from .stream import RxPump
from .virtqueue import DescriptorChain, VirtQueue
from .logs import get_logger

log = get_logger(__name__)

RX, TX = 0, 1


class ConsoleDevice(VirtioDevice):
    device_id = F.ID_CONSOLE
    name = "virtio-console"
    num_queues = 2

    def __init__(self, pty: bool = True, socket_path: str | None = None, max_queue_size: int = 1024,
                 cols: int = 80, rows: int = 25, max_backlog: int = 64 * 1024) -> None:
        super().__init__()
        self.max_queue_size = max_queue_size
        self.cols, self.rows = cols, rows
        self.socket_path = os.fspath(socket_path) if socket_path is not None else None
        self.pty_path: str | None = None
        self._master = self._slave = -1
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._ep = select.epoll()
        self._rx = RxPump(self.name, packet=False, max_backlog=max_backlog)
        if self.socket_path is not None:
            self._listen(self.socket_path)
        elif pty:
            self._open_pty()
        else:
            raise ValueError("console needs a pty or a socket_path")

    # -- backends -------------------------------------------------------------------------------------------
    def _open_pty(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        os.set_inheritable(self._master, False)
        os.set_inheritable(self._slave, False)
        self.pty_path = os.ttyname(self._slave)
        self._ep.register(self._master, select.EPOLLIN)
        log.info("virtio-console: pty is %s", self.pty_path)

    def _listen(self, path: str) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # stale socket from a previous run
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        old = os.umask(0o177)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(1)
        self._listener = s
        self._ep.register(s.fileno(), select.EPOLLIN)
        log.info("virtio-console: listening on %s", path)

    def _input_fd(self) -> int | None:
        if self._client is not None:
            return self._client.fileno()
        return self._master if self._master >= 0 else None

    def _drop_client(self) -> None:
        if self._client is not None:
            self._ep.unregister(self._client.fileno())
            self._client.close()
            self._client = None
            log.info("virtio-console: client disconnected")

    # -- virtio ---------------------------------------------------------------------------------------------
    def _type_features(self) -> int:
        return F.mask(F.CONSOLE_F_SIZE, F.CONSOLE_F_EMERG_WRITE)

    def config_space(self) -> bytes:
        return struct.pack(self.byteorder + "HHII", self.cols, self.rows, 1, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        super().write_config(offset, data)
        if offset == 8 and len(data) >= 1:  # emerg_wr: one character of early output
            self._output([memoryview(bytes(data[:1]))])

    def process_queue(self, qidx: int, vq: VirtQueue, mem: GuestMemory) -> bool:
        if not self._attached(qidx, vq):
            return False
        if qidx == TX:
            return self._drain(vq, mem, self._handle_tx)
        return self._rx.pump(self._input_fd(), (vq, mem))

    def _handle_tx(self, vq: VirtQueue, chain: DescriptorChain) -> int:
        if chain.readable:
            self._output(chain.readable)
        return 0

    def _output(self, views: list[memoryview]) -> None:
        fd = self._input_fd()
        if fd is None:
            return
        total = sum(len(v) for v in views)
        try:
            n = os.writev(fd, views)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            log.debug("virtio-console: write: %s", e)
            if self._client is not None:
                self._drop_client()
            n = 0
        if n < total:
            log.debug("virtio-console: dropped %d bytes of guest output", total - n)

    def io_sources(self) -> list[tuple[int, IoCallback]]:
        """One fd for the device's lifetime (an epoll over the pty or listener + client)."""
        return [(self._ep.fileno(), self._on_io)]

    def _on_io(self, rings: RingAccess) -> list[int]:
        notify = []
        for fd, _ev in self._ep.poll(0):
            if self._listener is not None and fd == self._listener.fileno():
                self._accept()
        if self._rx.pump(self._input_fd(), rings.ring(RX)):
            notify.append(RX)
        if self._rx.eof and self._client is not None:
            self._drop_client()
            self._rx.eof = False
        return notify

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._drop_client()
        conn.setblocking(False)
        self._client = conn
        self._ep.register(conn.fileno(), select.EPOLLIN)
        self._rx.clear()
        log.info("virtio-console: client connected")

    def reset(self) -> None:
        super().reset()
        self._rx.clear()

    def close(self) -> None:
        self._drop_client()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                if self.socket_path is not None:
                    os.unlink(self.socket_path)
            except OSError:
                pass
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        self._ep.close()
