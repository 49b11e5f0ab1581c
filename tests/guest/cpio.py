"""The newc writer lives in the package (acrnmgr.images.cpio)."""

from acrnmgr.images.cpio import CpioWriter, script_archive  # noqa: F401
