"""The test guest: a Debian kernel + busybox/fio initramfs built from packages (build.py), and a QEMU runner
(qemu.py). See qemu.py's docstring for the machine and virtio-pci mode notes."""

from .build import DEFAULT_CMDLINE, GuestBuildError, GuestImage, build_guest_image, initrd_with_script
from .qemu import (
    POWERDOWN_MARKER,
    QMP,
    READY_MARKER,
    Guest,
    GuestError,
    GuestResult,
    pick_accel,
    qemu_base_argv,
    run_guest,
)

__all__ = [
    "DEFAULT_CMDLINE", "GuestBuildError", "GuestImage", "build_guest_image", "initrd_with_script",
    "POWERDOWN_MARKER", "QMP", "READY_MARKER", "Guest", "GuestError", "GuestResult", "pick_accel",
    "qemu_base_argv", "run_guest",
]
