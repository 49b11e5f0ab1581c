"""virtio-net over a Linux tap device (virtio 1.2 section 5.1).  Queue 0 receive, queue 1 transmit.

The tap is opened with IFF_VNET_HDR and its header size set to the driver's (12 bytes with VERSION_1 or
MRG_RXBUF, else 10), so frames move between the tap and guest buffers with one readv/writev and no copy: the
kernel reads and writes the virtio_net_hdr itself.  We offer no offloads (no CSUM/GSO), so the header is always
"no checksum, no GSO"; num_buffers (12-byte header) is set to 1 since MRG_RXBUF is not offered.
"""

from __future__ import annotations

import fcntl
import os
import struct

from . import features as F
from .device import IoCallback, RingAccess, VirtioDevice
from .memory import GuestMemory
from .stream import RxPump, copy_into
from .virtqueue import DescriptorChain, VirtQueue
from .logs import get_logger

log = get_logger(__name__)

RX, TX = 0, 1
TUNSETIFF = 0x400454CA
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
NET_S_LINK_UP = 1
_ONE_LE = struct.pack("<H", 1)
_ONE_BE = struct.pack(">H", 1)


def open_tap(name: str = "") -> tuple[int, str]:
    """Create or attach tap ``name`` ("" = kernel picks tapN) with IFF_VNET_HDR; returns (fd, ifname)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        res = fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError:
        os.close(fd)
        raise
    return fd, res[:16].rstrip(b"\0").decode()


def parse_mac(mac: str | bytes | None) -> bytes:
    if mac is None:
        return bytes([0x52, 0x54, 0x00]) + os.urandom(3)
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise ValueError("MAC must be 6 bytes")
        return mac
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"invalid MAC address {mac!r}")
    try:
        b = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"invalid MAC address {mac!r}") from None
    if b[0] & 1:
        raise ValueError(f"MAC address {mac!r} is multicast")
    return b


class NetDevice(VirtioDevice):
    device_id = F.ID_NET
    name = "virtio-net"
    num_queues = 2

    def __init__(self, tap: str | None = None, tap_fd: int | None = None, mac: str | bytes | None = None,
                 max_queue_size: int = 1024, max_backlog: int = 256 * 1024) -> None:
        super().__init__()
        self.max_queue_size = max_queue_size
        self.mac = parse_mac(mac)
        if tap_fd is not None:
            self.fd, self.tap_name = tap_fd, tap or ""
            os.set_blocking(self.fd, False)
        else:
            self.fd, self.tap_name = open_tap(tap or "")
        self.hdr_len = 0
        self._rx = RxPump(self.name, packet=True, max_backlog=max_backlog, fixup=self._rx_fixup)
        self._features_changed()
        log.info("virtio-net: tap %s, mac %s", self.tap_name, self.mac.hex(":"))

    def _type_features(self) -> int:
        return F.mask(F.NET_F_MAC, F.NET_F_STATUS)

    def _features_changed(self) -> None:
        hdr = 12 if (self.modern or F.has(self.driver_features, F.NET_F_MRG_RXBUF)) else 10
        if hdr != self.hdr_len:
            try:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", hdr))
            except OSError as e:
                log.warning("virtio-net: TUNSETVNETHDRSZ %d: %s", hdr, e)
            self.hdr_len = hdr
            self._rx.clear()  # backlogged frames carry the old header size

    def config_space(self) -> bytes:
        return self.mac + struct.pack(self.byteorder + "HHH", NET_S_LINK_UP, 1, 1500)

    def process_queue(self, qidx: int, vq: VirtQueue, mem: GuestMemory) -> bool:
        if not self._attached(qidx, vq):
            return False
        if qidx == TX:
            return self._drain(vq, mem, self._handle_tx)
        return self._rx.pump(self.fd, (vq, mem))

    def _handle_tx(self, vq: VirtQueue, chain: DescriptorChain) -> int:
        if chain.readable_len <= self.hdr_len:
            log.debug("virtio-net: dropping TX chain of %d bytes", chain.readable_len)
            return 0
        try:
            os.writev(self.fd, chain.readable)
        except OSError as e:  # full tap queue or a frame the kernel rejects: dropped, as a NIC would
            log.debug("virtio-net: tap write: %s", e)
        return 0

    def _rx_fixup(self, chain: DescriptorChain, n: int) -> None:
        if self.hdr_len == 12 and n >= 12:
            copy_into(chain.writable, _ONE_BE if self.byteorder == ">" else _ONE_LE, 10)

    def io_sources(self) -> list[tuple[int, IoCallback]]:
        return [(self.fd, self._on_io)]

    def _on_io(self, rings: RingAccess) -> list[int]:
        return [RX] if self._rx.pump(self.fd, rings.ring(RX)) else []

    def reset(self) -> None:
        super().reset()
        self._rx.clear()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
