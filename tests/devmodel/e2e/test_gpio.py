"""virtio-gpio end to end: a VM on the qemu engine (`acrnmgr up`) whose virtio-gpio is the embedded device model
behind QEMU's vhost-user-gpio-pci, a Linux guest with the standard gpio-virtio driver (the gpio-i2c layer of
tests/guest), and the host's side through `acrnmgr gpio get|set`.

On Debian 12's QEMU 7.2 the guest drives an output the host reads, and reads an input the host drives (each side
waits for the other through the lines themselves).  That QEMU's front-end never offers VIRTIO_GPIO_F_IRQ to the
guest (vu_gpio_get_features only filters QEMU's own feature bits; rust-vmm/vhost-device#613), so the guest's chip
has no IRQ domain, and the plan says so naming the version.  From QEMU 9.0 on, vhost-user-gpio-pci is built on
vhost-user-base, which offers the guest what the back-end offers: on QEMU 10 from bookworm-backports
(tests/guest/qemu_backports.py, given to the engine as the host profile's `qemu`) the guest arms edge detection
on an input and counts the interrupts of the host's toggles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from acrnmgr.lifecycle.state import wait_until

pytestmark = pytest.mark.guest

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))
TIMEOUT = 300  # a TCG boot on a loaded 2-core box

# The guest: lines 0 button (the host drives it), 1 led (the guest drives it), 2 spare (the guest chooses).
GUEST = r"""
vdev=$(ls -d /sys/bus/virtio/drivers/gpio_virtio/virtio* | head -n 1)
for c in /sys/class/gpio/gpiochip*; do [ "$(cat $c/label)" = "${vdev##*/}" ] && chip=$c; done
base=$(cat $chip/base)
echo "GPIO-CHIP ${vdev##*/} ngpio=$(cat $chip/ngpio)"
line() {  # export line $1, print its sysfs folder (named after the line when the chip names it)
    echo $((base + $1)) > /sys/class/gpio/export
    for d in /sys/class/gpio/$2 /sys/class/gpio/gpio$((base + $1)); do [ -d $d ] && { echo $d; return; }; done
}
wait_value() {  # until line folder $1 reads $2 (the host drives it), 60 s at most
    i=0; while [ "$(cat $1/value)" != "$2" ] && [ $i -lt 600 ]; do i=$((i + 1)); sleep 0.1; done
    echo "${1##*/}=$(cat $1/value)"
}
led=$(line 1 led)
button=$(line 0 button)
echo out > $button/direction 2>/dev/null && echo "BUTTON-OUT accepted" || echo "BUTTON-OUT refused"
[ -e $button/edge ] && echo "EDGE-ATTRIBUTE yes" || echo "EDGE-ATTRIBUTE no"
echo out > $led/direction && echo 1 > $led/value && echo "LED-SET ${led##*/}"
wait_value $button 1
echo 0 > $led/value && echo "LED-CLEARED"
wait_value $button 0
echo "GUEST-DONE"
"""


# The guest arms edge detection on "button" through sysfs and counts the interrupts of that line ("gpiolib" is
# the name gpiolib's sysfs gives the IRQ it requests) while the host toggles it: first rising edges only, then both.
GUEST_IRQ = r"""
vdev=$(ls -d /sys/bus/virtio/drivers/gpio_virtio/virtio* | head -n 1)
for c in /sys/class/gpio/gpiochip*; do [ "$(cat $c/label)" = "${vdev##*/}" ] && chip=$c; done
base=$(cat $chip/base)
echo $base > /sys/class/gpio/export
button=/sys/class/gpio/button; [ -d $button ] || button=/sys/class/gpio/gpio$base
irqs() { awk '/gpiolib/ {print $2}' /proc/interrupts; }
wait_irqs() {  # until the line has had $1 interrupts, 60 s at most
    i=0; while [ "$(irqs)" != "$1" ] && [ $i -lt 600 ]; do i=$((i + 1)); sleep 0.1; done
}
wait_value() {
    i=0; while [ "$(cat $button/value)" != "$1" ] && [ $i -lt 600 ]; do i=$((i + 1)); sleep 0.1; done
}
echo rising > $button/edge && echo "ARMED-RISING irqs=$(irqs)"
wait_irqs 1; echo "AFTER-RISE irqs=$(irqs) value=$(cat $button/value)"
wait_value 0; sleep 2; echo "AFTER-FALL irqs=$(irqs)"
echo both > $button/edge && echo "ARMED-BOTH irqs=$(irqs)"
wait_irqs 2; echo "AFTER-RISE2 irqs=$(irqs)"
wait_irqs 3; echo "AFTER-FALL2 irqs=$(irqs) value=$(cat $button/value)"
echo none > $button/edge && echo "DISARMED"
wait_value 1; sleep 2; echo "AFTER-DISARM irqs=$(irqs) value=$(cat $button/value)"
echo "GUEST-DONE"
"""


class GpioVm:
    def __init__(self, root: Path, image, accel: str, script: str = GUEST, qemu: Path | None = None) -> None:
        from tests.guest import initrd_with_script
        from tests.guest.vmspec import write_guest_spec, write_host_profile

        self.root, self.name = root, "e2egpio"
        initrd = initrd_with_script(script, root, image=image, gpio_i2c=True)
        self.host = write_host_profile(root / "host.yaml", accel, qemu=qemu)
        self.spec = write_guest_spec(root / "gpio.yaml", self.name, image, initrd, textwrap.dedent("""\
            - type: virtio-gpio
              name: gpio
              lines:
                - {name: button, direction: in}
                - {name: led, direction: out}
                - {name: spare}
            """))
        self.state = root / "state"
        self.env = {**os.environ, "ACRNMGR_STATE_DIR": str(self.state)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([ACRNMGR, *args], capture_output=True, text=True, env=self.env, timeout=300)
        if check and proc.returncode:
            raise AssertionError(f"acrnmgr {' '.join(args)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}\n"
                                 f"{self.console()}")
        return proc

    def gpio(self, *args: str) -> dict:
        return json.loads(self.run("gpio", *args, "--output", "json").stdout)

    def console(self) -> str:
        log = self.state / self.name / "console.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def wait_console(self, marker: str) -> str:
        if not wait_until(lambda: marker in self.console(), TIMEOUT, 0.2):
            raise AssertionError(f"the guest never printed {marker}:\n{self.console()}\n"
                                 + self.run("logs", self.name, check=False).stdout)
        return self.console().split(marker, 1)[1].split("\n", 1)[0]


@pytest.fixture
def gpio_vm(tmp_path, guest_image):
    from tests.guest.qemu import pick_accel

    vm = GpioVm(tmp_path, guest_image, pick_accel(guest_image))
    yield vm
    subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=vm.env, capture_output=True)


@pytest.fixture
def gpio_irq_vm(tmp_path, guest_image):
    """The IRQ guest on QEMU 10 from bookworm-backports (its vhost-user-gpio-pci passes VIRTIO_GPIO_F_IRQ on)."""
    from tests.guest.qemu import pick_accel
    from tests.guest.qemu_backports import backports_qemu

    vm = GpioVm(tmp_path, guest_image, pick_accel(guest_image), GUEST_IRQ, backports_qemu())
    yield vm
    subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=vm.env, capture_output=True)


def test_guest_and_host_drive_lines_both_ways(gpio_vm):
    vm = gpio_vm
    up = vm.run("up", "--engine", "qemu", "--host", str(vm.host), str(vm.spec))
    # The plan's warning, shown by up: the engine read the version of the QEMU it runs (Debian 12's 7.2).
    assert "QEMU 7.2's vhost-user-gpio-pci does not offer the guest VIRTIO_GPIO_F_IRQ (QEMU before 9.0" in up.stderr
    assert vm.wait_console("GPIO-CHIP ").endswith(" ngpio=3")

    # The guest drives "led" (sysfs names the exported line after what GET_NAMES gave the driver).
    assert vm.wait_console("LED-SET ").strip() == "led"
    assert "BUTTON-OUT refused" in vm.console()  # "button" is the host's (direction: in)
    (led,) = vm.gpio("get", vm.name, "led")["lines"]
    assert (led["direction"], led["value"], led["drivenBy"]) == ("out", 1, "guest")
    refused = vm.run("gpio", "set", vm.name, "led", "0", check=False)
    assert refused.returncode == 1 and "output the guest drives" in refused.stderr, refused.stderr

    # The host drives "button"; the guest waits for it, then clears the led, which the host sees.
    vm.run("gpio", "set", vm.name, "button", "1")
    assert vm.wait_console("button=").strip() == "1"
    vm.wait_console("LED-CLEARED")
    assert vm.run("gpio", "get", vm.name, "led").stdout.strip() == "0"

    # QEMU 7.2 did not pass VIRTIO_GPIO_F_IRQ on: no IRQ domain in the guest, and the host is told so.
    assert "EDGE-ATTRIBUTE no" in vm.console()
    answer = vm.gpio("get", vm.name)
    assert answer["interrupts"] is False
    assert [ln["name"] for ln in answer["lines"]] == ["button", "led", "spare"]
    table = vm.run("gpio", "get", vm.name)
    assert table.stdout.splitlines()[0].split()[:4] == ["LINE", "NAME", "DIRECTION", "VALUE"]
    assert "did not negotiate VIRTIO_GPIO_F_IRQ" in table.stderr

    vm.run("gpio", "set", vm.name, "button", "0")
    vm.wait_console("GUEST-DONE")
    assert "button=0" in vm.console()


def test_guest_sees_the_edges_the_host_makes_on_qemu_10(gpio_irq_vm):
    vm = gpio_irq_vm
    up = vm.run("up", "--engine", "qemu", "--host", str(vm.host), str(vm.spec))
    assert "VIRTIO_GPIO_F_IRQ" not in up.stderr  # the engine read QEMU's version: 9.0 or later passes it on

    def button() -> dict:
        (line,) = vm.gpio("get", vm.name, "button")["lines"]
        return line

    # Rising edges only: the host's 0 -> 1 interrupts the guest once, 1 -> 0 does not.
    assert vm.wait_console("ARMED-RISING ").strip() == "irqs=0"
    assert vm.gpio("get", vm.name)["interrupts"] is True  # the guest negotiated VIRTIO_GPIO_F_IRQ
    assert button()["irq"] == "edge-rising"
    vm.run("gpio", "set", vm.name, "button", "1")
    assert vm.wait_console("AFTER-RISE ").strip() == "irqs=1 value=1"
    vm.run("gpio", "set", vm.name, "button", "0")
    assert vm.wait_console("AFTER-FALL ").strip() == "irqs=1"

    # Both edges: each toggle interrupts the guest once.
    assert vm.wait_console("ARMED-BOTH ").strip() == "irqs=1"
    assert button()["irq"] == "edge-both"
    vm.run("gpio", "set", vm.name, "button", "1")
    assert vm.wait_console("AFTER-RISE2 ").strip() == "irqs=2"
    vm.run("gpio", "set", vm.name, "button", "0")
    assert vm.wait_console("AFTER-FALL2 ").strip() == "irqs=3 value=0"

    # The guest disarms: its driver tells the device (the host sees no IRQ type), gpiolib frees the IRQ (gone
    # from /proc/interrupts), and the line still reads what the host drives.
    vm.wait_console("DISARMED")
    assert button()["irq"] == "none"
    vm.run("gpio", "set", vm.name, "button", "1")
    assert vm.wait_console("AFTER-DISARM ").strip() == "irqs= value=1"
    vm.wait_console("GUEST-DONE")
