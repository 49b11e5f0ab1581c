"""Micro-benchmark of the virtqueue hot path: pop + push per request, flush_used + should_notify per batch
(or flush_used per request with --flush-each), over a memfd-backed guest ring.  Not a test; run it as
``.venv/bin/python tests/devmodel/core/bench_virtqueue.py [--flush-each] [N]`` and compare before/after.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from core_guest import GuestQueue, GuestRam

from acrnmgr.devmodel.virtqueue import VRING_DESC_F_WRITE

QUEUE_SIZE = 256


def run(requests: int, flush_each: bool) -> float:
    ram = GuestRam()
    q = GuestQueue(ram, size=QUEUE_SIZE)
    vq, mem = q.vq, ram.mem
    q.write_desc(0, ram.alloc(4096), 4096, VRING_DESC_F_WRITE, 0)  # every avail entry names this chain
    avail16 = memoryview(ram.raw)[ram.off(q.avail):ram.off(q.avail) + 4].cast("H")
    idx = done = 0
    start = time.perf_counter()
    while done < requests:
        idx = (idx + QUEUE_SIZE) & 0xFFFF
        avail16[1] = idx  # the driver posts a ring's worth
        for _ in range(QUEUE_SIZE):
            chain = vq.pop(mem)
            assert chain is not None
            vq.push(mem, chain.head, 8)
            if flush_each:
                vq.flush_used(mem)
        vq.flush_used(mem)
        vq.should_notify(mem)
        done += QUEUE_SIZE
    elapsed = time.perf_counter() - start
    avail16.release()
    assert not vq.broken
    ram.close()
    return elapsed


def main() -> None:
    flush_each = "--flush-each" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    requests = int(args[0]) if args else 100_000
    best = min(run(requests, flush_each) for _ in range(5))
    mode = "flush_used per request" if flush_each else f"flush_used + should_notify per {QUEUE_SIZE}"
    print(f"{requests} requests, pop + push, {mode}: best of 5 {best * 1e3:.1f} ms = "
          f"{best / requests * 1e9:.0f} ns/request")


if __name__ == "__main__":
    main()
