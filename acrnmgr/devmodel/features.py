"""Virtio feature bits (virtio 1.2) and negotiation helpers.

Constants are bit *numbers*; use :func:`bit` / :func:`mask` to build masks.  Device feature sets are 64-bit masks.
"""

from __future__ import annotations


def bit(n: int) -> int:
    return 1 << n


def mask(*bits: int) -> int:
    m = 0
    for b in bits:
        m |= 1 << b
    return m


def has(features: int, n: int) -> bool:
    return bool(features >> n & 1)


# -- transport / ring (device independent) -------------------------------------------------------------------
F_NOTIFY_ON_EMPTY = 24
F_ANY_LAYOUT = 27
F_RING_INDIRECT_DESC = 28
F_RING_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30  # vhost-user only; never part of a device's virtio feature set
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34
F_IN_ORDER = 35
F_ORDER_PLATFORM = 36
F_SR_IOV = 37
F_NOTIFICATION_DATA = 38

# -- virtio-blk ----------------------------------------------------------------------------------------------
BLK_F_SIZE_MAX = 1
BLK_F_SEG_MAX = 2
BLK_F_GEOMETRY = 4
BLK_F_RO = 5
BLK_F_BLK_SIZE = 6
BLK_F_FLUSH = 9
BLK_F_TOPOLOGY = 10
BLK_F_CONFIG_WCE = 11
BLK_F_MQ = 12
BLK_F_DISCARD = 13
BLK_F_WRITE_ZEROES = 14

# -- virtio-net ----------------------------------------------------------------------------------------------
NET_F_CSUM = 0
NET_F_GUEST_CSUM = 1
NET_F_CTRL_GUEST_OFFLOADS = 2
NET_F_MTU = 3
NET_F_MAC = 5
NET_F_GUEST_TSO4 = 7
NET_F_GUEST_TSO6 = 8
NET_F_GUEST_ECN = 9
NET_F_GUEST_UFO = 10
NET_F_HOST_TSO4 = 11
NET_F_HOST_TSO6 = 12
NET_F_HOST_ECN = 13
NET_F_HOST_UFO = 14
NET_F_MRG_RXBUF = 15
NET_F_STATUS = 16
NET_F_CTRL_VQ = 17
NET_F_CTRL_RX = 18
NET_F_CTRL_VLAN = 19
NET_F_GUEST_ANNOUNCE = 21
NET_F_MQ = 22

# -- virtio-console ------------------------------------------------------------------------------------------
CONSOLE_F_SIZE = 0
CONSOLE_F_MULTIPORT = 1
CONSOLE_F_EMERG_WRITE = 2

# -- virtio-gpio ---------------------------------------------------------------------------------------------
GPIO_F_IRQ = 0

# -- virtio-i2c ----------------------------------------------------------------------------------------------
I2C_F_ZERO_LENGTH_REQUEST = 0

# -- virtio device IDs ---------------------------------------------------------------------------------------
ID_NET = 1
ID_BLOCK = 2
ID_CONSOLE = 3
ID_RNG = 4
ID_I2C_ADAPTER = 34
ID_GPIO = 41

# Common ring features every device type of ours supports.
COMMON_FEATURES = mask(F_RING_INDIRECT_DESC, F_RING_EVENT_IDX, F_VERSION_1)

# Device status bits (virtio 1.2 section 2.1).
S_ACKNOWLEDGE = 1
S_DRIVER = 2
S_DRIVER_OK = 4
S_FEATURES_OK = 8
S_NEEDS_RESET = 0x40
S_FAILED = 0x80


class FeatureError(ValueError):
    """The driver acknowledged features the device did not offer, or an invalid combination."""


def negotiate(device_features: int, driver_features: int, strict: bool = True) -> int:
    """Return the accepted feature set for a driver's acknowledgement.

    A driver may only accept what the device offered; with ``strict`` an extra bit raises FeatureError
    (the transport should then refuse FEATURES_OK), otherwise extra bits are silently dropped.
    Also rejects RING_PACKED (we only implement split rings).
    """
    extra = driver_features & ~device_features
    if extra and strict:
        raise FeatureError(f"driver accepted features not offered by the device: {extra:#x}")
    accepted = driver_features & device_features
    if has(accepted, F_RING_PACKED):
        raise FeatureError("packed virtqueues are not supported")
    return accepted

