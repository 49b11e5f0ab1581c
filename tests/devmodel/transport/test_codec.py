"""Framing and payload codecs of the vhost-user protocol, bytes in / messages out."""

import os
import struct

import pytest

from acrnmgr.devmodel.vhost_user import (
    FLAG_NEED_REPLY, FLAG_REPLY, HEADER, MAX_PAYLOAD, MEM_HEADER, MEM_REGION, VERSION, Disconnect, Message,
    MessageReader, ProtocolError, Request, encode, parse_mem_table,
)


def test_encode_layout_is_three_le_u32_then_payload():
    assert encode(Request.GET_FEATURES) == bytes.fromhex("01000000" "01000000" "00000000")
    data = encode(Request.SET_FEATURES, (0x1_0000_0000).to_bytes(8, "little"), flags=VERSION | FLAG_NEED_REPLY)
    assert HEADER.unpack_from(data) == (2, 0x9, 8)
    assert data[12:] == bytes.fromhex("0000000001000000")


def test_reader_frames_messages_split_anywhere():
    stream = encode(Request.SET_OWNER) + encode(Request.SET_FEATURES, b"\x01" * 8) + encode(Request.GET_QUEUE_NUM)
    for chunk in (1, 5, 12, 13, 64):
        reader = MessageReader()
        got = []
        for i in range(0, len(stream), chunk):
            got += reader.feed(stream[i:i + chunk])
        assert [m.request for m in got] == [Request.SET_OWNER, Request.SET_FEATURES, Request.GET_QUEUE_NUM]
        assert got[1].payload == b"\x01" * 8
        assert reader.wanted == HEADER.size


def test_reader_wanted_never_crosses_a_message_boundary():
    reader = MessageReader()
    assert reader.wanted == 12
    assert reader.feed(encode(Request.SET_FEATURES, bytes(8))[:12]) == []
    assert reader.wanted == 8


def test_fds_travel_with_their_message():
    reader = MessageReader()
    r, w = os.pipe()
    try:
        data = encode(Request.SET_VRING_KICK, bytes(8))
        assert reader.feed(data[:12], [r]) == []
        (msg,) = reader.feed(data[12:])
        assert msg.fds == [r]
    finally:
        os.close(r)
        os.close(w)


def test_bad_version_and_oversized_payload_drop_the_connection():
    with pytest.raises(Disconnect):
        MessageReader().feed(HEADER.pack(1, 0x2, 0))
    with pytest.raises(Disconnect):
        MessageReader().feed(HEADER.pack(5, VERSION, MAX_PAYLOAD + 1))


def test_lost_framing_hands_back_the_fds_it_held():
    reader = MessageReader()
    reader.feed(HEADER.pack(12, VERSION, 8), [5])  # the reader is sans-IO: fd numbers are just data
    with pytest.raises(Disconnect) as exc:
        reader.feed(bytes(8) + HEADER.pack(1, 0x2, 0), [6])
    assert sorted(exc.value.fds) == [5, 6]  # including those of the message completed in the same feed
    assert reader.close() == []
    reader = MessageReader()
    reader.feed(HEADER.pack(12, VERSION, 8)[:6], [7])
    with pytest.raises(Disconnect) as exc:
        reader.feed(HEADER.pack(12, VERSION, 8)[6:-4] + struct.pack("<I", MAX_PAYLOAD + 1))
    assert exc.value.fds == [7]


def test_reader_close_hands_back_pending_fds():
    reader = MessageReader()
    reader.feed(HEADER.pack(12, VERSION, 8), [9])
    assert reader.close() == [9]
    assert reader.close() == [] and reader.wanted == HEADER.size


def test_reply_flag_is_bit_2_need_reply_bit_3():
    assert FLAG_REPLY == 4 and FLAG_NEED_REPLY == 8
    assert Message(1, VERSION | FLAG_NEED_REPLY).need_reply


def test_mem_table_accepts_qemu_full_table_and_rejects_short_or_empty():
    regions = [(0, 1 << 20, 0x7F0000000000, 0), (1 << 32, 1 << 20, 0x7F0010000000, 1 << 20)]
    payload = MEM_HEADER.pack(2, 0) + b"".join(MEM_REGION.pack(*r) for r in regions)
    # QEMU sends the whole 8-slot array whatever nregions is.
    full = payload + bytes(MEM_REGION.size * 6)
    parsed = parse_mem_table(Message(Request.SET_MEM_TABLE, VERSION, full))
    assert [(p.guest_phys_addr, p.size, p.userspace_addr, p.mmap_offset) for p in parsed] == regions
    with pytest.raises(ProtocolError):
        parse_mem_table(Message(Request.SET_MEM_TABLE, VERSION, payload[:-1]))
    with pytest.raises(ProtocolError):
        parse_mem_table(Message(Request.SET_MEM_TABLE, VERSION, MEM_HEADER.pack(0, 0)))
    with pytest.raises(ProtocolError):
        parse_mem_table(Message(Request.SET_MEM_TABLE, VERSION, MEM_HEADER.pack(9, 0) + bytes(9 * 32)))


def test_reader_refuses_more_than_max_fds_for_one_message_and_gives_them_back():
    from acrnmgr.devmodel.vhost_user import MAX_FDS, Disconnect, MessageReader

    reader = MessageReader()
    head = HEADER.pack(Request.SET_MEM_TABLE, VERSION, 8)
    reader.feed(head[:1], list(range(100, 100 + MAX_FDS)))
    with pytest.raises(Disconnect) as err:
        reader.feed(head[1:2], [200])
    assert err.value.fds == [*range(100, 100 + MAX_FDS), 200]
    assert reader.close() == []
