"""spec.machine and spec.uuid under the qemu engine, seen from inside a real guest: the q35 chipset's host bridge
(8086:29c0, where i440fx has 8086:1237) at 00:00.0, and the SMBIOS system UUID."""

from __future__ import annotations

import re

import pytest

from tests.lifecycle.test_qemu_vhost_user import Vm, cleanup, guest  # noqa: F401 (fixtures)

pytestmark = pytest.mark.guest

UUID = "3e3fce45-4f53-4fa7-bb32-11f34168b82b"
SCRIPT = """\
hb=/sys/bus/pci/devices/0000:00:00.0
echo "ACRNMGR-HOSTBRIDGE $(cat $hb/vendor):$(cat $hb/device)"
echo "ACRNMGR-UUID $(cat /sys/class/dmi/id/product_uuid 2>/dev/null || echo none)"
echo "ACRNMGR-DONE"
while :; do sleep 1; done
"""


# (pc is what every other guest test boots; one boot here keeps the suite fast)
@pytest.mark.parametrize("machine, bridge", [("q35", "0x8086:0x29c0")])
def test_the_guest_sees_the_chipset_and_the_uuid(tmp_path, guest, cleanup, machine, bridge):  # noqa: F811
    vm = Vm(tmp_path, guest, SCRIPT, "- {type: virtio-rnd}\n", extra=f"  machine: {machine}\n  uuid: {UUID}\n")
    cleanup.append(vm)
    vm.run("up", "--engine", "qemu", "--host", str(vm.host), str(vm.spec))
    out = vm.wait_console("ACRNMGR-DONE")
    assert re.search(r"ACRNMGR-HOSTBRIDGE (\S+)", out).group(1) == bridge
    assert re.search(r"ACRNMGR-UUID (\S+)", out).group(1) == UUID
    vm.run("down", vm.name, "--timeout", "120")
