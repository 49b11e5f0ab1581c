"""virtio-rng served by `acrnmgr devmodel serve --device rng` through QEMU 7.2's vhost-user-rng-pci."""

import re

import pytest

from tests.guest import run_guest

from .conftest import chardev

pytestmark = pytest.mark.guest


def test_guest_reads_hwrng(backend, guest_image):
    b = backend("rng")
    script = r"""
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat $d/device)" = "0x0004" ] || continue
    pci=$(readlink -f $d/..)
    echo "VIRTIO vendor=$(cat $d/vendor) device=$(cat $d/device) pci=$(cat $pci/vendor):$(cat $pci/device)"
done
echo "CURRENT=$(cat /sys/class/misc/hw_random/rng_current)"
dd if=/dev/hwrng of=/tmp/a bs=256 count=4 2>/dev/null
dd if=/dev/hwrng of=/tmp/b bs=256 count=4 2>/dev/null
echo "BYTES=$(wc -c < /tmp/a)"
cmp -s /tmp/a /tmp/b && echo SAME=yes || echo SAME=no
echo "ZEROES=$(tr -d '\000' < /tmp/a | wc -c)"
"""
    result = run_guest(script, chardev(b) + ["-device", "vhost-user-rng-pci,chardev=vu0"], image=guest_image,
                       timeout=120)
    out = result.output
    assert result.rc == 0, out
    m = re.search(r"VIRTIO vendor=(\S+) device=(\S+) pci=(\S+):(\S+)", out)
    assert m, out
    # vhost-user-rng-pci is modern-only in QEMU 7.2: 0x1040 + 4.
    assert m.groups() == ("0x1af4", "0x0004", "0x1af4", "0x1044")
    assert re.search(r"^CURRENT=virtio_rng", out, re.MULTILINE), out
    assert re.search(r"^BYTES=1024$", out, re.MULTILINE), out
    assert re.search(r"^SAME=no$", out, re.MULTILINE), out
    assert int(re.search(r"^ZEROES=(\d+)$", out, re.MULTILINE).group(1)) > 1000  # not a buffer of zeros
    assert b.stop() == 0, b.log
