"""Sans-IO framing for the JSON-over-stream control sockets (QMP, acrn-dm --cmd_monitor):
feed bytes, get whole JSON objects back, whatever the whitespace between them."""

from __future__ import annotations

import json
import socket


class JsonStream:
    def __init__(self) -> None:
        self._buf = ""
        self._pending = b""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[dict]:
        raw = self._pending + data
        try:
            self._buf += raw.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as exc:  # a multi-byte character cut by the read
            self._buf += raw[: exc.start].decode("utf-8")
            self._pending = raw[exc.start :]
        out: list[dict] = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                return out
            try:
                obj, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                self._buf = text  # incomplete: wait for more
                return out
            out.append(obj)
            self._buf = text[end:]


def encode(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


class JsonSocket:
    """A blocking JSON object channel over a unix stream socket."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.stream = JsonStream()
        self.queue: list[dict] = []

    def send(self, obj: dict) -> None:
        self.sock.sendall(encode(obj))

    def receive(self) -> dict:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("peer closed the control socket")
            self.queue.extend(self.stream.feed(data))
        return self.queue.pop(0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "JsonSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
