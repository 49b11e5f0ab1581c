"""The IO shell around the sans-IO vhost-user backend: a Unix socket listener, SCM_RIGHTS fd passing,
and one selectors loop over the connection, the rings' kick eventfds and the device's own fds.

The shell decides nothing about the protocol: it feeds bytes to the backend and carries out the effects it
returns (vhost_user.Reply / Watch / Unwatch / Close / Notify / Process), in order.  Every fd the front-end
passes is made non-blocking on arrival: the shell never blocks on an fd someone else gave it.

One front-end at a time (vhost-user has one per socket): while one is connected, another connection is
accepted and closed at once, with a log line, rather than left waiting; when the front-end disconnects
(or was connected to a previous instance of us) the next connection starts a fresh vhost-user session over
the same device. That is what makes `-chardev socket,reconnect=N` work.  The connection is non-blocking:
a front-end that does not read its replies is dropped, and so is one that starts a message and does not
finish it within `stall_timeout` seconds.  A second server on a live socket path is refused, not allowed
to take the socket over.
"""

from __future__ import annotations

import os
import select
import selectors
import socket
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from acrnmgr.devmodel.compiled import data_path
from acrnmgr.devmodel.device import NO_RINGS, IoCallback, VirtioDevice
from acrnmgr.devmodel.vhost_user import (
    MAX_FDS, Close, Disconnect, Effect, MessageReader, Notify, Process, Reply, Unwatch, VhostUserBackend, Watch,
)
from acrnmgr.devmodel.logs import get_logger

log = get_logger(__name__)


class ServerError(Exception):
    """The server cannot start (socket path unusable)."""


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def prepare_socket_path(path: str | os.PathLike[str]) -> Path:
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
        raise ServerError(f"socket directory {parent} is group- or world-writable "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"use a private directory (0700)")
    try:
        pst = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(pst.st_mode):
        raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
    if socket_is_live(path):
        raise ServerError(f"{path}: another server is listening on this socket; refusing to take it over")
    os.unlink(path)  # stale socket from a previous run (e.g. killed with SIGKILL)
    return path


def socket_is_live(path: Path) -> bool:
    """Whether a server listens on the Unix socket `path` (a stale one refuses the connection).
    Never blocks: a live server whose backlog is full answers EAGAIN, which counts as live."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        return False
    except BlockingIOError:
        return True
    except OSError as exc:
        raise ServerError(f"cannot check whether {path} is in use: {exc.strerror}") from exc
    finally:
        probe.close()
    return True


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


STALL_TIMEOUT = 5.0  # seconds a front-end may take to finish a message it began sending
DRAIN_LIMIT = 64  # messages read from the current front-end before a newcomer is refused
POLL_MAX = 32e-6  # seconds the loop may poll before it sleeps: QEMU's default poll-max-ns for an iothread


class PollWindow:
    """How long the loop polls its fds before it sleeps, adapted as QEMU adapts an AioContext's polling.

    Waking a sleeping thread costs tens of microseconds (more in a VM); a front-end that answers sooner than
    that is better caught by polling.  ``waited(s)`` reports how long the last wait took, polling included:
    a wait the window already covered leaves it as it is, one longer than ``max_s`` closes it (polling would
    only have burnt CPU), and one in between doubles it (from 4 us, up to ``max_s``).  Sans-IO: the loop
    measures, this decides."""

    GROW_FROM = 4e-6

    def __init__(self, max_s: float = POLL_MAX) -> None:
        self.max_s = max(0.0, max_s)
        self.window = 0.0

    def waited(self, seconds: float) -> None:
        if seconds <= self.window:
            return
        if seconds > self.max_s:
            self.window = 0.0
        elif self.window < self.max_s:
            self.window = min(self.max_s, self.window * 2 if self.window else self.GROW_FROM)


class VhostUserServer:
    """Serve `device` on a vhost-user socket until `stop()` is called (thread- and signal-safe)."""

    def __init__(self, device: VirtioDevice, socket_path: str | os.PathLike[str], *,
                 stall_timeout: float = STALL_TIMEOUT, poll_max: float = POLL_MAX) -> None:
        self.device = device
        self.stall_timeout = stall_timeout
        self.poll = PollWindow(poll_max)
        self.polled_rounds = 0  # rounds whose events polling found, without sleeping (tests and logs use it)
        self._partial_since: float | None = None  # when the message now arriving began to arrive
        self.path = prepare_socket_path(socket_path)
        self._listener = listen_unix(self.path)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._sel.register(self._listener, selectors.EVENT_READ, self._on_accept)
        for fd, callback in device.host_sources():
            self._sel.register(fd, selectors.EVENT_READ, lambda _f, cb=callback: self._on_host_io(cb))
        self._stopping = False
        self._conn: socket.socket | None = None
        self._reader: MessageReader | None = None
        self.backend: VhostUserBackend | None = None
        self._kicks: set[int] = set()  # registered kick fds
        self._io: dict[int, IoCallback] = {}  # registered device fd -> its callback
        self._signal_failures: dict[int, str] = {}  # call fd -> error of a mid-processing signal
        self.connections = 0  # sessions accepted so far (tests and logs use it)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def serve_forever(self) -> None:
        log.info("serving %s on %s; ring code %s", type(self.device).__name__, self.path, data_path())
        try:
            while not self._stopping:
                timeout = None
                if self._partial_since is not None:
                    timeout = max(0.0, self._partial_since + self.stall_timeout - time.monotonic())
                for key, _events in self._wait(timeout):
                    if not self._still_registered(key):
                        continue  # an earlier callback of this round closed it (its fd may even be re-used)
                    key.data(key.fileobj)
                    if self._stopping:
                        break
                if self._partial_since is not None and time.monotonic() - self._partial_since >= self.stall_timeout:
                    self._disconnect(f"a message stalled half-sent for {self.stall_timeout:g} s")
        finally:
            self._shutdown()

    def _wait(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        """The next events: polled for up to the poll window, then slept for (up to ``timeout``)."""
        select, clock = self._sel.select, time.monotonic
        start = clock()
        window = self.poll.window
        if window:
            while True:
                ready = select(0)
                if ready:
                    self.polled_rounds += 1
                    self.poll.waited(clock() - start)
                    return ready
                if clock() - start >= window:
                    break
            if timeout is not None:
                timeout = max(0.0, timeout - (clock() - start))
        ready = select(timeout)
        self.poll.waited(clock() - start)
        return ready

    def _still_registered(self, key: selectors.SelectorKey) -> bool:
        try:
            return self._sel.get_key(key.fileobj) is key
        except (KeyError, ValueError):  # ValueError: a closed socket object (fileno -1)
            return False

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

    def _on_wake(self, _fd: object) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------------ effects

    def _execute(self, effects: list[Effect]) -> None:
        """Carry out the backend's effects in order.  OSError from sending a reply propagates (the caller
        drops the connection) once the fds the later effects give back are closed; every other failure is
        logged and the loop goes on."""
        for i, effect in enumerate(effects):
            match effect:
                case Reply(data, fds):
                    assert self._conn is not None
                    try:
                        if fds:
                            socket.send_fds(self._conn, [data], list(fds))
                        else:
                            self._conn.sendall(data)
                    except OSError:
                        # A message's unused fds are given back after its reply: a front-end that hung up
                        # before the reply must not leave them with us for good.
                        self._release(effects[i + 1:])
                        raise
                    finally:
                        close_fds(fds)
                case Watch(fd, queue):
                    try:
                        self._sel.register(fd, selectors.EVENT_READ, lambda f, i=queue: self._on_kick(f, i))
                    except (OSError, ValueError) as exc:  # e.g. a regular file passed as a kick fd
                        self._kick_failed(queue, fd, f"cannot be polled ({exc})")
                        continue
                    self._kicks.add(fd)
                case Unwatch(fd):
                    if fd in self._kicks:
                        self._sel.unregister(fd)
                        self._kicks.discard(fd)
                case Close(fd):
                    close_fds((fd,))
                case Notify(fd):
                    try:
                        os.eventfd_write(fd, 1)
                    except BlockingIOError:
                        pass  # the counter is saturated: the peer has a wake-up pending anyway
                    except OSError as exc:
                        if self.backend is not None:
                            self._execute(self.backend.notify_failed(fd, f"failed: {exc}"))
                case Process(queue):
                    self._process(queue)

    def _release(self, effects: list[Effect]) -> None:
        """Of `effects`, carry out only those that give fds back (Unwatch, Close): the connection is going."""
        self._execute([e for e in effects if isinstance(e, (Unwatch, Close))])

    # ------------------------------------------------------------------ connection

    def _on_accept(self, _sock: object) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        conn.set_inheritable(False)
        conn.setblocking(False)
        if self._conn is not None:
            self._drain()
        if self._conn is not None:  # one front-end at a time
            log.warning("refused a second front-end connection: one is already connected")
            conn.close()
            return
        self._conn = conn
        self._partial_since = None
        self._reader = MessageReader()
        self.backend = VhostUserBackend(self.device)
        self.backend.signal = self._signal
        self.connections += 1
        self._sel.register(conn, selectors.EVENT_READ, self._on_message)
        log.info("front-end connected (session %d)", self.connections)

    def _drain(self) -> None:
        """Take in what the current front-end already sent before refusing a newcomer: a front-end that
        reconnects closes its old connection first, and that EOF may still wait behind the new connection."""
        poller = select.poll()
        assert self._conn is not None
        poller.register(self._conn, select.POLLIN)
        for _ in range(DRAIN_LIMIT):
            conn = self._conn
            if conn is None or not poller.poll(0):
                return
            self._on_message(conn)

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
        for fd in list(self._io):
            self._sel.unregister(fd)
        self._io.clear()
        self._sel.unregister(self._conn)
        self._conn.close()
        self._conn = None
        self._partial_since = None
        if self._reader is not None:
            close_fds(self._reader.close())
            self._reader = None
        if self.backend is not None:
            self._execute(self.backend.close())
            self.backend = None
        for fd in self._kicks:  # none are left unless the backend lost track of one
            self._sel.unregister(fd)
        self._kicks.clear()
        # A new front-end negotiates from scratch; the device's open resources (image, tap) stay.
        self.device.reset()

    def _on_message(self, conn: socket.socket) -> None:
        reader, backend = self._reader, self.backend
        assert reader is not None and backend is not None
        try:
            data, fds, flags, _ = socket.recv_fds(conn, reader.wanted, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
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
        for fd in fds:
            try:
                os.set_blocking(fd, False)
            except OSError:
                pass
        try:
            for msg in reader.feed(data, fds):
                self._execute(backend.handle(msg))
                if self.backend is None:  # an effect dropped the connection
                    return
            if not reader.partial:
                self._partial_since = None
            elif self._partial_since is None:
                self._partial_since = time.monotonic()
            self._sync_device_sources()
        except Disconnect as exc:
            self._disconnect(str(exc))  # unregisters every kick fd first
            close_fds(exc.fds)
        except OSError as exc:
            self._disconnect(f"write error: {exc}")

    # ------------------------------------------------------------------ data path

    def _on_kick(self, fd: int, qidx: int) -> None:
        # os.read, not os.eventfd_read: that cannot tell end of file (a pipe whose writer closed, which
        # would be readable forever) from an error.  Any readable fd counts as a kick; EOF or an error
        # breaks the ring, and the fd is no longer watched.
        try:
            data = os.read(fd, 8)
        except BlockingIOError:
            return
        except OSError as exc:
            self._kick_failed(qidx, fd, f"read failed ({exc})")
            return
        if not data:
            self._kick_failed(qidx, fd, "reached end of file")
            return
        self._process(qidx)

    def _kick_failed(self, qidx: int, fd: int, reason: str) -> None:
        if self.backend is not None:
            self._execute(self.backend.kick_failed(qidx, fd, reason))

    def _process(self, qidx: int) -> None:
        if self.backend is None:
            return
        self._execute(self.backend.process(qidx))
        self._report_signal_failures()
        self._sync_device_sources()

    def _signal(self, fd: int) -> None:
        """The backend's mid-processing Notify: errors wait until processing is over (the fd must stay open
        until then), and are reported once."""
        try:
            os.eventfd_write(fd, 1)
        except BlockingIOError:
            pass  # the counter is saturated: the peer has a wake-up pending anyway
        except OSError as exc:
            self._signal_failures.setdefault(fd, f"failed: {exc}")

    def _report_signal_failures(self) -> None:
        while self._signal_failures and self.backend is not None:
            fd, reason = self._signal_failures.popitem()
            self._execute(self.backend.notify_failed(fd, reason))

    def _on_device_io(self, callback: IoCallback) -> None:
        """A device fd (tap, pty...) is readable: the device moves the data and names the rings to signal."""
        if self.backend is None:
            return
        self._execute(self.backend.device_io(callback))
        self._sync_device_sources()

    def _on_host_io(self, callback: IoCallback) -> None:
        """A host source (served with or without a front-end) is readable."""
        if self.backend is None:
            callback(NO_RINGS)
            return
        self._on_device_io(callback)
