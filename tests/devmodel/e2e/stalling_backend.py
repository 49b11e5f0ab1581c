"""Test-only launcher: the real `acrnmgr devmodel serve`, in-process, whose virtio-blk device stalls forever on the
first write that covers one sector, so a test can SIGKILL it with that request popped and marked in flight.

    python stalling_backend.py MARKER SECTOR <acrnmgr devmodel serve options>

When the stall begins it writes MARKER ("in flight now"). The request is never served by this process: the data
can only reach the image if the next back-end resubmits it from QEMU's inflight buffer.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from acrnmgr.cli import app
from acrnmgr.devmodel.blk import SECTOR, BlkDevice


def main() -> None:
    marker, stall_sector, serve_args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    serve_rw = BlkDevice._rw
    stalled = False

    def rw(self, op, sector, bufs, nbytes):
        # _rw runs from the request handler, i.e. after pop() marked the head in flight.
        nonlocal stalled
        if op is os.pwritev and not stalled and sector <= stall_sector < sector + nbytes // SECTOR:
            stalled = True
            marker.write_text(f"sector {sector} bytes {nbytes}\n")
            time.sleep(3600)  # until the test's SIGKILL
        return serve_rw(self, op, sector, bufs, nbytes)

    BlkDevice._rw = rw
    app(["devmodel", "serve", *serve_args], prog_name="acrnmgr")


if __name__ == "__main__":
    main()
