"""The gpio-i2c layer: virtio-gpio/virtio-i2c guest drivers built out of tree against the guest kernel's headers
(Debian's kernels do not build them), with i2c-dev, at24 and lm75, loaded by /init when a test asks for it."""

import pytest

from acrnmgr.images.build import GuestBuildError
from acrnmgr.images.cpio import script_archive
from acrnmgr.images.gpio_i2c import (
    CLIENT_MODULES,
    VIRTIO_DRIVERS,
    _kernel_sources,
    gpio_i2c_layer,
    kernel_config,
    layer_modules,
)
from tests.guest import initrd_with_script, run_guest

pytestmark = pytest.mark.guest


@pytest.fixture(scope="session")
def gpio_i2c(guest_image):
    return gpio_i2c_layer(guest_image, progress=lambda _: None)


def test_the_layer_is_cached_and_holds_the_drivers_in_load_order(guest_image, gpio_i2c):
    assert gpio_i2c_layer(guest_image) == gpio_i2c  # warm: the cached archive
    modules = layer_modules(gpio_i2c)
    config = kernel_config(guest_image)
    for name, symbol, _ in VIRTIO_DRIVERS:
        assert (name in modules) == (config.get(symbol) != "y")
    assert set(CLIENT_MODULES) <= set(modules)  # Debian builds i2c-dev, at24 and lm75 as modules
    assert modules.index("i2c_dev") < modules.index("i2c_virtio")  # in-tree first, then what was built here
    assert not set(modules) & set(guest_image.modules)  # the base loads its own
    data = gpio_i2c.read_bytes()
    assert data[:6] == b"070701" and b"etc/acrnmgr/modules.d/gpio-i2c.load" in data


def test_a_failed_build_says_why(tmp_path):
    with pytest.raises(GuestBuildError, match="major.minor .* 'bogus'"):
        _kernel_sources(tmp_path, "bogus", ["drivers/gpio/gpio-virtio.c"], lambda _: None)


def test_initrd_with_the_layer_is_base_plus_layer_plus_script(guest_image, gpio_i2c, tmp_path):
    plain = initrd_with_script("true\n", tmp_path, image=guest_image)
    with_layer = initrd_with_script("true\n", tmp_path, image=guest_image, gpio_i2c=True)
    assert with_layer != plain
    expected = guest_image.initrd_base.read_bytes() + gpio_i2c.read_bytes() + script_archive("true\n")
    assert with_layer.read_bytes() == expected


def test_the_drivers_load_in_the_guest(guest_image, gpio_i2c):
    script = """set -e
lsmod
for m in i2c_dev at24 lm75 gpio_virtio i2c_virtio; do test -d /sys/module/$m; done
echo VIRTIO-DRIVERS $(ls /sys/bus/virtio/drivers)
echo I2C-DRIVERS $(ls /sys/bus/i2c/drivers)
test -d /sys/class/i2c-dev && test -e /sys/class/gpio/export
"""
    result = run_guest(script, image=guest_image, gpio_i2c=True)
    assert result.rc == 0, result.output
    assert "ACRNMGR-GUEST-WARN" not in result.output  # every insmod succeeded
    virtio = next(line.split()[1:] for line in result.output.splitlines() if line.startswith("VIRTIO-DRIVERS"))
    assert {"gpio_virtio", "i2c_virtio", "virtio_blk"} <= set(virtio)
    i2c = next(line.split()[1:] for line in result.output.splitlines() if line.startswith("I2C-DRIVERS"))
    assert {"at24", "lm75"} <= set(i2c)
    # Without the layer, the guest has neither driver.
    bare = run_guest("test -d /sys/bus/virtio/drivers/gpio_virtio", image=guest_image)
    assert bare.rc == 1
