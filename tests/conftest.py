"""Fixtures shared by the whole suite. Keep small: the test guest lives in tests/guest/."""

import pytest

from acrnmgr.host import HostProfile
from tests.specs import HOSTS


@pytest.fixture(scope="session")
def guest_image():
    """The built test guest (tests.guest.GuestImage: .kernel, .initrd, .cmdline, .initrd_with_script(script)).

    Built once and cached across runs; a failed build is an error in every test that uses it, never a skip."""
    from tests.guest import build_guest_image

    return build_guest_image()


@pytest.fixture(scope="session")
def service_vm() -> HostProfile:
    return HostProfile.from_file(HOSTS / "acrn-service-vm.yaml")


@pytest.fixture(scope="session")
def plain_box() -> HostProfile:
    return HostProfile.from_file(HOSTS / "plain-box.yaml")
