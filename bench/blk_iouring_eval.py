"""CPU per I/O of io_uring bindings from Python against os.preadv/os.pwritev, for the virtio-blk data path.

Issue #13 asks whether submitting a virtqueue batch through io_uring costs less CPU per I/O than what
acrnmgr/devmodel/blk.py does now: one os.preadv/os.pwritev per request, on zero-copy memoryviews of guest
memory (an mmap of a memfd).  This script measures exactly that, on page-cache hits:

* read 4k random and 128k sequential from a fully cached file (default 512 MiB under /var/tmp), and
  write 4k random / 128k sequential into a cached scratch file (default 64 MiB, fdatasync'ed between runs,
  untimed, so every run dirties clean pages);
* destinations/sources are slices of a memoryview of an mmap of a memfd, like guest memory;
* variants: `os` (N x os.preadv/pwritev, the peer every ratio is against) and each io_uring binding that
  imports: a batch of N requests (32 for 4k, 8 for 128k) is prepared, submitted with as few
  io_uring_enter calls as the binding allows, and all N completions are reaped before the next batch;
* CPU time is getrusage(RUSAGE_SELF) user and sys (all threads, so io-wq workers count too), wall time
  gives IOPS; every variant runs --rounds times, alternating, and the medians are printed;
* before timing, every variant's data is checked against os.pread, so a binding that does nothing or
  reads the wrong place is caught.

Bindings (none is a project dependency; install them into a throwaway venv of the same Python):
  /root/.pyenv/versions/3.11.7/bin/python3 -m venv /tmp/iouring-venv
  /tmp/iouring-venv/bin/pip install liburing uring-api 'pyuring==0.3.0'
  mkdir -p /tmp/s3 && flock /tmp/s3/bench.lock taskset -c 1 /tmp/iouring-venv/bin/python bench/blk_iouring_eval.py

* liburing (PyPI, Zig bindings over liburing): get_sqe + Iovec(bufs) + prep_readv/prep_writev per request,
  one io_uring_submit_and_wait(N), CqeIter to reap.  liburing-fixed: the same with all of guest memory
  registered once as buffer 0 and prep_readv_fixed/prep_writev_fixed (kernel >= 6.15).
* uring_api (PyPI uring-api, C extension over liburing 2.15): prepare_read/prepare_write per request
  (one buffer each; our chains' data is one segment here), submit(), wait() until N completions.
* pyuring (PyPI, ctypes over its own C shim): read_async_ptr/write_async_ptr, which calls
  io_uring_submit itself, so it is one io_uring_enter per request; wait_completion() per completion.

Columns: CPU us per I/O (user/sys are the kernel's tick-sampled split, total is exact), IOPS (wall),
context switches per I/O (about 1-2 means the kernel punted the request to an io-wq worker: ext4 does not
do non-blocking buffered writes, so every io_uring write here does), ratio of total CPU to the os peer,
and leak/IO: guest slices still exported after their I/O completed (liburing's Iovec never releases its
Py_buffer, so each request leaks its memoryview and the guest mmap can no longer be closed).  A variant
whose module does not import is reported as skipped.  --output json prints the same as data.

For the kernel side without any Python, compare fio on the same cached file (fio drops the page cache
unless told not to):
  fio --name=r --filename=/var/tmp/blk_iouring_eval.512M.data --rw=randread --bs=4k --invalidate=0 \
      --time_based --runtime=4 --ioengine=pvsync   (vs --ioengine=io_uring --iodepth=32
      --iodepth_batch_submit=32 --iodepth_batch_complete_min=32)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import importlib.metadata
import json
import mmap
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MiB = 1 << 20
GUEST_MEM_SIZE = 64 * MiB
CHUNK = 1 * MiB

# (file offset, guest offset, [guest view]) - the view list is what blk.py hands os.preadv
Request = tuple[int, int, list[memoryview]]


@dataclass
class Workload:
    name: str
    write: bool
    bs: int
    batch: int
    fd: int
    batches: list[list[Request]]

    @property
    def ios(self) -> int:
        return sum(len(b) for b in self.batches)


Runner = Callable[[Workload], None]


class ShortIO(RuntimeError):
    pass


@dataclass
class Variant:
    name: str
    make: Callable[[Workload, "Guest"], Runner]


class Guest:
    """Guest memory as the device model sees it: an mmap of a memfd, sliced by memoryview."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("blk-iouring-eval-guest")
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.view = memoryview(self.map)
        self.size = size
        # the guest-physical -> host-virtual base, for bindings that only take raw pointers
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))


def make_file(path: str, size: int) -> None:
    """Random content (so a wrong offset is caught), reused when it exists with the right size."""
    try:
        if os.stat(path).st_size == size:
            return
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for off in range(0, size, CHUNK):
            os.pwrite(fd, os.urandom(min(CHUNK, size - off)), off)
        os.fsync(fd)
    finally:
        os.close(fd)


def warm(fd: int, size: int) -> None:
    buf = bytearray(CHUNK)
    for _ in range(2):
        for off in range(0, size, CHUNK):
            os.preadv(fd, [buf], off)


def build_workload(name: str, write: bool, bs: int, batch: int, fd: int, file_size: int,
                   ios: int, guest: Guest, rng: random.Random) -> Workload:
    """4k: random file offsets; larger: sequential.  Guest slots distinct within a batch."""
    guest_slots = guest.size // bs
    file_slots = file_size // bs
    batches: list[list[Request]] = []
    seq = 0
    for _ in range(max(1, ios // batch)):
        if bs <= 4096:
            file_idx = rng.sample(range(file_slots), batch)
        else:
            file_idx = [(seq + i) % file_slots for i in range(batch)]
            seq += batch
        reqs: list[Request] = []
        for fi, gi in zip(file_idx, rng.sample(range(guest_slots), batch), strict=True):
            goff = gi * bs
            reqs.append((fi * bs, goff, [guest.view[goff:goff + bs]]))
        batches.append(reqs)
    return Workload(name, write, bs, batch, fd, batches)


# --- variants -------------------------------------------------------------------------------------


def make_os(w: Workload, guest: Guest) -> Runner:
    del guest
    op = os.pwritev if w.write else os.preadv
    bs = w.bs

    def run(w: Workload) -> None:
        fd = w.fd
        for batch in w.batches:
            for off, _goff, bufs in batch:
                if op(fd, bufs, off) != bs:
                    raise ShortIO(off)

    return run


def make_liburing(w: Workload, guest: Guest, fixed: bool = False) -> Runner:
    L: Any = importlib.import_module("liburing")
    ring = L.Ring()
    if L.io_uring_queue_init(64, ring) != 0:
        raise RuntimeError("io_uring_queue_init failed")
    cqe = L.Cqe()
    get_sqe, iovec, cqe_iter = L.io_uring_get_sqe, L.Iovec, L.CqeIter
    if fixed:  # all of guest memory is registered buffer 0 (pinned once, no per-I/O iovec import)
        if L.io_uring_register_buffers(ring, iovec([guest.view])) != 0:
            raise RuntimeError("io_uring_register_buffers failed")
        fixed_op = L.io_uring_prep_writev_fixed if w.write else L.io_uring_prep_readv_fixed

        def prep(sqe: Any, fd: int, iov: Any, off: int) -> None:
            fixed_op(sqe, fd, iov, 0, off)
    else:
        prep = L.io_uring_prep_writev if w.write else L.io_uring_prep_readv
    submit_and_wait, cq_advance = L.io_uring_submit_and_wait, L.io_uring_cq_advance
    bs = w.bs

    def run(w: Workload) -> None:
        fd = w.fd
        for batch in w.batches:
            keep = []  # the kernel reads each iovec array at submit; keep them alive until then
            for i, (off, _goff, bufs) in enumerate(batch):
                sqe = get_sqe(ring)
                iov = iovec(bufs)
                keep.append(iov)
                prep(sqe, fd, iov, off)
                sqe.user_data = i
            submit_and_wait(ring, len(batch))  # returns once every CQE of the batch is posted
            seen = 0
            for _ in cqe_iter(ring, cqe):
                entry = cqe[0]
                if entry.res != bs:
                    raise ShortIO(batch[entry.user_data][0])
                seen += 1
            cq_advance(ring, seen)
            if seen != len(batch):
                raise ShortIO(f"{seen} of {len(batch)} completions")

    return run


def make_liburing_fixed(w: Workload, guest: Guest) -> Runner:
    return make_liburing(w, guest, fixed=True)


def make_uring_api(w: Workload, guest: Guest) -> Runner:
    del guest
    U: Any = importlib.import_module("uring_api")
    ring = U.Ring(entries=64, auto_submit=False)
    prepare = ring.prepare_write if w.write else ring.prepare_read
    submit, wait = ring.submit, ring.wait
    bs = w.bs

    def run(w: Workload) -> None:
        fd = w.fd
        for batch in w.batches:
            for i, (off, _goff, bufs) in enumerate(batch):
                prepare(fd, bufs[0], off, i)
            submit()
            done = 0
            while done < len(batch):
                for c in wait() or ():
                    if c.res != bs:
                        raise ShortIO(batch[c.user_data][0])
                    done += 1

    return run


def make_pyuring(w: Workload, guest: Guest) -> Runner:
    P: Any = importlib.import_module("pyuring")
    ctx = P.UringCtx(entries=64)
    op = ctx.write_async_ptr if w.write else ctx.read_async_ptr
    wait_completion = ctx.wait_completion
    base, bs = guest.address, w.bs

    def run(w: Workload) -> None:
        fd = w.fd
        for batch in w.batches:
            for i, (off, goff, _bufs) in enumerate(batch):
                op(fd, base + goff, bs, off, i)  # submits this one SQE (io_uring_enter)
            for _ in batch:
                user_data, res = wait_completion()
                if res != bs:
                    raise ShortIO(batch[user_data][0])

    return run


VARIANTS = [
    Variant("os", make_os),
    Variant("liburing", make_liburing),
    Variant("liburing-fixed", make_liburing_fixed),
    Variant("uring_api", make_uring_api),
    Variant("pyuring", make_pyuring),
]
DISTRIBUTIONS = {"liburing": "liburing", "uring_api": "uring-api", "pyuring": "pyuring"}


# --- correctness -----------------------------------------------------------------------------------


def verify(run: Runner, w: Workload, guest: Guest, rng: random.Random) -> int:
    """One batch through the variant; the file (write) or guest memory (read) must match os.pread.

    The batch uses fresh guest slices; returns how many of them are still exported once the batch is
    done (a binding that never releases its Py_buffer pins guest memory and leaks one object per I/O).
    """
    batch = [(off, goff, [guest.view[goff:goff + w.bs]]) for off, goff, _bufs in w.batches[0]]
    for _off, goff, _bufs in batch:
        guest.view[goff:goff + w.bs] = rng.randbytes(w.bs) if w.write else bytes(w.bs)
    run(Workload(w.name, w.write, w.bs, w.batch, w.fd, [batch]))
    for off, goff, _bufs in batch:
        if os.pread(w.fd, w.bs, off) != guest.view[goff:goff + w.bs]:
            raise AssertionError(f"data mismatch at file offset {off}")
    gc.collect()
    still_exported = 0
    for _off, _goff, bufs in batch:
        try:
            bufs[0].release()
        except BufferError:
            still_exported += 1
    return still_exported


# --- measurement -----------------------------------------------------------------------------------


@dataclass
class Sample:
    user: float
    sys: float
    wall: float
    csw: int


def measure(run: Runner, w: Workload) -> Sample:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run(w)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if w.write:  # untimed: the next run starts from clean pages again
        os.fdatasync(w.fd)
    return Sample(r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, t1 - t0,
                  (r1.ru_nvcsw + r1.ru_nivcsw) - (r0.ru_nvcsw + r0.ru_nivcsw))


def null_syscall_us(calls: int = 200_000) -> float:
    """CPU per os.getppid(): Python's call overhead plus one syscall entry/exit, the most io_uring saves."""
    getppid = os.getppid
    t0 = time.process_time()
    for _ in range(calls):
        getppid()
    return (time.process_time() - t0) / calls * 1e6


def version_of(variant: str) -> str | None:
    dist = DISTRIBUTIONS.get(variant)
    if dist is None:
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--dir", default="/var/tmp", help="where the data and scratch files live")
    ap.add_argument("--size-mib", type=int, default=512, help="data file size (read workloads)")
    ap.add_argument("--write-mib", type=int, default=64, help="scratch file size (write workloads)")
    ap.add_argument("--rounds", type=int, default=5, help="timed runs per variant and workload")
    ap.add_argument("--ios-4k", type=int, default=131072, help="I/Os per timed run at 4k")
    ap.add_argument("--ios-128k", type=int, default=16384, help="I/Os per timed run at 128k")
    ap.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                    help="comma-separated subset of: " + ", ".join(v.name for v in VARIANTS))
    ap.add_argument("--output", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    if args.size_mib < 1 or args.write_mib < 1 or args.rounds < 1 or args.ios_4k < 32 or args.ios_128k < 8:
        ap.error("sizes, rounds and I/O counts must be positive (at least one batch)")
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(wanted) - {v.name for v in VARIANTS})
    if unknown:
        ap.error(f"unknown variant(s): {', '.join(unknown)}")
    if "os" not in wanted:
        wanted.insert(0, "os")  # the peer every ratio is against
    if not os.path.isdir(args.dir):
        ap.error(f"--dir {args.dir!r} is not a directory")

    note = sys.stderr
    if len(os.sched_getaffinity(0)) != 1:
        print("warning: not pinned to one CPU (run under taskset -c N)", file=note)

    data_path = os.path.join(args.dir, f"blk_iouring_eval.{args.size_mib}M.data")
    scratch_path = os.path.join(args.dir, f"blk_iouring_eval.{args.write_mib}M.scratch")
    make_file(data_path, args.size_mib * MiB)
    make_file(scratch_path, args.write_mib * MiB)
    data_fd = os.open(data_path, os.O_RDONLY)
    scratch_fd = os.open(scratch_path, os.O_RDWR)
    warm(data_fd, args.size_mib * MiB)
    warm(scratch_fd, args.write_mib * MiB)

    rng = random.Random(13)
    guest = Guest(GUEST_MEM_SIZE)
    # (write, bs, batch, I/Os per run): QD32 for 4k, QD8 for 128k
    specs = [(False, 4096, 32, args.ios_4k), (False, 128 * 1024, 8, args.ios_128k),
             (True, 4096, 32, args.ios_4k), (True, 128 * 1024, 8, args.ios_128k)]
    workloads: list[Workload] = []
    for write, bs, batch, ios in specs:
        fd, size = (scratch_fd, args.write_mib * MiB) if write else (data_fd, args.size_mib * MiB)
        workloads.append(build_workload("write" if write else "read", write, bs, batch, fd, size, ios, guest, rng))

    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    leaked: dict[str, float] = {}  # guest slices still exported after their I/O completed, per I/O
    for w in workloads:
        runners: dict[str, Runner] = {}
        for v in VARIANTS:
            if v.name not in wanted or v.name in skipped:
                continue
            try:
                runners[v.name] = v.make(w, guest)
            except ImportError as e:
                skipped[v.name] = f"not importable: {e}"
                continue
            leaked[v.name] = verify(runners[v.name], w, guest, rng) / w.batch
            runners[v.name](w)  # warm-up, untimed
        samples: dict[str, list[Sample]] = {name: [] for name in runners}
        names = list(runners)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                samples[name].append(measure(runners[name], w))
        ios = w.ios
        base = statistics.median(s.user + s.sys for s in samples["os"]) / ios
        for name, ss in samples.items():
            user = statistics.median(s.user for s in ss) / ios
            sys_ = statistics.median(s.sys for s in ss) / ios
            total = statistics.median(s.user + s.sys for s in ss) / ios
            wall = statistics.median(s.wall for s in ss)
            results.append({
                "variant": name, "op": w.name, "bs": w.bs, "batch": w.batch,
                "cpu_us_user": user * 1e6, "cpu_us_sys": sys_ * 1e6, "cpu_us_total": total * 1e6,
                "iops": ios / wall, "ctx_switches_per_io": statistics.median(s.csw for s in ss) / ios,
                "ratio_cpu_vs_os": total / base, "leaked_exports_per_io": leaked[name],
                "ios_per_run": ios, "rounds": args.rounds,
            })

    env = {
        "kernel": platform.release(), "python": platform.python_version(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "versions": {name: version_of(name) for name in DISTRIBUTIONS},
        "null_syscall_cpu_us": null_syscall_us(),
        "skipped": skipped, "data_file": data_path, "scratch_file": scratch_path,
    }
    if args.output == "json":
        json.dump({"environment": env, "results": results}, sys.stdout, indent=2)
        print()
        return 0
    print(f"kernel {env['kernel']}, Python {env['python']}, CPUs {env['cpus_allowed']}, "
          f"medians of {args.rounds} runs; ratio = total CPU per I/O / os.preadv|pwritev's")
    print(f"{'variant':<15} {'op':<5} {'bs':>6} {'batch':>5} {'user us':>8} {'sys us':>8} {'total us':>9} "
          f"{'IOPS':>9} {'csw/IO':>7} {'ratio':>6} {'leak/IO':>7}")
    for r in results:
        print(f"{r['variant']:<15} {r['op']:<5} {r['bs'] // 1024:>5}k {r['batch']:>5} {r['cpu_us_user']:>8.2f} "
              f"{r['cpu_us_sys']:>8.2f} {r['cpu_us_total']:>9.2f} {r['iops']:>9.0f} "
              f"{r['ctx_switches_per_io']:>7.3f} {r['ratio_cpu_vs_os']:>6.2f} {r['leaked_exports_per_io']:>7.2f}")
    print(f"reference: one os.getppid() (Python call + syscall entry/exit) costs "
          f"{env['null_syscall_cpu_us']:.3f} us CPU")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    for name, ver in env["versions"].items():
        print(f"{name}: {ver or 'not installed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
