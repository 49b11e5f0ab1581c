"""virtio-i2c: the request format over a real virtqueue in guest memory, the EEPROM and LM75 models, the control
protocol and its socket, and host passthrough's I2C_RDWR argument."""

import ctypes
import json
import os
import socket
import struct
import subprocess

import pytest
from core_guest import GuestQueue, GuestRam
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.device import NO_RINGS
from acrnmgr.devmodel.i2c import (
    FLAG_FAIL_NEXT,
    FLAG_M_RD,
    MSG_ERR,
    MSG_OK,
    Eeprom24c02,
    HostAdapter,
    I2cDevice,
    I2cMsg,
    KernelI2cMsg,
    KernelRdwrData,
    Lm75,
    control_reply,
    rdwr_request,
)


@pytest.fixture
def eeprom_file(tmp_path):
    p = tmp_path / "eeprom.bin"
    p.write_bytes(bytes(range(256)))
    return p


def _device(targets, ram, features=None):
    dev = I2cDevice(targets)
    dev.set_driver_features(dev.device_features() if features is None else features)
    return dev, GuestQueue(ram, size=16, features=dev.driver_features)


def _hdr(addr, flags):
    return struct.pack("<HHI", addr << 1, 0, flags)


def _post(q, addr, *, write=None, read=0, flags=0):
    """One request as Linux's i2c-virtio sends it; returns (head, status gpa, read buffer gpa)."""
    bufs = [q.buf(_hdr(addr, flags | (FLAG_M_RD if write is None else 0)))]
    rbuf = None
    if write:
        bufs.append(q.buf(write))
    elif read:
        rbuf = q.buf(read, True)
        bufs.append(rbuf)
    status = q.buf(1, True)
    q.ram.write(status[0], b"\xee")
    bufs.append(status)
    return q.add(bufs), status[0], rbuf[0] if rbuf else None


def _status(q, gpa):
    return q.ram.read(gpa, 1)[0]


# -- requests ---------------------------------------------------------------------------------------------------
def test_offers_zero_length_requests_and_is_an_i2c_adapter():
    dev = I2cDevice({})
    assert dev.device_id == 34
    assert F.has(dev.device_features(), F.I2C_F_ZERO_LENGTH_REQUEST)
    assert F.has(dev.device_features(), F.F_VERSION_1)


def test_eeprom_random_read_as_one_group(ram, eeprom_file):
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file))}, ram)
    h1, s1, _ = _post(q, 0x50, write=b"\x10", flags=FLAG_FAIL_NEXT)
    h2, s2, buf = _post(q, 0x50, read=4)
    assert dev.process_queue(0, q.vq, q.mem)
    assert q.get_used() == [(h1, 1), (h2, 5)]
    assert (_status(q, s1), _status(q, s2)) == (MSG_OK, MSG_OK)
    assert ram.read(buf, 4) == bytes([0x10, 0x11, 0x12, 0x13])


def test_group_waits_for_its_last_request(ram, eeprom_file):
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file))}, ram)
    h1, s1, _ = _post(q, 0x50, write=b"\x20", flags=FLAG_FAIL_NEXT)
    dev.process_queue(0, q.vq, q.mem)
    assert q.get_used() == [] and _status(q, s1) == 0xEE  # held: its transfer is not complete
    h2, s2, buf = _post(q, 0x50, read=1)
    dev.process_queue(0, q.vq, q.mem)
    assert q.get_used() == [(h1, 1), (h2, 2)] and ram.read(buf, 1) == b"\x20"


def test_absent_address_naks_and_fails_the_rest_of_its_group(ram, eeprom_file):
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file))}, ram)
    h1, s1, _ = _post(q, 0x51, write=b"\x00", flags=FLAG_FAIL_NEXT)
    h2, s2, _ = _post(q, 0x50, read=2)  # would succeed alone: FAIL_NEXT says it must not be attempted
    h3, s3, _ = _post(q, 0x50, write=b"")  # a new group: a zero-length write (SMBus quick) ACKs
    dev.process_queue(0, q.vq, q.mem)
    assert [h for h, _ in q.get_used()] == [h1, h2, h3]
    assert (_status(q, s1), _status(q, s2), _status(q, s3)) == (MSG_ERR, MSG_ERR, MSG_OK)
    assert not dev.needs_reset


def test_zero_length_request_needs_the_feature(ram, eeprom_file):
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file))}, ram, features=F.COMMON_FEATURES)
    _h, s, _ = _post(q, 0x50, write=b"")
    dev.process_queue(0, q.vq, q.mem)
    assert _status(q, s) == MSG_ERR


@pytest.mark.parametrize("raw_addr,flags", [(0x51 << 1 | 1, 0), (0x1A0, 0), (0x50 << 1, 1 << 7)])
def test_malformed_header_is_answered_err(ram, eeprom_file, raw_addr, flags):
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file)), 0x51: Lm75()}, ram)
    status = q.buf(1, True)
    q.add([q.buf(struct.pack("<HHI", raw_addr, 0, flags) + b"\x00"), status])
    dev.process_queue(0, q.vq, q.mem)
    assert _status(q, status[0]) == MSG_ERR and not dev.needs_reset


def test_read_carrying_data_is_refused(ram, eeprom_file):
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file))}, ram)
    status = q.buf(1, True)
    q.add([q.buf(_hdr(0x50, FLAG_M_RD) + b"\x00"), q.buf(2, True), status])
    dev.process_queue(0, q.vq, q.mem)
    assert _status(q, status[0]) == MSG_ERR


def test_oversized_message_is_refused_without_copying(ram, eeprom_file):
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file))}, ram)
    status = q.buf(1, True)
    q.add([q.buf(_hdr(0x50, 0)), q.buf(9000), status])
    dev.process_queue(0, q.vq, q.mem)
    assert _status(q, status[0]) == MSG_ERR
    assert eeprom_file.read_bytes() == bytes(range(256))


@pytest.mark.parametrize("shape", ["no status", "short header"])
def test_request_without_header_or_status_breaks_the_queue(ram, shape):
    dev, q = _device({0x48: Lm75()}, ram)
    if shape == "no status":
        q.add([q.buf(_hdr(0x48, 0) + b"\x00")])
    else:
        q.add([q.buf(b"\x90\x00\x00"), q.buf(1, True)])
    dev.process_queue(0, q.vq, q.mem)
    assert q.vq.broken and dev.needs_reset


def test_zero_length_descriptors_are_skipped(ram):
    dev, q = _device({0x48: Lm75()}, ram)
    buf, status = q.buf(2, True), q.buf(1, True)
    q.add([q.buf(_hdr(0x48, FLAG_M_RD)), q.buf(0), (buf[0], 0, True), buf, status, (status[0] + 1, 0, True)])
    dev.process_queue(0, q.vq, q.mem)
    assert ram.read(buf[0], 2) == b"\x19\x00" and _status(q, status[0]) == MSG_OK and not dev.needs_reset


def test_header_split_across_descriptors(ram):
    dev, q = _device({0x48: Lm75(temperature=-10.5)}, ram)
    hdr = _hdr(0x48, FLAG_FAIL_NEXT)
    s1 = q.buf(1, True)
    q.add([q.buf(hdr[:3]), q.buf(hdr[3:] + b"\x00"), s1], indirect=True)
    buf, s2 = q.buf(2, True), q.buf(1, True)
    q.add([q.buf(_hdr(0x48, FLAG_M_RD)), buf, s2])
    dev.process_queue(0, q.vq, q.mem)
    assert ram.read(buf[0], 2) == bytes([0xF5, 0x80])  # -10.5 °C in LM75 format


def test_reset_drops_a_half_received_group(ram, eeprom_file):
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file))}, ram)
    _post(q, 0x50, write=b"\x05", flags=FLAG_FAIL_NEXT)
    dev.process_queue(0, q.vq, q.mem)
    dev.reset()
    assert dev._group == []


# -- EEPROM -------------------------------------------------------------------------------------------------------
def test_eeprom_page_write_wraps_within_the_page_and_saves_the_file(eeprom_file):
    e = Eeprom24c02(str(eeprom_file))
    assert e.transfer([I2cMsg(0x50, False, b"\x0e" + b"ABCD")]) == [b""]
    data = eeprom_file.read_bytes()
    assert data[0x0E:0x10] == b"AB" and data[0x08:0x0A] == b"CD"  # 0x0e, 0x0f, then back to 0x08
    assert data[0x10] == 0x10
    assert e.transfer([I2cMsg(0x50, True, length=2)]) == [bytes([0x0A, 0x0B])]  # the pointer followed


def test_eeprom_sequential_read_wraps_at_the_end(eeprom_file):
    e = Eeprom24c02(str(eeprom_file))
    assert e.transfer([I2cMsg(0x50, False, b"\xfe"), I2cMsg(0x50, True, length=4)])[1] == bytes([0xFE, 0xFF, 0, 1])


def test_eeprom_short_file_reads_erased_and_too_long_refused(tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes(b"\x01\x02")
    e = Eeprom24c02(str(short))
    assert e.transfer([I2cMsg(0x50, True, length=3)]) == [b"\x01\x02\xff"]
    e.transfer([I2cMsg(0x50, False, b"\x00\x09")])
    assert short.read_bytes() == b"\x09\x02" + b"\xff" * 254
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(257))
    with pytest.raises(ValueError, match="larger than"):
        Eeprom24c02(str(big))
    with pytest.raises(ValueError, match="no such file"):
        Eeprom24c02(str(tmp_path / "missing.bin"))


@pytest.fixture
def full_disk(tmp_path):
    """A real file system with room for one 256-byte file only (a one-page tmpfs)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_eeprom_write_that_cannot_be_saved_naks_and_changes_nothing(full_disk):
    f = full_disk / "e.bin"
    f.write_bytes(bytes(256))
    e = Eeprom24c02(str(f))
    assert e.transfer([I2cMsg(0x50, False, b"\x00\x55"), I2cMsg(0x50, True, length=1)]) == [None, None]
    assert f.read_bytes() == bytes(256) and e.mem == bytearray(256)
    assert [p.name for p in full_disk.iterdir()] == ["e.bin"]  # no temporary file left behind


def test_eeprom_keeps_file_mode_and_follows_symlinks(tmp_path, eeprom_file):
    eeprom_file.chmod(0o640)
    link = tmp_path / "link.bin"
    link.symlink_to(eeprom_file)
    Eeprom24c02(str(link)).transfer([I2cMsg(0x50, False, b"\x00\x77")])
    assert link.is_symlink() and eeprom_file.read_bytes()[0] == 0x77
    assert eeprom_file.stat().st_mode & 0o777 == 0o640


# -- LM75 -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("celsius,raw", [(25.0, b"\x19\x00"), (42.5, b"\x2a\x80"), (-0.5, b"\xff\x80"),
                                         (-55.0, b"\xc9\x00"), (125.0, b"\x7d\x00"), (42.3, b"\x2a\x80")])
def test_lm75_temperature_register(celsius, raw):
    s = Lm75(temperature=celsius)
    assert s.transfer([I2cMsg(0x48, False, b"\x00"), I2cMsg(0x48, True, length=2)]) == [b"", raw]


def test_lm75_registers_and_pointer():
    s = Lm75()
    assert s.transfer([I2cMsg(0x48, False, b"\x03"), I2cMsg(0x48, True, length=2)])[1] == b"\x50\x00"  # TOS 80
    assert s.transfer([I2cMsg(0x48, False, b"\x02"), I2cMsg(0x48, True, length=2)])[1] == b"\x4b\x00"  # THYST 75
    s.transfer([I2cMsg(0x48, False, b"\x01\x06")])
    assert s.transfer([I2cMsg(0x48, True, length=3)]) == [b"\x06\x06\x06"]  # config repeats, pointer stays
    s.transfer([I2cMsg(0x48, False, b"\x03\x46\xff")])
    assert s.properties()["tos"] == 70.5
    assert s.transfer([I2cMsg(0x48, False, b"\x04")]) == [None]  # no register 4: NAK
    s.transfer([I2cMsg(0x48, False, b"\x00\x12\x34")])  # the temperature is read-only
    assert s.properties()["temperature"] == 25.0


@pytest.mark.parametrize("value", [125.5, -60, float("nan"), "hot", True, None])
def test_lm75_refuses_impossible_temperatures(value):
    with pytest.raises(ValueError):
        Lm75().set_property("temperature", value)


# -- control ------------------------------------------------------------------------------------------------------
def test_control_reply(eeprom_file):
    targets = {0x48: Lm75(), 0x50: Eeprom24c02(str(eeprom_file))}
    r = control_reply(b'{"target": "lm75@0x48", "set": "temperature", "value": 42.3}', targets)
    assert r == {"ok": True, "target": "lm75@0x48", "property": "temperature", "value": 42.5}
    assert control_reply(b'{"target": "72", "get": "temperature"}', targets)["value"] == 42.5
    assert control_reply(b'{"list": true}', targets)["targets"][1]["target"] == "eeprom-24c02@0x50"
    for bad, words in [(b"[1]", "JSON object"), (b"{", "JSON object"), (b'{"target": "x"}', "TYPE@ADDRESS"),
                       (b'{"target": "lm75@0x50"}', "no lm75 at 0x50"), (b'{"target": "0x49"}', "devices: lm75@0x48"),
                       (b'{"target": "0x48", "get": "humidity"}', "has: temperature"),
                       (b'{"target": "0x50", "set": "size", "value": 1}', "no settable"),
                       (b'{"target": "0x48", "set": "temperature", "value": 999}', "outside")]:
        r = control_reply(bad, targets)
        assert r["ok"] is False and words in r["error"], (bad, r)


def test_control_socket(tmp_path):
    path = str(tmp_path / "ctl.sock")
    dev = I2cDevice({0x48: Lm75()}, control_path=path)
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
        (fd, serve_rings), = dev.host_sources()
        def serve():
            assert serve_rings(NO_RINGS) == []
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(5)
        c.connect(path)
        serve()
        c.sendall(b'{"target": "lm75@0x48", "set": "temperature", "value": 30}\n{"target": "0x48"}\n')
        serve()
        f = c.makefile("rb")
        assert json.loads(f.readline())["value"] == 30.0
        assert json.loads(f.readline())["properties"]["temperature"] == 30.0
        c.sendall(b"x" * 5000)  # no newline within the limit: dropped
        serve()
        try:
            assert f.readline() == b""
        except ConnectionResetError:  # closed with our bytes unread
            pass
        c.close()
    finally:
        dev.close()
    assert not os.path.exists(path)


# -- host passthrough -------------------------------------------------------------------------------------------
def test_rdwr_argument_matches_the_kernel_layout():
    assert ctypes.sizeof(KernelI2cMsg) == 16 and KernelI2cMsg.buf.offset == 8
    assert ctypes.sizeof(KernelRdwrData) == 16 and KernelRdwrData.nmsgs.offset == 8
    data, bufs, array = rdwr_request([I2cMsg(0x1C, False, b"\x10"), I2cMsg(0x1C, True, length=3)])
    assert data.nmsgs == 2
    assert (array[0].addr, array[0].flags, array[0].len) == (0x1C, 0, 1)
    assert (array[1].addr, array[1].flags, array[1].len) == (0x1C, 1, 3)
    assert ctypes.string_at(array[0].buf, 1) == b"\x10" and array[1].buf == ctypes.addressof(bufs[1])


def test_host_adapter_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"i2c-7: No such file.*i2c-dev"):
        HostAdapter(7, [0x1C], dev_dir=str(tmp_path))
    (tmp_path / "i2c-3").write_bytes(b"")
    with pytest.raises(ValueError, match="not a character device"):
        HostAdapter(3, [0x1C], dev_dir=str(tmp_path))


# -- hostile, i2c-shaped --------------------------------------------------------------------------------------
i2c_requests = st.lists(st.tuples(
    st.sampled_from([0x50 << 1, 0x48 << 1, 0x49 << 1, 0x50 << 1 | 1, 0x1FE]) | st.integers(0, 0xFFFF),  # addr field
    st.sampled_from([0, FLAG_FAIL_NEXT, FLAG_M_RD, FLAG_FAIL_NEXT | FLAG_M_RD]) | st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 2, 9, 300]),  # buffer length
    st.sampled_from(["readable", "writable", "split", "no status", "short header"]),
    st.binary(min_size=0, max_size=9),  # payload start (word address, data)
), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=i2c_requests, cut=st.integers(0, 12))
def test_hostile_i2c_requests(eeprom_file, reqs, cut):
    """Requests with any address, flags, length and layout, kicked in two batches: the device never raises, every
    completed request has status OK or ERR, a bad chain breaks the queue (NEEDS_RESET), the file stays 256 bytes."""
    ram = GuestRam(1 << 20)
    dev, q = _device({0x50: Eeprom24c02(str(eeprom_file)), 0x48: Lm75()}, ram)
    try:
        statuses = {}
        for i, (addr, flags, n, shape, payload) in enumerate(reqs):
            hdr = struct.pack("<HHI", addr, 0, flags)
            if shape == "split":
                bufs = [q.buf(hdr[:3]), q.buf(hdr[3:])]
            else:
                bufs = [q.buf(hdr[:5] if shape == "short header" else hdr)]
            if n:
                data = (payload + bytes(n))[:n]
                bufs.append(q.buf(n, True) if shape == "writable" else q.buf(data))
            if shape != "no status":
                status = q.buf(1, True)
                ram.write(status[0], b"\xee")
                bufs.append(status)
            if len(q.free) < len(bufs):
                break
            head = q.add(bufs, publish=False)
            statuses[head] = bufs[-1][0] if shape != "no status" else None
            q.publish(head)
            if i == cut:
                dev.process_queue(0, q.vq, q.mem)
        dev.process_queue(0, q.vq, q.mem)
        if q.vq.broken:
            assert dev.needs_reset
        for head, _n in q.get_used():
            if statuses[head] is not None:
                assert ram.read(statuses[head], 1)[0] in (MSG_OK, MSG_ERR)
        assert len(eeprom_file.read_bytes()) == 256
        assert ram.guards_intact()
    finally:
        dev.close()
        ram.close()
