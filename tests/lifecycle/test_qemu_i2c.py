"""A spec's virtio-i2c on the qemu engine, through the real CLI: `up` starts the embedded adapter from the plan,
the guest (i2c-virtio, at24, lm75) writes the EEPROM file and reads the temperature `acrnmgr i2c set` gives it,
and `down` leaves no process or socket behind."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from acrnmgr.lifecycle.state import VmState, wait_until

pytestmark = pytest.mark.guest

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))

SCRIPT = r"""
n=$(ls -d /sys/bus/virtio/drivers/i2c_virtio/virtio*/i2c-* | head -n1); n=${n##*/i2c-}
echo 24c02 0x50 > /sys/bus/i2c/devices/i2c-$n/new_device
echo lm75 0x48 > /sys/bus/i2c/devices/i2c-$n/new_device
printf 'from-the-guest' | dd of=/sys/bus/i2c/devices/$n-0050/eeprom bs=1 seek=100 conv=notrunc 2>/dev/null
t=$(ls /sys/bus/i2c/devices/$n-0048/hwmon/hwmon*/temp1_input)
echo "TEMP-START=$(cat $t)"
echo "LM75-READY"
while [ "$(cat $t)" != -12500 ]; do sleep 0.1; done
echo "TEMP-SET=$(cat $t)"
while :; do sleep 1; done
"""


def test_up_serves_the_specs_i2c_devices(tmp_path, guest_image):
    from tests.guest import initrd_with_script
    from tests.guest.vmspec import write_guest_spec, write_host_profile
    from tests.guest.qemu import pick_accel

    name = "i2cvm"
    initrd = initrd_with_script(SCRIPT, tmp_path, image=guest_image, gpio_i2c=True)
    eeprom = tmp_path / "eeprom.bin"
    eeprom.write_bytes(b"\xff" * 256)
    host = write_host_profile(tmp_path / "host.yaml", pick_accel(guest_image))
    spec = write_guest_spec(tmp_path / "vm.yaml", name, guest_image, initrd, textwrap.dedent("""\
        - type: virtio-i2c
          name: sensors
          devices:
            - {type: eeprom-24c02, address: 0x50, file: eeprom.bin}
            - {type: lm75, address: 0x48, temperature: 21}
        """))
    state = tmp_path / "state"
    env = {**os.environ, "ACRNMGR_STATE_DIR": str(state)}

    def acrnmgr(*args):
        return subprocess.run([ACRNMGR, *args], capture_output=True, text=True, env=env, timeout=300)

    def console(marker):
        log = state / name / "console.log"
        return log.exists() and marker in log.read_text(errors="replace")

    try:
        up = acrnmgr("up", str(spec), "--engine", "qemu", "--host", str(host))
        assert up.returncode == 0, up
        assert wait_until(lambda: console("LM75-READY"), 300, 0.2), acrnmgr("logs", name).stdout
        assert console("TEMP-START=21000")
        done = acrnmgr("i2c", "set", name, "lm75@0x48", "temperature", "-12.5")
        assert done.returncode == 0 and done.stdout == "-12.5\n", done
        assert wait_until(lambda: console("TEMP-SET=-12500"), 60, 0.2), acrnmgr("logs", name).stdout
        assert eeprom.read_bytes()[100:114] == b"from-the-guest"
        assert acrnmgr("down", name, "--force", "--timeout", "5").returncode == 0
        run = VmState(name, state).read_run()
        assert not [p for p in run.processes if p.identity.alive()]
        assert not [p for p in (state / name).iterdir() if p.is_socket()]  # the control socket too
    finally:
        acrnmgr("down", "--all", "--force", "--timeout", "1")
