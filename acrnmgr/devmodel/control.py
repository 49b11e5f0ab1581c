"""A device's host control socket: one JSON object per line each way over a Unix socket (0600).

The server is thin IO around a device's sans-IO ``handle(request) -> answer``: non-blocking throughout, a few
clients at a time, each request line bounded; a client that sends an over-long line or does not take its answer is
dropped.  :func:`control_call` is the client (what ``acrnmgr gpio`` and ``acrnmgr i2c`` use)."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
from collections.abc import Callable
from typing import Any

MAX_CLIENTS = 8
MAX_LINE = 4096  # one request line and its newline
MAX_ANSWER = 1 << 20

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def decode_request(line: bytes) -> dict[str, Any] | None:
    """One request line as a JSON object; None when it is not one."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested past the parser's depth
        return None
    return request if isinstance(request, dict) else None


NOT_AN_OBJECT: dict[str, Any] = {"ok": False, "error": "not a JSON object"}


class ControlSocket:
    """The listening socket and its clients, behind one epoll fd (:meth:`fileno`) for the caller's loop."""

    def __init__(self, path: str, handle: Handler) -> None:
        self.path = path
        self._handle = handle
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # stale, from a previous run
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        old = os.umask(0o177)
        try:
            self._listener.bind(path)
            os.chmod(path, 0o600)
        except OSError as exc:
            self._listener.close()
            raise ValueError(f"control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        self._listener.listen(MAX_CLIENTS)
        self._ep = select.epoll()
        self._ep.register(self._listener.fileno(), select.EPOLLIN)
        self._clients: dict[int, tuple[socket.socket, bytearray]] = {}

    def fileno(self) -> int:
        return self._ep.fileno()

    def serve(self) -> None:
        """Accept and answer whatever is ready, without blocking."""
        for fd, _ev in self._ep.poll(0):
            if fd == self._listener.fileno():
                self._accept()
            elif fd in self._clients:
                self._read(fd)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self._clients) >= MAX_CLIENTS:
            conn.close()
            return
        conn.setblocking(False)
        self._clients[conn.fileno()] = (conn, bytearray())
        self._ep.register(conn.fileno(), select.EPOLLIN)

    def _drop(self, fd: int) -> None:
        conn, _ = self._clients.pop(fd)
        self._ep.unregister(fd)
        conn.close()

    def _read(self, fd: int) -> None:
        conn, buf = self._clients[fd]
        try:
            data = conn.recv(MAX_LINE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        buf += data
        while (nl := buf.find(b"\n")) >= 0:
            request = decode_request(bytes(buf[:nl]))
            del buf[:nl + 1]
            answer = NOT_AN_OBJECT if request is None else self._handle(request)
            data = json.dumps(answer).encode() + b"\n"
            try:
                sent = conn.send(data)
            except OSError:
                sent = -1
            if sent != len(data):  # a client that does not take its answers
                self._drop(fd)
                return
        if len(buf) >= MAX_LINE:  # a line and its newline must fit
            self._drop(fd)

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        self._ep.close()
        self._listener.close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass


def control_call(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a device's control socket and return its answer.  OSError when the socket cannot be
    reached or answers nothing within ``timeout``; ValueError when the answer is not one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while b"\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_ANSWER:
                raise ValueError("the answer is too long")
    answer = decode_request(data.split(b"\n", 1)[0])
    if answer is None or not isinstance(answer.get("ok"), bool):
        raise ValueError("no answer")
    return answer
