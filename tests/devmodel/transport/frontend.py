"""A small vhost-user *front-end* in Python that plays QEMU and the guest driver at once.

It talks to a real back-end over a real Unix socket: guest RAM is a memfd shared with SET_MEM_TABLE
(two regions, with front-end virtual addresses unlike the guest-physical ones, so address translation
is exercised), split rings are laid out in that memory, buffers are posted and kicked through eventfds,
and completions are read back from the used ring. Used by the transport tests and for virtio-console,
which QEMU 7.2 cannot front over vhost-user.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import socket
import struct
import time

from acrnmgr.devmodel.vhost_user import (
    CONFIG_HEADER, F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, FLAG_REPLY, HEADER, INFLIGHT, MEM_HEADER, MEM_REGION, U64,
    VERSION, VRING_ADDR, VRING_STATE, Close, Message, MessageReader, Notify, Process, Reply, Request, Unwatch, Watch,
)

PAGE = 4096
REGION_SIZE = 2 << 20
# Region 0: guest-physical 0 .. 2 MiB, region 1: guest-physical 4 GiB .. +2 MiB; both from one memfd.
REGIONS = ((0x0, REGION_SIZE, 0x7F00_1000_0000, 0), (0x1_0000_0000, REGION_SIZE, 0x7F00_2000_0000, REGION_SIZE))
VIRTIO_F_VERSION_1 = 1 << 32
VIRTIO_RING_F_EVENT_IDX = 1 << 29
DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")
U16 = struct.Struct("<H")
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2


class FrontendError(AssertionError):
    pass


class GuestRam:
    """The memfd-backed guest RAM with gpa/uva <-> offset arithmetic."""

    def __init__(self, *, seal: bool = True) -> None:
        self.fd = os.memfd_create("frontend-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, 2 * REGION_SIZE)
        if seal:  # as QEMU's memory-backend-memfd does (seal=on is its default)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        self.map = mmap.mmap(self.fd, 2 * REGION_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._next = [PAGE, PAGE]  # bump allocators per region (page 0 left unused)

    def offset(self, gpa: int) -> int:
        for g, size, _u, off in REGIONS:
            if g <= gpa < g + size:
                return off + gpa - g
        raise FrontendError(f"gpa {gpa:#x} outside guest RAM")

    @staticmethod
    def uva(gpa: int) -> int:
        for g, size, u, _off in REGIONS:
            if g <= gpa < g + size:
                return u + gpa - g
        raise FrontendError(f"gpa {gpa:#x} outside guest RAM")

    def alloc(self, size: int, *, region: int = 0, align: int = 16) -> int:
        start = (self._next[region] + align - 1) // align * align
        if start + size > REGION_SIZE:
            raise FrontendError("guest RAM exhausted")
        self._next[region] = start + size
        return REGIONS[region][0] + start

    def write(self, gpa: int, data: bytes) -> None:
        off = self.offset(gpa)
        self.map[off:off + len(data)] = data

    def read(self, gpa: int, size: int) -> bytes:
        off = self.offset(gpa)
        return bytes(self.map[off:off + size])

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class FrontQueue:
    """One split ring driven from the guest side."""

    def __init__(self, fe: FrontendBase, index: int, size: int) -> None:
        self.fe, self.index, self.size = fe, index, size
        ram = fe.ram
        # Rings in region 1, buffers in region 0: addresses above 4 GiB must translate too.
        self.desc = ram.alloc(16 * size, region=1, align=PAGE)
        self.avail = ram.alloc(6 + 2 * size, region=1, align=2)
        self.used = ram.alloc(6 + 8 * size, region=1, align=PAGE)
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.avail_idx = 0
        self.last_used = 0
        self.free = list(range(size))
        self.outstanding: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}

    def configure(self, *, base: int = 0, enable: bool = True) -> None:
        fe = self.fe
        fe.send(Request.SET_VRING_NUM, VRING_STATE.pack(self.index, self.size))
        fe.send(Request.SET_VRING_BASE, VRING_STATE.pack(self.index, base))
        fe.send(Request.SET_VRING_ADDR, VRING_ADDR.pack(self.index, 0, GuestRam.uva(self.desc), GuestRam.uva(self.used),
                                                        GuestRam.uva(self.avail), 0))
        fe.send(Request.SET_VRING_KICK, U64.pack(self.index), fds=[self.kick])
        fe.send(Request.SET_VRING_CALL, U64.pack(self.index), fds=[self.call])
        if enable:
            fe.send(Request.SET_VRING_ENABLE, VRING_STATE.pack(self.index, 1))
        fe.sync()

    def post(self, out: list[bytes] = (), ins: list[int] = ()) -> int:
        """Post one chain: device-readable buffers with `out` contents, then device-writable ones of `ins`
        sizes. Returns the head."""
        ram = self.fe.ram
        count = len(out) + len(ins)
        if count == 0 or count > len(self.free):
            raise FrontendError("no free descriptors")
        ids = [self.free.pop(0) for _ in range(count)]
        writable = []
        for n, d in enumerate(ids):
            if n < len(out):
                addr = ram.alloc(max(len(out[n]), 1))
                ram.write(addr, out[n])
                length, flags = len(out[n]), 0
            else:
                length = ins[n - len(out)]
                addr = ram.alloc(max(length, 1))
                ram.write(addr, b"\xAA" * length)
                flags = VRING_DESC_F_WRITE
                writable.append((addr, length))
            nxt = ids[n + 1] if n + 1 < count else 0
            if n + 1 < count:
                flags |= VRING_DESC_F_NEXT
            ram.write(self.desc + 16 * d, DESC.pack(addr, length, flags, nxt))
        head = ids[0]
        ram.write(self.avail + 4 + 2 * (self.avail_idx % self.size), U16.pack(head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        ram.write(self.avail + 2, U16.pack(self.avail_idx))
        self.outstanding[head] = (ids, writable)
        return head

    def notify(self) -> None:
        os.eventfd_write(self.kick, 1)
        self.fe.kicked(self.index)

    def used_idx(self) -> int:
        return U16.unpack(self.fe.ram.read(self.used + 2, 2))[0]

    def completions(self) -> list[tuple[int, int, bytes]]:
        """Reap new used entries: (head, len, bytes the device wrote into the chain's writable buffers)."""
        ram = self.fe.ram
        out = []
        idx = self.used_idx()
        while self.last_used != idx:
            head, length = USED_ELEM.unpack(ram.read(self.used + 4 + 8 * (self.last_used % self.size), 8))
            ids, writable = self.outstanding.pop(head)
            self.free.extend(ids)
            data = b"".join(ram.read(a, n) for a, n in writable)
            out.append((head, length, data[:length]))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[tuple[int, int, bytes]]:
        """Wait for `count` completions, each announced by the call eventfd (or seen in the used ring)."""
        got: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrontendError(f"queue {self.index}: {len(got)}/{count} completions before timeout")
            r, _, _ = select.select([self.call], [], [], min(left, 0.2))
            if r:
                try:
                    os.eventfd_read(self.call)
                except BlockingIOError:
                    pass
            got.extend(self.completions())
        return got

    def close(self) -> None:
        for fd in (self.kick, self.call):
            os.close(fd)


class FrontendBase:
    """Front-end requests over some transport; subclasses move the bytes."""

    def __init__(self, *, seal: bool = True) -> None:
        self.ram = GuestRam(seal=seal)
        self.queues: dict[int, FrontQueue] = {}
        self.reply_ack = False

    # -- raw messages

    def send(self, request: int, payload: bytes = b"", *, fds=(), flags: int = VERSION) -> None:
        if self.reply_ack and not flags & FLAG_NEED_REPLY and request not in _REPLYING:
            flags |= FLAG_NEED_REPLY
        self._send(HEADER.pack(request, flags, len(payload)) + payload, list(fds))
        if flags & FLAG_NEED_REPLY and request not in _REPLYING:
            ack = self.recv()
            if ack.request != request or U64.unpack(ack.payload)[0] != 0:
                raise FrontendError(f"{Request(request).name} was refused: {ack}")

    def call(self, request: int, payload: bytes = b"", *, fds=()) -> Message:
        self.send(request, payload, fds=fds)
        msg = self.recv()
        if msg.request != request:
            raise FrontendError(f"reply to {request} came as {msg.request}")
        return msg

    def sync(self) -> None:
        """Round-trip so the back-end has applied everything sent so far."""
        self.call(Request.GET_FEATURES)

    def kicked(self, index: int) -> None:
        """Hook: a ring's kick eventfd was written."""

    # -- QEMU-like setup

    def get_u64(self, request: int) -> int:
        return U64.unpack(self.call(request).payload)[0]

    def handshake(self, *, protocol_mask: int = ~0, reply_ack: bool = True) -> tuple[int, int]:
        features = self.get_u64(Request.GET_FEATURES)
        protocol = 0
        if features & F_PROTOCOL_FEATURES:
            protocol = self.get_u64(Request.GET_PROTOCOL_FEATURES) & protocol_mask
            self.send(Request.SET_PROTOCOL_FEATURES, U64.pack(protocol))
            self.reply_ack = reply_ack and bool(protocol & (1 << 3))
        self.send(Request.SET_OWNER)
        return features, protocol

    def set_mem_table(self) -> None:
        payload = MEM_HEADER.pack(len(REGIONS), 0) + b"".join(MEM_REGION.pack(*r) for r in REGIONS)
        self.send(Request.SET_MEM_TABLE, payload, fds=[self.ram.fd] * len(REGIONS))

    def get_config(self, offset: int, size: int) -> bytes:
        msg = self.call(Request.GET_CONFIG, CONFIG_HEADER.pack(offset, size, 0) + bytes(size))
        return msg.payload[CONFIG_HEADER.size:]

    def get_inflight(self, num_queues: int, queue_size: int) -> tuple[int, int, int]:
        msg = self.call(Request.GET_INFLIGHT_FD, INFLIGHT.pack(0, 0, num_queues, queue_size))
        size, offset, _, _ = INFLIGHT.unpack(msg.payload)
        return msg.fds[0], size, offset

    def set_inflight(self, fd: int, size: int, num_queues: int, queue_size: int) -> None:
        self.send(Request.SET_INFLIGHT_FD, INFLIGHT.pack(size, 0, num_queues, queue_size), fds=[fd])

    def start(self, features: int, queue_sizes: dict[int, int], *, inflight: tuple[int, int] | None = None,
              bases: dict[int, int] | None = None) -> dict[int, FrontQueue]:
        """The order QEMU's vhost_dev_start uses: (inflight), features, memory, then each ring."""
        if inflight is not None:
            fd, size = inflight
            self.set_inflight(fd, size, max(queue_sizes) + 1, max(queue_sizes.values()))
        self.send(Request.SET_FEATURES, U64.pack(features))
        self.set_mem_table()
        for index, size in queue_sizes.items():
            q = self.queues.get(index) or FrontQueue(self, index, size)
            self.queues[index] = q
            q.configure(base=(bases or {}).get(index, 0))
        return self.queues

    def close(self) -> None:
        for q in self.queues.values():
            q.close()
        self.ram.close()


class Frontend(FrontendBase):
    """A front-end connected to a back-end's Unix socket."""

    def __init__(self, path: str, *, timeout: float = 10.0, seal: bool = True) -> None:
        super().__init__(seal=seal)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)  # before connecting: a wedged server's full backlog blocks connect()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(timeout)

    def _send(self, data: bytes, fds: list[int]) -> None:
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)

    def recv(self) -> Message:
        head, fds = self._recv_exact(HEADER.size)
        request, flags, size = HEADER.unpack(head)
        payload, more = self._recv_exact(size) if size else (b"", [])
        if not flags & FLAG_REPLY:
            raise FrontendError(f"message without the REPLY flag: {request}")
        return Message(request, flags, payload, fds + more)

    def _recv_exact(self, n: int) -> tuple[bytes, list[int]]:
        buf = b""
        fds: list[int] = []
        while len(buf) < n:
            data, got, _flags, _ = socket.recv_fds(self.sock, n - len(buf), 8)
            if not data:
                raise ConnectionError("back-end closed the connection")
            buf += data
            fds += got
        return buf, fds

    def close(self) -> None:
        self.sock.close()
        super().close()


class Loopback(FrontendBase):
    """A front-end wired straight into a sans-IO VhostUserBackend: no socket, no threads. The fds it
    "sends" are dups (the backend owns what it receives), and it carries out the backend's effects itself,
    as the server would; kicks run the backend synchronously."""

    def __init__(self, backend) -> None:
        super().__init__()
        self.backend = backend
        self._replies: list[Message] = []
        self.watched: dict[int, int] = {}  # kick fd the backend asked us to poll -> queue
        self.effects: list = []  # every effect carried out, in order

    def _send(self, data: bytes, fds: list[int]) -> None:
        reader = MessageReader()
        (msg,) = reader.feed(data, [os.dup(fd) for fd in fds])
        self.execute(self.backend.handle(msg))

    def execute(self, effects: list) -> None:
        for effect in effects:
            self.effects.append(effect)
            match effect:
                case Reply(data, fds):
                    (rep,) = MessageReader().feed(data, fds)  # the reply's fds become the test's
                    if not rep.flags & FLAG_REPLY:
                        raise FrontendError("reply without the REPLY flag")
                    self._replies.append(rep)
                case Watch(fd, queue):
                    assert fd not in self.watched
                    self.watched[fd] = queue
                case Unwatch(fd):
                    del self.watched[fd]
                case Close(fd):
                    assert fd not in self.watched, "the backend closed an fd it still had watched"
                    os.close(fd)
                case Notify(fd):
                    os.eventfd_write(fd, 1)
                case Process(queue):
                    self.execute(self.backend.process(queue))

    def recv(self) -> Message:
        if not self._replies:
            raise FrontendError("the back-end sent no reply")
        return self._replies.pop(0)

    def kicked(self, index: int) -> None:
        os.eventfd_read(self.queues[index].kick)
        self.execute(self.backend.process(index))

    def close_backend(self) -> None:
        self.execute(self.backend.close())


_REPLYING = {Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE, Request.GET_QUEUE_NUM,
             Request.GET_CONFIG, Request.GET_INFLIGHT_FD, Request.GET_MAX_MEM_SLOTS, Request.GET_STATUS}
