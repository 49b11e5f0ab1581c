"""The host-line side of virtio-gpio talks to /dev/gpiochipN through the v2 uAPI with struct layouts and ioctl
numbers of its own; this machine's kernel has neither gpio-sim nor gpio-mockup (no modules at all), so no real
chip can answer them here.  What can be checked is checked: every size, offset, flag and ioctl number against
linux/gpio.h, compiled by the C compiler (libc6-dev's linux-libc-dev headers), and the refusals that need no chip."""

import os
import shutil
import subprocess

import pytest

from acrnmgr.devmodel import gpio as G

SOURCE = os.path.join(os.path.dirname(__file__), "gpio_uapi.c")


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed (scripts/setup.sh installs gcc)"
    exe = str(tmp_path_factory.mktemp("uapi") / "gpio_uapi")
    subprocess.run([cc, "-O0", "-o", exe, SOURCE], check=True)
    return [[int(x) for x in line.split()] for line in subprocess.run([exe], capture_output=True, text=True,
                                                                       check=True).stdout.splitlines()]


def test_struct_sizes_offsets_and_ioctls_match_linux_gpio_h(header_facts):
    sizes, ioctls, offsets, flags = header_facts
    assert sizes == [G.CHIP_INFO.size, G.LINE_INFO.size, G.LINE_CONFIG.size, G.LINE_REQUEST.size,
                     G.LINE_VALUES.size, G.LINE_EVENT.size]
    assert ioctls == [G.GPIO_GET_CHIPINFO_IOCTL, G.GPIO_V2_GET_LINEINFO_IOCTL, G.GPIO_V2_GET_LINE_IOCTL,
                      G.GPIO_V2_LINE_SET_CONFIG_IOCTL, G.GPIO_V2_LINE_GET_VALUES_IOCTL,
                      G.GPIO_V2_LINE_SET_VALUES_IOCTL]
    # struct gpio_v2_line_info.offset (written before GET_LINEINFO), gpio_v2_line_request.fd, the event's id
    assert offsets == [64, G.LINE_REQUEST.size - 4, 8]
    assert flags == [G.FLAG_INPUT, G.FLAG_OUTPUT, G.FLAG_EDGE_RISING, G.FLAG_EDGE_FALLING, G.ATTR_ID_OUTPUT_VALUES,
                     G.EVENT_RISING_EDGE, G.EVENT_FALLING_EDGE]


def test_a_line_config_with_an_output_value_is_one_attribute():
    config = G._line_config(G.FLAG_OUTPUT, 1)
    flags, num_attrs = G.LINE_CONFIG.unpack(config)[:2]
    assert (flags, num_attrs) == (G.FLAG_OUTPUT, 1)
    assert config[32:56] == (G.ATTR_ID_OUTPUT_VALUES).to_bytes(4, "little") + bytes(4) + (1).to_bytes(8, "little") \
        + (1).to_bytes(8, "little")


@pytest.mark.parametrize("spec", ["gpiochip0", "../gpiochip0:1", "gpiochip0:1/..", "gpiochip99999:1", "mem:1"])
def test_host_line_names_never_reach_another_path(spec):
    with pytest.raises(ValueError):
        G.HostLine(spec)


def test_a_missing_chip_is_a_clear_error():
    missing = next(f"gpiochip{n}" for n in range(9999) if not os.path.exists(f"/dev/gpiochip{n}"))
    with pytest.raises(FileNotFoundError):
        G.HostLine(f"{missing}:0")
