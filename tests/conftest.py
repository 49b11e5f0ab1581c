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


@pytest.fixture(scope="session", autouse=True)
def example_image():
    """examples/linux-qemu.yaml names the image `acrnmgr image build` writes into ~/.cache/acrnmgr/images/debian;
    the validator checks that its paths exist, so the suite builds it when missing (seconds; the kernel package
    is shared with the test guest's cache). A failed build is an error, never a skip."""
    from acrnmgr.images.user import build_user_image, default_image_dir

    if not (default_image_dir() / "manifest.json").exists():
        build_user_image(progress=lambda _: None)
    return default_image_dir()
