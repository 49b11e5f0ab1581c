"""The libvirt domain as the supervisor's "main" process.

A libvirt domain's embedded device models (`acrnmgr devmodel serve`, the vhost-user backends of its
<disk type='vhostuser'>/<interface type='vhostuser'>) are run by the lifecycle supervisor like the
qemu engine's helpers. QEMU itself is libvirt's child, not ours, so the supervisor's main process is
this watcher: it waits for the domain to start (`up` creates it once the device models listen), then
lives as long as the domain runs. When it exits, the supervisor stops the device models and removes
their sockets, whether the domain was shut down by acrnmgr, by virsh or by the guest itself.

Run as: python -m acrnmgr.libvirt.watch URI NAME [--start-timeout S]"""

from __future__ import annotations

import argparse
import sys
import time

from acrnmgr.libvirt import libvirt_python
from acrnmgr.lifecycle.engine import LifecycleError
from acrnmgr.lifecycle.state import wait_until

POLL = 0.5


def _active(conn, name: str) -> bool:
    libvirt = libvirt_python()

    try:
        return bool(conn.lookupByName(name).isActive())
    except libvirt.libvirtError:
        return False  # undefined: certainly not running


def main(argv: list[str] | None = None) -> int:
    try:
        libvirt = libvirt_python()
    except LifecycleError as exc:
        print(exc, flush=True)
        return 1
    parser = argparse.ArgumentParser(prog="acrnmgr-libvirt-watch")
    parser.add_argument("uri")
    parser.add_argument("name")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(args.uri)
    except libvirt.libvirtError as exc:
        print(f"cannot connect to {args.uri}: {exc.get_error_message()}", flush=True)
        return 1
    if not wait_until(lambda: _active(conn, args.name), args.start_timeout, 0.1):
        print(f"domain {args.name} did not start within {args.start_timeout:g} s", flush=True)
        return 1
    print(f"domain {args.name} is running", flush=True)
    while _active(conn, args.name):
        time.sleep(POLL)
    print(f"domain {args.name} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
