"""acrn-dm's management ("monitor") socket protocol.

acrn-dm listens on /run/acrn/mngr/<vm>.monitor.<pid>.socket (AF_UNIX stream) and exchanges fixed
280-byte messages laid out as the x86-64 C struct `struct mngr_msg`:

    offset  0  u64 magic      0x67736d206d6d76 ("vmm msg\\0" little-endian)
    offset  8  u32 msgid      (+ 4 bytes padding)
    offset 16  u64 timestamp
    offset 24  256-byte union: devargs[256] | int err | int state | {int force; unsigned timeout}

Replies echo msgid and timestamp and carry `err` or `state` (0 = running) in the union.
This module is sans-IO: encoding, decoding and a stream reassembler; the one-shot client at the
bottom is a thin shell over it."""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

MAGIC = 0x67736D206D6D76
MSG_SIZE = 280
PAYLOAD_SIZE = 256
_HEADER = struct.Struct("<QI4xQ")  # magic, msgid, pad, timestamp -> 24 bytes
DEFAULT_MNGR_DIR = "/run/acrn/mngr"


class MsgId(IntEnum):
    DM_STOP = 3
    DM_SUSPEND = 4
    DM_RESUME = 5
    DM_QUERY = 6
    DM_BLKRESCAN = 7


class MonitorProtocolError(ValueError):
    """Bytes that are not a well-formed monitor message."""


@dataclass(frozen=True)
class Message:
    msgid: int
    timestamp: int
    payload: bytes  # always exactly 256 bytes

    def int_at(self, offset: int = 0, signed: bool = True) -> int:
        return struct.unpack_from("<i" if signed else "<I", self.payload, offset)[0]

    # Views of the union, named as in acrn-dm's struct.
    @property
    def err(self) -> int:
        return self.int_at(0)

    @property
    def state(self) -> int:
        return self.int_at(0)

    @property
    def force(self) -> int:
        return self.int_at(0)

    @property
    def timeout(self) -> int:
        return self.int_at(4, signed=False)

    @property
    def devargs(self) -> str:
        return self.payload.split(b"\0", 1)[0].decode("utf-8", "replace")


def encode(msgid: int, timestamp: int, payload: bytes = b"") -> bytes:
    if len(payload) > PAYLOAD_SIZE:
        raise MonitorProtocolError(f"payload of {len(payload)} bytes exceeds {PAYLOAD_SIZE}")
    return _HEADER.pack(MAGIC, msgid, timestamp) + payload.ljust(PAYLOAD_SIZE, b"\0")


def decode(data: bytes) -> Message:
    if len(data) != MSG_SIZE:
        raise MonitorProtocolError(f"monitor message must be {MSG_SIZE} bytes, got {len(data)}")
    magic, msgid, timestamp = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise MonitorProtocolError(f"bad magic 0x{magic:x} (expected 0x{MAGIC:x})")
    return Message(msgid, timestamp, bytes(data[_HEADER.size :]))


# Requests ------------------------------------------------------------------------------------

def stop_request(timestamp: int, force: bool, timeout: int = 0) -> bytes:
    return encode(MsgId.DM_STOP, timestamp, struct.pack("<iI", 1 if force else 0, timeout))


def query_request(timestamp: int) -> bytes:
    return encode(MsgId.DM_QUERY, timestamp)


def suspend_request(timestamp: int) -> bytes:
    return encode(MsgId.DM_SUSPEND, timestamp)


def resume_request(timestamp: int) -> bytes:
    return encode(MsgId.DM_RESUME, timestamp)


def blkrescan_request(timestamp: int, devargs: str) -> bytes:
    raw = devargs.encode()
    if len(raw) >= PAYLOAD_SIZE:
        raise MonitorProtocolError(f"blkrescan arguments longer than {PAYLOAD_SIZE - 1} bytes")
    return encode(MsgId.DM_BLKRESCAN, timestamp, raw)


# Replies (what acrn-dm sends; the stand-in acrn-dm of the tests uses these) ---------------------

def reply(request: Message, value: int) -> bytes:
    """A reply to `request` carrying `value` as its err/state int."""
    return encode(request.msgid, request.timestamp, struct.pack("<i", value))


def check_reply(request: bytes, answer: Message) -> None:
    req = decode(request)
    if answer.msgid != req.msgid or answer.timestamp != req.timestamp:
        raise MonitorProtocolError(
            f"reply (msgid {answer.msgid}, timestamp {answer.timestamp}) does not echo the request "
            f"(msgid {req.msgid}, timestamp {req.timestamp})"
        )


class Reassembler:
    """Cut a byte stream into 280-byte messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out = []
        while len(self._buf) >= MSG_SIZE:
            out.append(decode(bytes(self._buf[:MSG_SIZE])))
            del self._buf[:MSG_SIZE]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# Socket names -----------------------------------------------------------------------------------

_SOCKET_RE = re.compile(r"^(?P<vm>.+)\.monitor\.(?P<pid>\d+)\.socket\Z")


def socket_name(vm: str, pid: int) -> str:
    return f"{vm}.monitor.{pid}.socket"


def parse_socket_name(name: str) -> tuple[str, int] | None:
    """(vm, pid) of a monitor socket file name, or None. The VM name is matched whole, unlike
    acrnctl which compares only up to the first '.' (so its vm1 can hit vm10's socket)."""
    match = _SOCKET_RE.match(name)
    return (match["vm"], int(match["pid"])) if match else None


def find_sockets(vm: str, mngr_dir: str | Path = DEFAULT_MNGR_DIR) -> list[tuple[int, Path]]:
    """All (pid, path) monitor sockets of exactly `vm` in `mngr_dir`."""
    try:
        names = os.listdir(mngr_dir)
    except OSError:
        return []
    found = []
    for name in names:
        parsed = parse_socket_name(name)
        if parsed and parsed[0] == vm:
            found.append((parsed[1], Path(mngr_dir) / name))
    return sorted(found)


# IO shell ----------------------------------------------------------------------------------------

def request(path: str | Path, data: bytes, timeout: float = 5.0) -> Message:
    """Send one request on a fresh connection and return the checked reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        reasm = Reassembler()
        while True:
            chunk = sock.recv(MSG_SIZE)
            if not chunk:
                raise MonitorProtocolError("acrn-dm closed the monitor socket without replying")
            messages = reasm.feed(chunk)
            if messages:
                check_reply(data, messages[0])
                return messages[0]


def now_stamp() -> int:
    return time.time_ns() // 1000
