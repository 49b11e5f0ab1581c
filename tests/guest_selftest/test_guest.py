"""The test guest boots, runs a script, sees virtio devices, runs fio, and honours the ACPI power button."""

import hashlib
import os
import re

import pytest

from tests.guest import READY_MARKER, Guest, GuestError, cpio, run_guest

pytestmark = pytest.mark.guest


def test_script_exit_status_is_reported(guest_image):
    result = run_guest("echo from-the-guest; exit 7", image=guest_image)
    assert result.rc == 7
    assert "from-the-guest" in result.output


def test_fio_is_only_there_when_asked_for(guest_image):
    assert run_guest("test -x /usr/bin/fio", image=guest_image, fio=False).rc == 1
    assert run_guest("test -x /usr/bin/fio", image=guest_image, fio=True).rc == 0


def test_virtio_modules_are_loaded_and_device_nodes_exist(guest_image):
    # The script checks the nodes at once: /init waits for devtmpfs before running it.
    script = "set -e; test -d /sys/bus/virtio; ls /sys/bus/virtio/drivers; test -c /dev/vport0p1; test -c /dev/hwrng"
    extra = ["-device", "virtio-serial-pci", "-device", "virtserialport,name=port0", "-device", "virtio-rng-pci"]
    result = run_guest(script, extra, image=guest_image)
    assert result.rc == 0, result.output
    assert "ACRNMGR-GUEST-WARN" not in result.output  # every insmod succeeded, the power button was found
    for driver in ("virtio_blk", "virtio_net", "virtio_console", "virtio_rng"):
        assert driver in result.output


def test_guest_reads_a_virtio_blk_disk(guest_image, tmp_path):
    image = tmp_path / "disk.img"
    data = os.urandom(4 << 20)
    image.write_bytes(data)
    script = "set -e; test -b /dev/vda; echo SUM=$(sha256sum /dev/vda | cut -d' ' -f1)"
    extra = ["-drive", f"file={image},format=raw,if=none,id=d0,cache=none,aio=threads",
             "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]
    result = run_guest(script, extra, image=guest_image)
    assert result.rc == 0, result.output
    assert re.search(r"^SUM=(\w+)", result.output, re.M).group(1) == hashlib.sha256(data).hexdigest()


def test_virtio_pci_device_ids_follow_the_mode(guest_image, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    extra = []
    for i, mode in enumerate(("disable-legacy=on", "disable-legacy=off,disable-modern=off")):
        extra += ["-drive", f"file={image},format=raw,if=none,id=d{i},readonly=on",
                  "-device", f"virtio-blk-pci,drive=d{i},{mode},addr=0x{4 + i:x}"]
    script = "for d in /sys/bus/pci/devices/*; do echo PCI $(cat $d/vendor) $(cat $d/device); done"
    result = run_guest(script, extra, image=guest_image)
    ids = set(re.findall(r"^PCI (0x\w+) (0x\w+)", result.output, re.M))
    assert ("0x1af4", "0x1042") in ids  # modern virtio-blk
    assert ("0x1af4", "0x1001") in ids  # transitional virtio-blk


def test_fio_runs_with_verification(guest_image, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(16 << 20))
    script = (
        "set -e\n"
        "fio --name=verify --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=4 --rw=randwrite "
        "--bs=4k --size=8M --verify=crc32c --do_verify=1 --output-format=terse\n"
        "fio --name=uring --filename=/dev/vda --direct=1 --ioengine=io_uring --iodepth=8 --rw=randread "
        "--bs=4k --size=8M --io_size=1M --output-format=terse\n"
    )
    extra = ["-drive", f"file={image},format=raw,if=none,id=d0,cache=none,aio=threads",
             "-device", "virtio-blk-pci,drive=d0"]
    result = run_guest(script, extra, image=guest_image)
    assert result.rc == 0, result.output
    assert any(b for b in image.read_bytes()[: 8 << 20]), "fio's writes never reached the image"


def test_system_powerdown_stops_a_service_guest(guest_image):
    with Guest("echo working; wait_for_powerdown", image=guest_image) as guest:
        guest.wait_for(READY_MARKER, timeout=120)
        guest.qmp.execute("system_powerdown")
        result = guest.wait(timeout=60)
    assert result.powered_down, result.output
    assert result.qemu_rc == 0
    assert result.rc is None  # the script never finished: the power button ended it


def test_power_button_syncs_buffered_writes(guest_image, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    # A buffered write, no sync, then idle: only the power button handler's sync gets it to the disk.
    script = "printf 'written-before-powerdown' | dd of=/dev/vda 2>/dev/null; echo IDLE; sleep 1000"
    extra = ["-drive", f"file={image},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0"]
    with Guest(script, extra, image=guest_image) as guest:
        guest.wait_for("IDLE")
        guest.qmp.execute("system_powerdown")
        result = guest.wait(timeout=60)
    assert result.powered_down, result.output
    assert image.read_bytes().startswith(b"written-before-powerdown")


def test_timeout_kills_qemu_and_reports_the_console(guest_image):
    with Guest("echo stuck-here; sleep 1000", image=guest_image, qmp=False) as guest:
        guest.wait_for("stuck-here")
        with pytest.raises(GuestError, match="did not power off") as info:
            guest.wait(timeout=1)
        assert guest.proc.returncode is not None  # killed and reaped
    assert "stuck-here" in str(info.value)


def test_qemu_failure_is_reported_with_its_stderr(guest_image):
    with pytest.raises(GuestError, match="QEMU exited with status 1") as info:
        run_guest("true", ["-device", "no-such-device"], image=guest_image)
    assert "no-such-device" in str(info.value)


def test_script_archive_is_a_valid_cpio(tmp_path):
    import subprocess

    archive = tmp_path / "s.cpio"
    archive.write_bytes(cpio.script_archive("echo hi\n"))
    listing = subprocess.run(["cpio", "-itv"], input=archive.read_bytes(), capture_output=True, check=True)
    assert b"test.sh" in listing.stdout and b"-rwxr-xr-x" in listing.stdout
