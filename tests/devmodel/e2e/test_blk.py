"""virtio-blk served by `acrnmgr devmodel serve --device blk` to a real Linux guest through QEMU's
vhost-user-blk-pci, in each virtio-pci mode, with data checked on both sides."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from tests.guest import Guest, run_guest

from .conftest import chardev

pytestmark = pytest.mark.guest

MiB = 1 << 20
DISK_MB = 64
# Where the guest writes (and the host then reads back): 1 MiB at 8 MiB.
WRITE_AT_MB = 8

IDENTITY = r"""
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat $d/device)" = "0x0002" ] || continue
    pci=$(readlink -f $d/..)
    echo "VIRTIO vendor=$(cat $d/vendor) device=$(cat $d/device)" \
         "pci=$(cat $pci/vendor):$(cat $pci/device) features=$(cat $d/features)"
done
"""


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(DISK_MB * MiB))
    return path


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def field(output: str, name: str) -> str:
    m = re.search(rf"^{name}=(\S+)", output, re.MULTILINE)
    assert m, f"{name}= not in guest output:\n{output}"
    return m.group(1)


@pytest.mark.parametrize("mode, pci_opts, pci_id, modern", [
    ("transitional", "", "0x1001", True),
    ("modern", ",disable-legacy=on", "0x1042", True),
    ("legacy", ",disable-modern=on", "0x1001", False),
])
def test_guest_reads_and_writes_the_image(backend, disk, guest_image, mode, pci_opts, pci_id, modern):
    before = disk.read_bytes()
    b = backend("blk", "--image", str(disk))
    script = IDENTITY + f"""
echo "SIZE=$(cat /sys/block/vda/size)"
echo "READMD5=$(md5sum /dev/vda | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/pattern bs=1M count=1 2>/dev/null
echo "PATTERNMD5=$(md5sum /tmp/pattern | cut -d' ' -f1)"
dd if=/tmp/pattern of=/dev/vda bs=1M seek={WRITE_AT_MB} count=1 oflag=direct conv=fsync 2>/dev/null || exit 3
echo 3 > /proc/sys/vm/drop_caches
echo "BACKMD5=$(dd if=/dev/vda bs=1M skip={WRITE_AT_MB} count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
"""
    result = run_guest(script, chardev(b) + ["-device", f"vhost-user-blk-pci,chardev=vu0,num-queues=1{pci_opts}"],
                       image=guest_image, timeout=120)
    out = result.output
    assert result.rc == 0, out
    m = re.search(r"VIRTIO vendor=(\S+) device=(\S+) pci=(\S+):(\S+) features=(\S+)", out)
    assert m, out
    assert m.group(1) == "0x1af4" and m.group(2) == "0x0002"
    assert (m.group(3), m.group(4)) == ("0x1af4", pci_id), f"{mode}: PCI id"
    assert (m.group(5)[32] == "1") is modern  # VIRTIO_F_VERSION_1 negotiated or not
    assert int(field(out, "SIZE")) == DISK_MB * MiB // 512
    assert field(out, "READMD5") == md5(before)
    pattern_md5 = field(out, "PATTERNMD5")
    assert field(out, "BACKMD5") == pattern_md5
    assert b.stop() == 0, b.log
    after = disk.read_bytes()
    assert md5(after[WRITE_AT_MB * MiB:(WRITE_AT_MB + 1) * MiB]) == pattern_md5
    assert after[:WRITE_AT_MB * MiB] == before[:WRITE_AT_MB * MiB]  # nothing else touched
    assert after[(WRITE_AT_MB + 1) * MiB:] == before[(WRITE_AT_MB + 1) * MiB:]


def test_fio_verify_job_on_two_queues(backend, disk, guest_image):
    b = backend("blk", "--image", str(disk), "--queues", "2")
    script = """
echo "MQ=$(ls /sys/block/vda/mq | wc -l)"
fio --name=verify --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
    --size=16M --numjobs=2 --offset_increment=16M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --output-format=terse >/tmp/fio.out 2>&1
rc=$?
cat /tmp/fio.out
fio --name=mixed --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randrw --bsrange=512-64k --iodepth=8 \
    --offset=32M --size=8M --verify=md5 --do_verify=1 --verify_fatal=1 >/tmp/fio2.out 2>&1 || rc=$((rc + 10))
tail -3 /tmp/fio2.out
exit $rc
"""
    device = ["-device", "vhost-user-blk-pci,chardev=vu0,num-queues=2,disable-legacy=on"]
    result = run_guest(script, chardev(b) + device,
                       image=guest_image, timeout=180, smp=2)
    assert result.rc == 0, result.output
    assert field(result.output, "MQ") == "2"  # one blk-mq hardware queue per virtqueue
    assert b.stop() == 0, b.log


def test_read_only_image_refuses_guest_writes(backend, disk, guest_image):
    before = disk.read_bytes()
    b = backend("blk", "--image", str(disk), "--read-only")
    script = """
echo "RO=$(cat /sys/block/vda/ro)"
echo "READMD5=$(md5sum /dev/vda | cut -d' ' -f1)"
if dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct 2>/dev/null; then echo WRITE=ok; else echo WRITE=refused; fi
"""
    result = run_guest(script, chardev(b) + ["-device", "vhost-user-blk-pci,chardev=vu0,num-queues=1"],
                       image=guest_image, timeout=120)
    assert result.rc == 0, result.output
    assert field(result.output, "RO") == "1"
    assert field(result.output, "READMD5") == md5(before)
    assert field(result.output, "WRITE") == "refused"
    assert b.stop() == 0
    assert disk.read_bytes() == before


def test_backend_killed_and_restarted_mid_io_loses_no_request(backend, disk, guest_image):
    """The guest writes 48 MiB of random data (three passes) with O_DIRECT while the back-end is SIGKILLed twice and
    restarted; QEMU reconnects (reconnect=1), replays the set-up and hands back the inflight buffer. The
    data must read back intact in the guest and be in the image on the host."""
    size_mb = 48
    b = backend("blk", "--image", str(disk))
    script = f"""
dd if=/dev/urandom of=/tmp/pattern bs=1M count={size_mb} 2>/dev/null
echo "PATTERNMD5=$(md5sum /tmp/pattern | cut -d' ' -f1)"
echo WRITING
# Several passes of small direct writes keep I/O going for seconds whatever the host's speed.
for pass in 1 2 3; do
    i=0
    while [ $i -lt {size_mb * 8} ]; do
        dd if=/tmp/pattern of=/dev/vda bs=128k skip=$i seek=$i count=1 oflag=direct 2>/dev/null || exit 3
        i=$((i + 1))
    done
done
echo WRITTEN
echo 3 > /proc/sys/vm/drop_caches
echo "BACKMD5=$(dd if=/dev/vda bs=1M count={size_mb} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
"""
    args = chardev(b, reconnect=True) + ["-device", "vhost-user-blk-pci,chardev=vu0,num-queues=1"]
    killed_mid_io = 0
    with Guest(script, args, image=guest_image, qmp=False) as guest:
        guest.wait_for("WRITING", timeout=120)
        for n in range(1, 3):
            # Wait until QEMU is connected to the current back-end process and I/O has resumed.
            deadline = time.monotonic() + 30
            while b.log.count("front-end connected") < n and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            if "WRITTEN" in guest.output:
                break
            b.kill9()
            killed_mid_io += 1
            b.start()
        result = guest.wait(timeout=180)
    out = result.output
    assert result.rc == 0, out + b.log
    assert killed_mid_io >= 1, "the guest finished before the back-end could be killed"
    assert b.log.count("front-end connected") == killed_mid_io + 1  # QEMU reconnected after each kill
    pattern_md5 = field(out, "PATTERNMD5")
    assert field(out, "BACKMD5") == pattern_md5, out
    assert b.stop() == 0
    assert md5(disk.read_bytes()[:size_mb * MiB]) == pattern_md5


STALLING_BACKEND = Path(__file__).with_name("stalling_backend.py")


def test_request_in_flight_when_the_backend_dies_is_resubmitted_by_the_next_one(backend, disk, guest_image, tmp_path):
    """Deterministic inflight resubmission: the first back-end pops the guest's write of a known range, marks it in
    flight and stalls before touching the image (stalling_backend.py); it is SIGKILLed there. QEMU reconnects to a
    normal back-end on the same socket and hands back the inflight buffer with SET_INFLIGHT_FD; only resubmitting
    that head can complete the guest's write and put the pattern into the image."""
    before = disk.read_bytes()
    first = WRITE_AT_MB * MiB // 512
    marker = tmp_path / "stalled"
    slow = backend("blk", "--image", str(disk), launcher=[str(STALLING_BACKEND), str(marker), str(first)],
                   log_name="stalling-backend.log")
    script = f"""
dd if=/dev/urandom of=/tmp/pattern bs=1M count=1 2>/dev/null
echo "PATTERNMD5=$(md5sum /tmp/pattern | cut -d' ' -f1)"
dd if=/tmp/pattern of=/dev/vda bs=1M seek={WRITE_AT_MB} count=1 oflag=direct conv=fsync 2>/tmp/dd.err
echo "DDRC=$?"
cat /tmp/dd.err
echo 3 > /proc/sys/vm/drop_caches
echo "BACKMD5=$(dd if=/dev/vda bs=1M skip={WRITE_AT_MB} count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "IOERRORS=$(dmesg | grep -ciE 'i/o error|timed? ?out|critical')"
"""
    args = chardev(slow, reconnect=True) + ["-device", "vhost-user-blk-pci,chardev=vu0,num-queues=1"]
    with Guest(script, args, image=guest_image, qmp=False) as guest:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert slow.proc.poll() is None, "stalling back-end exited:\n" + slow.log
            assert guest.proc.poll() is None, "QEMU exited:\n" + guest.output + guest.stderr
            assert time.monotonic() < deadline, "the guest's write never reached the back-end:\n" + guest.output
            time.sleep(0.02)
        slow.kill9()
        m = re.fullmatch(r"sector (\d+) bytes (\d+)\n", marker.read_text())
        start, length = int(m.group(1)) * 512, int(m.group(2))
        assert start == WRITE_AT_MB * MiB and length > 0
        # The stalled request's range is untouched: nobody but the next back-end can write it.
        assert disk.read_bytes()[start:start + length] == before[start:start + length]
        normal = backend("blk", "--image", str(disk))
        result = guest.wait(timeout=60)  # without the resubmission the guest waits for its write forever
    out = result.output
    assert result.rc == 0, out + normal.log
    assert "front-end connected" in normal.log, normal.log
    # The stalled head was in flight, with any other request of the batch it was popped in (virtio-blk pops every
    # available chain at once, so how many depends on what the guest had queued); all of them complete below.
    resubmitted = re.search(r"queue 0: resubmitting (\d+) request\(s\) in flight", normal.log)
    assert resubmitted and int(resubmitted.group(1)) >= 1, normal.log
    assert field(out, "DDRC") == "0", out
    assert field(out, "IOERRORS") == "0", out
    pattern_md5 = field(out, "PATTERNMD5")
    assert field(out, "BACKMD5") == pattern_md5, out
    assert normal.stop() == 0, normal.log
    after = disk.read_bytes()
    assert md5(after[WRITE_AT_MB * MiB:(WRITE_AT_MB + 1) * MiB]) == pattern_md5
    assert after[:WRITE_AT_MB * MiB] == before[:WRITE_AT_MB * MiB]
    assert after[(WRITE_AT_MB + 1) * MiB:] == before[(WRITE_AT_MB + 1) * MiB:]
