"""Byte layout of acrn-dm's 280-byte monitor messages and exact socket-name matching."""

import struct

import pytest

from acrnmgr.lifecycle import monitor as m


def test_query_request_layout():
    data = m.query_request(0x1122334455667788)
    assert len(data) == 280
    assert data[0:8] == b"vmm msg\0"  # the magic is the string "vmm msg" little-endian
    assert struct.unpack_from("<Q", data, 0)[0] == 0x67736D206D6D76
    assert struct.unpack_from("<I", data, 8)[0] == 6
    assert data[12:16] == b"\0\0\0\0"  # padding before the u64 timestamp
    assert struct.unpack_from("<Q", data, 16)[0] == 0x1122334455667788
    assert data[24:] == bytes(256)


def test_stop_request_carries_force_and_timeout():
    data = m.stop_request(7, force=True, timeout=20)
    assert struct.unpack_from("<I", data, 8)[0] == 3
    assert struct.unpack_from("<iI", data, 24) == (1, 20)
    assert data[32:] == bytes(248)
    msg = m.decode(data)
    assert (msg.msgid, msg.force, msg.timeout) == (m.MsgId.DM_STOP, 1, 20)
    assert m.decode(m.stop_request(7, force=False)).force == 0


def test_message_ids():
    ids = [m.MsgId.DM_STOP, m.MsgId.DM_SUSPEND, m.MsgId.DM_RESUME, m.MsgId.DM_QUERY, m.MsgId.DM_BLKRESCAN]
    assert ids == [3, 4, 5, 6, 7]
    assert struct.unpack_from("<I", m.suspend_request(1), 8)[0] == 4
    assert struct.unpack_from("<I", m.resume_request(1), 8)[0] == 5


def test_blkrescan_devargs():
    data = m.blkrescan_request(1, "5,/data/new.img")
    assert struct.unpack_from("<I", data, 8)[0] == 7
    assert data[24:24 + 16] == b"5,/data/new.img\0"
    assert m.decode(data).devargs == "5,/data/new.img"
    with pytest.raises(m.MonitorProtocolError):
        m.blkrescan_request(1, "x" * 256)


def test_reply_echoes_msgid_and_timestamp_and_carries_err():
    req = m.stop_request(99, force=False)
    ans = m.reply(m.decode(req), -1)
    assert ans[:24] == req[:24]
    assert struct.unpack_from("<i", ans, 24)[0] == -1
    decoded = m.decode(ans)
    assert decoded.err == -1
    m.check_reply(req, decoded)
    with pytest.raises(m.MonitorProtocolError):
        m.check_reply(m.query_request(100), decoded)


def test_decode_rejects_bad_size_and_magic():
    with pytest.raises(m.MonitorProtocolError, match="280"):
        m.decode(bytes(279))
    bad = bytearray(m.query_request(1))
    bad[0] ^= 0xFF
    with pytest.raises(m.MonitorProtocolError, match="magic"):
        m.decode(bytes(bad))


def test_reassembler_splits_stream():
    a, b = m.query_request(1), m.reply(m.decode(m.query_request(2)), 0)
    stream = a + b
    r = m.Reassembler()
    assert r.feed(stream[:100]) == []
    got = r.feed(stream[100:300]) + r.feed(stream[300:])
    assert [x.timestamp for x in got] == [1, 2]
    assert got[1].state == 0 and r.pending == 0


def test_socket_names_match_exactly(tmp_path):
    assert m.socket_name("vm1", 42) == "vm1.monitor.42.socket"
    assert m.parse_socket_name("vm1.monitor.42.socket") == ("vm1", 42)
    assert m.parse_socket_name("vm1.monitor.x.socket") is None
    for name in ["vm1.monitor.10.socket", "vm10.monitor.11.socket", "vm1.x.monitor.12.socket", "other"]:
        (tmp_path / name).touch()
    assert [pid for pid, _ in m.find_sockets("vm1", tmp_path)] == [10]
    assert [pid for pid, _ in m.find_sockets("vm10", tmp_path)] == [11]
    assert [pid for pid, _ in m.find_sockets("vm1.x", tmp_path)] == [12]
    assert m.find_sockets("vm1", tmp_path / "missing") == []
