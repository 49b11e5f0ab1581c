"""used->idx is published with one 16-bit store: a driver spinning on it from another CPU never sees it go back.

A C reader (built here with the system compiler) pinned to one CPU polls used->idx in the shared memfd while the
device, pinned to another, completes a million requests, publishing the index after each one.  A torn store
(struct.pack_into zero-fills the field before writing it) shows up as the index going backwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from core_guest import PAGE, GuestQueue, GuestRam

from acrnmgr.devmodel.virtqueue import VRING_DESC_F_WRITE

COMPLETIONS = 1_000_000
QUEUE_SIZE = 256
READER_SOURCE = os.path.join(os.path.dirname(__file__), "used_idx_reader.c")


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed (scripts/setup.sh installs gcc)"
    exe = str(tmp_path_factory.mktemp("reader") / "used_idx_reader")
    subprocess.run([cc, "-O2", "-Wall", "-o", exe, READER_SOURCE], check=True)
    return exe


@pytest.mark.slow
def test_used_idx_never_goes_backwards_for_a_concurrent_reader(reader):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: the reader and the device must run concurrently")
    device_cpu, reader_cpu = cpus[0], cpus[1]
    ram = GuestRam()
    q = GuestQueue(ram, size=QUEUE_SIZE)
    vq = q.vq
    ctl = ram.alloc(4, 4)
    buf = ram.alloc(8)
    q.write_desc(0, buf, 8, VRING_DESC_F_WRITE, 0)  # every avail entry names this one-descriptor chain
    used_idx_off = ram.off(q.used + 2)
    proc = subprocess.Popen([reader, str(ram.fd), str(ram.size + 2 * PAGE), str(used_idx_off), str(ram.off(ctl)),
                             str(reader_cpu)], pass_fds=(ram.fd,), stdout=subprocess.PIPE, text=True)
    saved_affinity = os.sched_getaffinity(0)
    try:
        deadline = time.monotonic() + 10
        while ram.read(ctl, 4) != b"\x01\0\0\0":
            assert proc.poll() is None and time.monotonic() < deadline, "the reader did not start"
            time.sleep(0.01)
        os.sched_setaffinity(0, {device_cpu})
        avail16 = memoryview(ram.raw)[ram.off(q.avail):ram.off(q.avail) + 4].cast("H")
        avail_idx = 0
        for _ in range(COMPLETIONS // QUEUE_SIZE + 1):
            avail_idx = (avail_idx + QUEUE_SIZE) & 0xFFFF
            avail16[1] = avail_idx           # the driver posts a ring's worth (all heads 0)
            for _ in range(QUEUE_SIZE):
                chain = vq.pop(q.mem)
                vq.push(q.mem, chain.head, 8)
                vq.flush_used(q.mem)              # publish after every completion: as many index changes as possible
        avail16.release()
    finally:
        os.sched_setaffinity(0, saved_affinity)
        ram.write(ctl, b"\x02\0\0\0")
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    reads, changes, backwards, stalls = map(int, out.split())
    completed = (COMPLETIONS // QUEUE_SIZE + 1) * QUEUE_SIZE
    assert not vq.broken and q.used_idx() == completed & 0xFFFF
    assert changes > 10_000, f"the reader saw only {changes} index changes in {reads} reads: not concurrent"
    assert backwards == 0, (f"used->idx went backwards {backwards} times in {changes} changes seen by the reader "
                            f"({stalls} jumps after the reader itself stalled were not counted)")
    ram.close()
