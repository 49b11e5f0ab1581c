"""A minimal writer for the newc cpio format, the one Linux unpacks as an initramfs.

Written in Python rather than driving cpio(1) so that entries (device nodes, modes, owners) come out exactly as
wanted without root privileges or a staging tree, and so that an archive holding a single test script can be made
in microseconds and appended to the cached base archive (Linux unpacks concatenated archives in order).
"""

from __future__ import annotations

import stat
from typing import BinaryIO

_MAGIC = b"070701"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Streams newc entries to a binary file; call close() to write the trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._written = 0
        self._seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/") or "."
        if name in self._seen and name != "TRAILER!!!":
            raise ValueError(f"duplicate cpio entry {name!r}")
        self._seen.add(name)
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        chunk = header + encoded + _pad4(len(header) + len(encoded)) + data + _pad4(len(data))
        self._out.write(chunk)
        self._written += len(chunk)
        self._ino += 1

    def has(self, name: str) -> bool:
        return (name.lstrip("/") or ".") in self._seen

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)
        # Pad to 512 bytes like cpio(1) does; the kernel skips zero padding between concatenated archives.
        self._out.write(b"\0" * (-self._written % 512))


def script_archive(script: str, name: str = "test.sh") -> bytes:
    """A complete cpio archive holding one executable script at /<name>."""
    import io

    buf = io.BytesIO()
    writer = CpioWriter(buf)
    writer.file(name, script.encode(), 0o755)
    writer.close()
    return buf.getvalue()
