"""Reading user-supplied files: one way, with a size cap, regular files only.

Every input acrnmgr reads (specs, standard input, kustomizations and their patches, imported XML
and launch scripts, board XML, host profiles) goes through `read_input`, so `/dev/zero`, a FIFO,
a directory, a dangling or looping symlink or a 300 MB file is a clear error, quickly, and never
an out-of-memory kill or a hang. A leaf module: it imports nothing of acrnmgr."""

from __future__ import annotations

import os
import stat
import sys

# No VM spec, kustomization, launch script, host profile or ACRN scenario/board XML comes near this.
MAX_INPUT_BYTES = 16 << 20
# XML to import: ElementTree needs ~25 bytes of memory per byte of tiny elements, so 8 MiB bounds an
# import at ~200 MiB (an 80 MB file took 1.9 GB). ACRN board XML, the largest, is about 1 MiB.
MAX_XML_BYTES = 8 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


class InputError(Exception):
    """`path` cannot be read as an input; `reason` says why without naming the path."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def file_kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def read_input(path: str | os.PathLike, *, limit: int = MAX_INPUT_BYTES, stdin: bool = False) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (with `stdin`, `-` is standard input,
    which may be a pipe). Raises InputError for anything else."""
    name = os.fspath(path)
    if stdin and name == "-":
        data = sys.stdin.buffer.read(limit + 1)
        if len(data) > limit:
            raise InputError("<stdin>", f"more than {_size(limit)} of input; that is not a file acrnmgr reads")
        return data
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        reason = "a dangling symlink" if os.path.islink(name) else "no such file"
        raise InputError(name, reason) from None
    except OSError as exc:
        raise InputError(name, f"cannot read: {_why(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(name, f"is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise InputError(name, f"is larger than {_size(limit)}; not a file acrnmgr reads")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise InputError(name, f"is larger than {_size(limit)}; not a file acrnmgr reads")
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(name, f"cannot read: {_why(exc)}") from None
    finally:
        os.close(fd)


def read_input_text(path: str | os.PathLike, *, limit: int = MAX_INPUT_BYTES, stdin: bool = False) -> str:
    """read_input decoded as UTF-8 (a BOM is dropped); InputError when it is not UTF-8 text."""
    data = read_input(path, limit=limit, stdin=stdin)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        what = "binary data" if b"\0" in data else "not UTF-8 text"
        raise InputError("<stdin>" if stdin and os.fspath(path) == "-" else os.fspath(path),
                         f"{what} (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _why(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"
