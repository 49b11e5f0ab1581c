#!/usr/bin/env python3
"""virtio-blk without a guest: our vhost-user back-end vs qemu-storage-daemon, driven by a C front-end.

bench/vhu_blk_loadgen.c plays QEMU plus the guest's virtio-blk driver (memfd guest memory, the vhost-user
set-up, one split virtqueue with EVENT_IDX, eventfd kicks and calls), so the back-end is what limits the
numbers, not a TCG guest.  It is compiled on first use into the cache directory.  One run drives, over the same
raw image (warm in the page cache):

    ours          acrnmgr devmodel serve --device blk
    qsd           qemu-storage-daemon, file driver with its default aio (thread pool)
    qsd-io_uring  qemu-storage-daemon, file driver with aio=io_uring
    fio           host fio on the image file itself: the physical limit (psync; io_uring for QD32)

Jobs (each with direct descriptor chains and with one indirect table per request, as Linux builds them):
4k random read QD1 and QD32, 128k sequential read and write QD8.  Every read is checked against a pattern
(each sector holds its LBA and a seed) and every write job is read back and checked, so a back-end cannot be
fast by doing nothing.  Reports IOPS, bandwidth, mean latency, the back-end's CPU time per I/O (utime+stime of
all its threads from /proc/PID/stat) and ours/peer ratios; medians over --repeat runs.  The front-end runs on
CPU 0 and the back-end on CPU 1 (--no-pin to let them float).  Not a test: numbers depend on the machine.

    .venv/bin/python bench/blk_loadgen.py [--seconds 2] [--repeat 1] [--size-mb 512] [--output json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SOURCE = BENCH / "vhu_blk_loadgen.c"
BACKENDS = ("ours", "qsd", "qsd-io_uring")
OPTIONAL_BACKENDS = ("ours-pure",)  # ours with ACRNMGR_PURE_PYTHON=1: the ring code as source, not compiled
PEERS = ("qsd", "qsd-io_uring", "fio")
# name, loadgen rw, block size, queue depth, headline metric
JOBS = [
    ("randread-4k-qd1", "randread", 4096, 1, "iops"),
    ("randread-4k-qd32", "randread", 4096, 32, "iops"),
    ("seqread-128k-qd8", "read", 131072, 8, "bw"),
    ("seqwrite-128k-qd8", "write", 131072, 8, "bw"),
]
# ours / qsd-io_uring targets of issue #13 (indirect descriptors), and never below qsd's default
TARGETS = {"randread-4k-qd32": 0.6, "seqread-128k-qd8": 0.8, "seqwrite-128k-qd8": 0.8}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acrnmgr" / "bench"


def build_loadgen() -> Path:
    """Compile the load generator (cached by the hash of its source); returns the binary's path."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = cache_dir() / f"vhu_blk_loadgen-{digest}"
    if binary.exists():
        return binary
    if not shutil.which("gcc"):
        raise SystemExit("gcc not found (apt-get install gcc)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(SOURCE)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cannot compile {SOURCE}:\n{proc.stderr}")
    tmp.replace(binary)
    return binary


def pinned(argv: list[str], cpu: int | None, nice: int) -> list[str]:
    """argv on CPU `cpu` (None: anywhere), at nice value `nice`."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    return argv if nice == 0 else ["nice", "-n", str(nice)] + argv


def backend_argv(kind: str, image: Path, sock: Path) -> list[str]:
    if kind.startswith("ours"):
        return [str(Path(sys.executable).parent / "acrnmgr"), "devmodel", "serve", "--device", "blk",
                "--image", str(image), "--socket", str(sock), "--log-level", "warning"]
    aio = ",aio=io_uring" if kind == "qsd-io_uring" else ""
    return ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=f,filename={image}{aio}",
            "--export", f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={sock},writable=on"]


class Backend:
    """One back-end process serving its own copy of the image (so each one's writes are its own to verify)."""

    def __init__(self, kind: str, loadgen: Path, work: Path, args: argparse.Namespace) -> None:
        self.kind, self.loadgen, self.args = kind, loadgen, args
        self.image = work / f"{kind}.img"
        self.seed = fill(loadgen, self.image, args.size_mb)
        sock_dir = work / f"{kind}.d"
        sock_dir.mkdir(mode=0o700)
        self.sock = sock_dir / "blk.sock"
        self.log = work / f"{kind}.log"
        with open(self.log, "ab") as log:
            env = {**os.environ, "ACRNMGR_PURE_PYTHON": "1" if kind == "ours-pure" else "0"}  # as ring_code asks
            self.proc = subprocess.Popen(pinned(backend_argv(kind, self.image, self.sock), args.backend_cpu, args.nice),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{kind} did not start (rc {self.proc.poll()}): {self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def refill(self) -> None:
        """A new pattern (and seed) after write jobs changed it; the back-end does not cache data."""
        self.seed = fill(self.loadgen, self.image, self.args.size_mb)

    def run(self, spec: str) -> dict[str, Any]:
        """One loadgen connection running job `spec` (RW:BS:QD:d|i); its JSON result."""
        args = self.args
        argv = [str(self.loadgen), "--socket", str(self.sock), "--size", str(args.size_mb << 20),
                "--seed", str(self.seed), "--seconds", str(args.seconds), "--backend-pid", str(self.proc.pid),
                "--job", spec]
        if args.seg:
            argv += ["--seg", str(args.seg)]
        out = subprocess.run(pinned(argv, args.frontend_cpu, args.nice), capture_output=True, text=True,
                             timeout=60 + args.seconds * 3)
        if out.returncode != 0:
            raise SystemExit(f"[{self.kind}] load generator failed on {spec} (rc {out.returncode}):\n{out.stderr}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ring_code(pure: str) -> str:
    """How `ours` runs its ring code (compiled or source), asked of an interpreter with the server's environment."""
    out = subprocess.run([sys.executable, "-c", "from acrnmgr.devmodel.compiled import data_path; print(data_path())"],
                         env={**os.environ, "ACRNMGR_PURE_PYTHON": pure}, capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or f"unknown ({out.stderr.strip()[-200:]})"


def fill(loadgen: Path, image: Path, size_mb: int) -> int:
    """Write the verification pattern with a fresh seed over the whole image; returns the seed."""
    seed = int.from_bytes(os.urandom(4), "little") | 1
    subprocess.run([str(loadgen), "--fill", str(image), "--size", str(size_mb << 20), "--seed", str(seed)],
                   check=True)
    return seed


def run_fio(image: Path, name: str, rw: str, bs: int, qd: int, args: argparse.Namespace) -> dict[str, Any]:
    """Host fio on an image file: what the page cache gives one CPU (invalidate=0 keeps the file cached)."""
    engine = ["--ioengine=io_uring", f"--iodepth={qd}"] if qd > 8 else ["--ioengine=psync"]
    argv = ["fio", f"--name={name}", f"--filename={image}", f"--rw={rw}", f"--bs={bs}", *engine,
            f"--runtime={max(1, round(args.seconds))}", "--time_based", "--invalidate=0", "--norandommap",
            "--randrepeat=0", "--output-format=json"]
    out = subprocess.run(pinned(argv, args.backend_cpu, args.nice), capture_output=True, text=True,
                         timeout=60 + args.seconds * 2)
    if out.returncode != 0:
        raise SystemExit(f"fio {name} failed:\n{out.stderr}")
    side = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]["write" if rw == "write" else "read"]
    return {"iops": side["iops"], "bw_bytes": side["bw_bytes"], "lat_us": side["lat_ns"]["mean"] / 1e3,
            "cpu_us_per_io": None, "sectors_verified": None}


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("iops", "bw_bytes", "lat_us", "cpu_us_per_io", "frontend_cpu"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    verified = [r["sectors_verified"] for r in runs if r.get("sectors_verified") is not None]
    out["sectors_verified"] = min(verified) if verified else None
    out["runs"] = len(runs)
    return out


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Every back-end runs all the time; the jobs alternate between them, so they share the machine's noise."""
    loadgen = build_loadgen()
    work = Path(tempfile.mkdtemp(prefix="acrnmgr-blkloadgen-", dir=args.dir))
    raw: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    backends: list[Backend] = []
    try:
        os.chmod(work, 0o700)
        for kind in args.backends:
            backends.append(Backend(kind, loadgen, work, args))
        fio_image = work / "fio.img"
        if args.fio:
            fill(loadgen, fio_image, args.size_mb)
        for rep in range(args.repeat):
            if rep:
                for b in backends:
                    b.refill()
            for name, rw, bs, qd, _ in JOBS:  # reads first: a write job changes the pattern
                print(f"[{rep + 1}/{args.repeat}] {name} ...", file=sys.stderr, flush=True)
                for mode in args.modes:
                    for b in backends:
                        raw.setdefault((b.kind, name, mode), []).append(b.run(f"{rw}:{bs}:{qd}:{mode[0]}"))
                if args.fio:
                    r = run_fio(fio_image, name, rw, bs, qd, args)
                    for mode in args.modes:
                        raw.setdefault(("fio", name, mode), []).append(r)
    finally:
        for b in backends:
            b.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    kinds = args.backends + (["fio"] if args.fio else [])
    for name, _rw, _bs, _qd, metric in JOBS:
        key = "iops" if metric == "iops" else "bw_bytes"
        for mode in args.modes:
            row: dict[str, Any] = {"job": name, "descriptors": mode, "metric": key, "results": {}, "ratios": {}}
            for kind in kinds:
                row["results"][kind] = median_result(raw[(kind, name, mode)])
            if "ours" in row["results"]:
                ours = row["results"]["ours"][key]
                for peer in PEERS:
                    if peer in row["results"] and row["results"][peer][key]:
                        row["ratios"][peer] = ours / row["results"][peer][key]
            target = TARGETS.get(name)
            io_uring, default = row["ratios"].get("qsd-io_uring"), row["ratios"].get("qsd")
            row["target"] = target
            row["meets_target"] = (None if io_uring is None or target is None or mode != "indirect"
                                   else io_uring >= target and (default is None or default >= 1.0))
            rows.append(row)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), "nice": args.nice,
            "ours_ring_code": ring_code("0"),
            "load_average": os.getloadavg()[0],
            "frontend_cpu": args.frontend_cpu, "backend_cpu": args.backend_cpu, "seconds": args.seconds,
            "repeat": args.repeat, "size_mb": args.size_mb, "rows": rows}


def fmt_value(r: dict[str, Any] | None, key: str) -> str:
    if r is None or r.get(key) is None:
        return "-"
    v = r[key]
    return f"{v / 1e3:.1f}k" if key == "iops" else f"{v / 1e9:.2f}G"


def print_table(report: dict[str, Any], backends: list[str]) -> None:
    peers = [p for p in PEERS if any(p in r["ratios"] for r in report["rows"])]
    print("virtio-blk over vhost-user, no guest: C front-end (bench/vhu_blk_loadgen.c) -> back-end")
    pin = ("unpinned" if report["frontend_cpu"] is None
           else f"front-end on CPU {report['frontend_cpu']}, back-end on CPU {report['backend_cpu']}")
    pin += f", nice {report.get('nice', 0)}, load average {report.get('load_average', 0):.1f} at the end"
    print(f"{report['date']}; {report['cpus']} CPUs, {pin}; {report['size_mb']} MiB raw image in the page cache; "
          f"{report['seconds']} s per job, median of {report['repeat']}; IOPS or bytes/s, [us latency, "
          f"back-end CPU us/IO]; ours: ring code {report['ours_ring_code']}")
    kinds = backends + (["fio"] if any("fio" in r["results"] for r in report["rows"]) else [])
    head = f"{'job':<18}{'desc':<9}" + "".join(f"{k:>26}" for k in kinds) + "".join(f"{'/' + p:>14}" for p in peers)
    print(head)
    for row in report["rows"]:
        cells = []
        for k in kinds:
            r = row["results"].get(k)
            cpu = "" if r is None or r["cpu_us_per_io"] is None else f" {r['cpu_us_per_io']:.1f}"
            lat = "" if r is None else f" [{r['lat_us']:.0f}{cpu}]"
            cells.append(f"{fmt_value(r, row['metric']) + lat:>26}")
        ratios = "".join(f"{row['ratios'][p]:>13.2f}x" if p in row["ratios"] else f"{'-':>14}" for p in peers)
        verdict = ""
        if row["meets_target"] is not None:
            verdict = f"  target {row['target']}x io_uring, >= 1x qsd: {'ok' if row['meets_target'] else 'MISSED'}"
        print(f"{row['job']:<18}{row['descriptors']:<9}" + "".join(cells) + ratios + verdict)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per job (default 2)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per back-end; medians are reported (default 1)")
    ap.add_argument("--size-mb", type=int, default=512, help="image size in MiB (default 512)")
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help=f"comma-separated subset of {','.join(BACKENDS + OPTIONAL_BACKENDS)} (default: the first "
                         "three; ours-pure is ours with its ring code run from source)")
    ap.add_argument("--descriptors", default="direct,indirect", help="direct, indirect or both (default both)")
    ap.add_argument("--seg", type=int, default=0, help="split each request's data into segments of this many bytes")
    ap.add_argument("--no-fio", dest="fio", action="store_false", help="skip host fio")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin front-end and back-end apart")
    ap.add_argument("--dir", default="/var/tmp", help="where the image lives (default /var/tmp: a disk file)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run front-end, back-ends and fio at this nice value (e.g. -10 on a machine shared with "
                         "other loads, so that the scheduler's share does not decide; root only for < 0)")
    ap.add_argument("--output", choices=("table", "json"), default="table")
    args = ap.parse_args()
    args.backends = [b for b in args.backends.split(",") if b]
    args.modes = [m for m in args.descriptors.split(",") if m]
    if unknown := set(args.backends) - set(BACKENDS + OPTIONAL_BACKENDS):
        ap.error(f"unknown back-end(s): {', '.join(sorted(unknown))}")
    if not args.modes or set(args.modes) - {"direct", "indirect"}:
        ap.error("--descriptors takes direct, indirect or both")
    if args.repeat < 1 or args.seconds <= 0 or args.size_mb < 1:
        ap.error("--repeat, --seconds and --size-mb must be positive")
    if any(b.startswith("qsd") for b in args.backends) and not shutil.which("qemu-storage-daemon"):
        raise SystemExit("qemu-storage-daemon not found (apt-get install qemu-system-x86)")
    if args.fio and not shutil.which("fio"):
        raise SystemExit("fio not found (apt-get install fio), or pass --no-fio")
    two = (os.cpu_count() or 1) >= 2 and args.pin and shutil.which("taskset")
    args.frontend_cpu, args.backend_cpu = (0, 1) if two else (None, None)
    report = collect(args)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        print_table(report, args.backends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
