"""virtio-i2c served by `acrnmgr devmodel serve --device i2c` through QEMU 7.2's vhost-user-i2c-pci, driven by
Linux's i2c-virtio (the gpio-i2c guest layer) with the at24 and lm75 drivers; the host sets the sensor's
temperature with `acrnmgr i2c set` while the guest runs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guest import Guest

from .conftest import chardev

pytestmark = pytest.mark.guest

ACRNMGR = str(Path(sys.executable).parent / "acrnmgr")

GUEST = r"""
adapter=$(ls -d /sys/bus/virtio/drivers/i2c_virtio/virtio*/i2c-* | head -n1)
n=${adapter##*/i2c-}
echo "ADAPTER=i2c-$n"
echo "DETECT=$(i2cdetect -y -r $n | tail -n +2 | cut -c5- | tr ' ' '\n' | grep -v -e '^--$' -e '^$' | tr '\n' ' ')"
echo 24c02 0x50 > /sys/bus/i2c/devices/i2c-$n/new_device
echo lm75 0x48 > /sys/bus/i2c/devices/i2c-$n/new_device
echo 24c02 0x51 > /sys/bus/i2c/devices/i2c-$n/new_device   # nobody answers there: at24's probe read fails
e=/sys/bus/i2c/devices/$n-0050/eeprom
echo "EEPROM-HEAD=$(dd if=$e bs=1 count=8 2>/dev/null | od -An -tx1 | tr -d ' \n')"
printf 'written-by-guest' | dd of=$e bs=1 seek=32 conv=notrunc 2>/dev/null
echo "EEPROM-BACK=$(dd if=$e bs=1 skip=32 count=16 2>/dev/null)"
test -e /sys/bus/i2c/devices/$n-0051/eeprom && echo ABSENT-EEPROM=bound || echo ABSENT-EEPROM=unbound
t=$(ls /sys/bus/i2c/devices/$n-0048/hwmon/hwmon*/temp1_input)
echo "TEMP-START=$(cat $t)"
echo "LM75-READY"
for i in $(seq 600); do v=$(cat $t); [ "$v" = 42500 ] && break; sleep 0.1; done
echo "TEMP-SET=$v"
"""


def test_guest_uses_eeprom_and_lm75(backend, guest_image, tmp_path):
    eeprom = tmp_path / "eeprom.bin"
    eeprom.write_bytes(bytes(range(256)))
    state = tmp_path / "state"
    control = state / "i2cvm" / "i2c0.i2c.sock"
    control.parent.mkdir(parents=True, mode=0o700)
    b = backend("i2c", "--eeprom", f"0x50={eeprom}", "--lm75", "0x48=25", "--control-socket", str(control))
    env = {**os.environ, "ACRNMGR_STATE_DIR": str(state)}
    with Guest(GUEST, chardev(b) + ["-device", "vhost-user-i2c-pci,chardev=vu0"], image=guest_image,
               gpio_i2c=True) as guest:
        guest.wait_for("LM75-READY", timeout=120)
        done = subprocess.run([ACRNMGR, "i2c", "set", "i2cvm", "lm75@0x48", "temperature", "42.5"], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.strip() == "42.5", done
        got = subprocess.run([ACRNMGR, "i2c", "get", "i2cvm", "0x48", "--output", "json"], env=env,
                             capture_output=True, text=True, timeout=30)
        assert json.loads(got.stdout)["properties"]["temperature"] == 42.5, got
        result = guest.wait(timeout=120)
    out = result.output
    assert result.rc == 0, out
    assert re.search(r"^ADAPTER=i2c-\d+$", out, re.MULTILINE), out
    assert "DETECT=48 50 \n" in out, out  # a read at every address: only the two devices ACK
    assert "EEPROM-HEAD=0001020304050607" in out, out
    assert "EEPROM-BACK=written-by-guest" in out, out
    assert "ABSENT-EEPROM=unbound" in out, out
    assert "TEMP-START=25000" in out, out
    assert "TEMP-SET=42500" in out, out
    data = eeprom.read_bytes()  # the host file holds what the guest wrote, and nothing else changed
    assert data[32:48] == b"written-by-guest"
    assert data[:32] == bytes(range(32)) and data[48:] == bytes(range(48, 256))
    assert b.stop() == 0, b.log
