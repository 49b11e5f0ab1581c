"""Test-only launcher: the real `acrnmgr devmodel serve`, in-process, whose virtio-blk device stalls forever on the
first write that covers one sector, so a test can SIGKILL it with that request popped and marked in flight.

    python stalling_backend.py MARKER SECTOR <acrnmgr devmodel serve options>

When the stall begins it writes MARKER ("in flight now"). The request is never served by this process: the data
can only reach the image if the next back-end resubmits it from QEMU's inflight buffer.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

from acrnmgr.cli import app
from acrnmgr.devmodel.blk import SECTOR, T_OUT, BlkDevice


def main() -> None:
    marker, stall_sector, serve_args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    serve_handle = BlkDevice._handle
    stalled = False

    def handle(self, vq, chain):
        # The request handler runs after pop() marked the head in flight.  Linux puts the 16-byte header alone
        # in the first descriptor.
        nonlocal stalled
        first = chain.readable[0] if chain.readable else b""
        if not stalled and len(first) >= 16:
            rtype, _, sector = struct.unpack_from("<IIQ", first)
            nbytes = chain.readable_len - 16
            if rtype == T_OUT and sector <= stall_sector < sector + nbytes // SECTOR:
                stalled = True
                marker.write_text(f"sector {sector} bytes {nbytes}\n")
                time.sleep(3600)  # until the test's SIGKILL
        return serve_handle(self, vq, chain)

    BlkDevice._handle = handle
    app(["devmodel", "serve", *serve_args], prog_name="acrnmgr")


if __name__ == "__main__":
    main()
