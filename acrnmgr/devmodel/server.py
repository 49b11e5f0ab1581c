"""The IO shell around the sans-IO vhost-user backend: a Unix socket listener, SCM_RIGHTS fd passing,
and one selectors loop over the connection, the rings' kick eventfds and the device's own fds.

One front-end at a time: the listener is only watched while no front-end is connected, so when QEMU
disconnects (or was connected to a previous instance of us) the next connection starts a fresh
vhost-user session over the same device. That is what makes `-chardev socket,reconnect=N` work.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import stat
from pathlib import Path

from acrnmgr.devmodel.vhost_user import MAX_FDS, Disconnect, MessageReader, VhostUserBackend, close_fds

log = logging.getLogger(__name__)


class ServerError(Exception):
    """The server cannot start (socket path unusable)."""


def prepare_socket_path(path: str | os.PathLike) -> Path:
    """Make sure `path` can hold our socket: its directory exists (created 0700 if missing) and is not
    group/world-writable, and nothing but a stale socket sits at the path itself."""
    path = Path(path).absolute()
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True)
            os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise ServerError(f"cannot create socket directory {parent}: {exc.strerror}") from exc
    st = os.stat(parent)
    if not stat.S_ISDIR(st.st_mode):
        raise ServerError(f"{parent} is not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ServerError(f"socket directory {parent} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"use a private directory (0700)")
    try:
        pst = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(pst.st_mode):
        raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
    os.unlink(path)  # stale socket from a previous run (e.g. killed with SIGKILL)
    return path


def listen_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # bind() creates the socket file: make it 0600 from the start
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ServerError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(1)
    return sock


class VhostUserServer:
    """Serve `device` on a vhost-user socket until `stop()` is called (thread- and signal-safe)."""

    def __init__(self, device, socket_path: str | os.PathLike) -> None:
        self.device = device
        self.path = prepare_socket_path(socket_path)
        self._listener = listen_unix(self.path)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._sel.register(self._listener, selectors.EVENT_READ, self._on_accept)
        self._stopping = False
        self._conn: socket.socket | None = None
        self._reader: MessageReader | None = None
        self.backend: VhostUserBackend | None = None
        self._kicks: dict[int, int] = {}  # queue index -> registered kick fd
        self._io: dict[int, object] = {}  # registered device fd -> its callback
        self.connections = 0  # sessions accepted so far (tests and logs use it)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def serve_forever(self) -> None:
        log.info("serving %s on %s", type(self.device).__name__, self.path)
        try:
            while not self._stopping:
                for key, _events in self._sel.select():
                    key.data(key.fileobj)
                    if self._stopping:
                        break
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._disconnect("server stopping")
        self._sel.close()
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass
        log.info("stopped")

    def _on_wake(self, _fd) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------------ connection

    def _on_accept(self, _sock) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        conn.set_inheritable(False)
        self._sel.unregister(self._listener)  # one front-end at a time
        self._conn = conn
        self._reader = MessageReader()
        self.backend = VhostUserBackend(self.device)
        self.connections += 1
        self._sel.register(conn, selectors.EVENT_READ, self._on_message)
        log.info("front-end connected (session %d)", self.connections)

    def _sync_device_sources(self) -> None:
        """The device's fds to watch change with its state (a tap is only read while RX buffers exist)."""
        wanted = dict(self.device.io_sources()) if self.backend is not None else {}
        for fd in [fd for fd in self._io if fd not in wanted]:
            self._sel.unregister(fd)
            del self._io[fd]
        for fd, callback in wanted.items():
            if self._io.get(fd) != callback:
                if fd in self._io:
                    self._sel.unregister(fd)
                self._sel.register(fd, selectors.EVENT_READ, lambda _f, cb=callback: self._on_device_io(cb))
                self._io[fd] = callback

    def _disconnect(self, reason: str) -> None:
        if self._conn is None:
            return
        log.info("front-end disconnected: %s", reason)
        for fd in list(self._kicks.values()) + list(self._io):
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        self._kicks.clear()
        self._io.clear()
        self._sel.unregister(self._conn)
        self._conn.close()
        self._conn = None
        self._reader.close()
        self._reader = None
        self.backend.close()
        self.backend = None
        # A new front-end negotiates from scratch; the device's open resources (image, tap) stay.
        self.device.reset()
        if not self._stopping:
            self._sel.register(self._listener, selectors.EVENT_READ, self._on_accept)

    def _on_message(self, conn: socket.socket) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(conn, self._reader.wanted, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except OSError as exc:
            self._disconnect(f"read error: {exc}")
            return
        if flags & socket.MSG_CTRUNC:
            close_fds(fds)
            self._disconnect("too many fds in one message")
            return
        if not data:
            close_fds(fds)
            self._disconnect("connection closed")
            return
        backend = self.backend
        try:
            for msg in self._reader.feed(data, fds):
                answer = backend.handle(msg)
                if answer is not None:
                    try:
                        if answer.fds:
                            socket.send_fds(conn, [answer.data], answer.fds)
                        else:
                            conn.sendall(answer.data)
                    finally:
                        close_fds(answer.fds)
                if backend.fds_changed:
                    self._sync_kicks()
                self._run_pending()
            self._sync_device_sources()
        except Disconnect as exc:
            self._disconnect(str(exc))
        except OSError as exc:
            self._disconnect(f"write error: {exc}")

    def _sync_kicks(self) -> None:
        backend = self.backend
        backend.fds_changed = False
        for q in backend.queues:
            want = q.kick_fd
            have = self._kicks.get(q.index)
            if have == want:
                continue
            if have is not None:
                self._sel.unregister(have)
                del self._kicks[q.index]
            if want is not None:
                self._sel.register(want, selectors.EVENT_READ, lambda fd, i=q.index: self._on_kick(fd, i))
                self._kicks[q.index] = want
        backend.release_retired()

    def _run_pending(self) -> None:
        backend = self.backend
        for q in backend.queues:
            if q.pending and backend.ready(q.index):
                self._process(q.index)

    # ------------------------------------------------------------------ data path

    def _on_kick(self, fd: int, qidx: int) -> None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("queue %d: kick read failed: %s", qidx, exc)
        self._process(qidx)

    def _process(self, qidx: int) -> None:
        backend = self.backend
        if backend.process(qidx):
            self._signal(qidx)
        self._sync_device_sources()

    def _signal(self, qidx: int) -> None:
        call = self.backend.queues[qidx].call_fd
        if call is not None:
            try:
                os.eventfd_write(call, 1)
            except OSError as exc:
                log.warning("queue %d: call signal failed: %s", qidx, exc)

    def _on_device_io(self, callback) -> None:
        """A device fd (tap, pty...) is readable: the device moves the data and names the rings to signal."""
        if self.backend is None:
            return
        for qidx in callback(self.backend) or ():
            self._signal(qidx)
        self._sync_device_sources()
