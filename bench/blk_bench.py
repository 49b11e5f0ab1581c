#!/usr/bin/env python3
"""virtio-blk throughput: our vhost-user back-end vs qemu-storage-daemon's vhost-user-blk export.

Same guest (tests/guest: Debian kernel + busybox/fio initramfs), same QEMU command line, same raw image,
same fio jobs, run once against each back-end:

    randread-4k-qd1    4 KiB random reads, iodepth 1      (latency-bound: IOPS)
    randread-4k-qd32   4 KiB random reads, iodepth 32     (IOPS)
    seqread-128k       128 KiB sequential reads, iodepth 8  (bandwidth)
    seqwrite-128k      128 KiB sequential writes, iodepth 8 (bandwidth)

Prints IOPS, bandwidth, the back-end's CPU time per I/O (utime+stime of all its threads while a job runs) and
the ratio ours/peer, with the targets (>= 50 % of the peer's IOPS at QD32,
>= 80 % of its bandwidth for 128k sequential). Not a test: numbers depend on the machine.

    .venv/bin/python bench/blk_bench.py [--runtime 10] [--size-mb 512] [--smp N] [--repeat N] [--json]

The guest gets one vCPU fewer than the host has CPUs by default: a back-end starved of CPU by the guest's
vCPU threads measures the scheduler, not the back-end. With --repeat the back-ends alternate and each job
keeps its best run, which evens out the noise of TCG hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.guest import Guest, build_guest_image, pick_accel  # noqa: E402

RAMP_S = 1  # fio --ramp_time: I/O the back-end serves but fio does not count

JOBS = [
    # name, fio rw, block size, iodepth, metric
    ("randread-4k-qd1", "randread", "4k", 1, "iops"),
    ("randread-4k-qd32", "randread", "4k", 32, "iops"),
    ("seqread-128k", "read", "128k", 8, "bw"),
    ("seqwrite-128k", "write", "128k", 8, "bw"),
]
TARGETS = {"randread-4k-qd32": 0.50, "seqread-128k": 0.80, "seqwrite-128k": 0.80}


def guest_script(runtime: int) -> str:
    lines = []
    for name, rw, bs, qd, _ in JOBS:
        # The host samples the back-end's CPU time when it sees START-/STOP- on the console.
        lines.append(f"echo START-{name}")
        lines.append(
            f"fio --name={name} --filename=/dev/vda --ioengine=libaio --direct=1 --rw={rw} --bs={bs} "
            f"--iodepth={qd} --runtime={runtime} --time_based --ramp_time={RAMP_S} --norandommap --randrepeat=0 "
            f"--output-format=json >/tmp/{name}.json 2>/tmp/{name}.err || {{ cat /tmp/{name}.err; exit 3; }}")
        lines.append(f"echo STOP-{name}")
        lines.append(f"echo BEGIN-{name}; cat /tmp/{name}.json; echo END-{name}")
    return "\n".join(lines) + "\n"


def parse(output: str) -> dict[str, dict[str, float]]:
    results = {}
    for name, rw, _bs, _qd, _ in JOBS:
        m = re.search(rf"^BEGIN-{name}\n(.*?)^END-{name}$", output, re.M | re.S)
        if not m:
            raise SystemExit(f"no fio result for {name} in the guest output:\n{output[-3000:]}")
        job = json.loads(m.group(1))["jobs"][0]
        side = job["write" if "write" in rw else "read"]
        results[name] = {"iops": side["iops"], "bw_mib_s": side["bw_bytes"] / (1 << 20),
                         "lat_us": side["lat_ns"]["mean"] / 1000}
    return results


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` and all its threads (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_socket(path: Path, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start (rc {proc.poll()})")
        time.sleep(0.05)


def run_backend(kind: str, image: Path, work: Path, args) -> dict[str, dict[str, float]]:
    sock_dir = work / f"{kind}-run"
    shutil.rmtree(sock_dir, ignore_errors=True)
    sock = sock_dir / "blk.sock"
    if kind == "ours":
        argv = [str(Path(sys.executable).parent / "acrnmgr"), "devmodel", "serve", "--device", "blk",
                "--image", str(image), "--socket", str(sock), "--log-level", "warning"]
    else:
        sock_dir.mkdir(mode=0o700)
        argv = ["qemu-storage-daemon",
                "--blockdev", f"driver=file,node-name=f,filename={image}",
                "--export", f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={sock},writable=on"]
    log = open(work / f"{kind}.log", "ab")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_for_socket(sock, proc, kind)
        qemu_args = ["-chardev", f"socket,id=vu0,path={sock}",
                     "-device", "vhost-user-blk-pci,chardev=vu0,num-queues=1,disable-legacy=on"]
        print(f"[{kind}] running {len(JOBS)} fio jobs x {args.runtime}s ...", file=sys.stderr, flush=True)
        cpu: dict[str, float] = {}
        with Guest(guest_script(args.runtime), qemu_args, memory_mb=1024, smp=args.smp, qmp=False, fio=True) as guest:
            for name, *_ in JOBS:
                guest.wait_for(f"START-{name}", timeout=300)
                before = cpu_seconds(proc.pid)
                guest.wait_for(f"STOP-{name}", timeout=args.runtime + RAMP_S + 60)
                cpu[name] = cpu_seconds(proc.pid) - before
            result = guest.wait(60)
        if result.rc != 0:
            raise SystemExit(f"[{kind}] guest failed (rc {result.rc}):\n{result.output[-3000:]}")
        results = parse(result.output)
        for name, r in results.items():
            r["cpu_us_per_io"] = cpu[name] * 1e6 / (r["iops"] * (args.runtime + RAMP_S)) if r["iops"] else 0.0
        return results
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", type=int, default=10, help="seconds per fio job (default 10)")
    ap.add_argument("--size-mb", type=int, default=512, help="image size in MiB (default 512)")
    ap.add_argument("--smp", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="guest vCPUs (default: host CPUs - 1)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per back-end, best kept (default 1)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if not shutil.which("qemu-storage-daemon"):
        raise SystemExit("qemu-storage-daemon not found (apt-get install qemu-system-x86 / qemu-utils)")

    image_info = build_guest_image()
    accel = pick_accel(image_info)
    work = Path(tempfile.mkdtemp(prefix="acrnmgr-blkbench-"))
    try:
        os.chmod(work, 0o700)
        image = work / "disk.img"
        with open(image, "wb") as f:  # real data, so neither side reads holes
            chunk = os.urandom(1 << 20)
            for _ in range(args.size_mb):
                f.write(chunk)
        results: dict[str, dict[str, dict[str, float]]] = {"ours": {}, "peer": {}}
        for _ in range(max(1, args.repeat)):
            for kind in ("ours", "peer"):
                for name, value in run_backend(kind, image, work, args).items():
                    best = results[kind].get(name)
                    if best is None or value["iops"] > best["iops"]:
                        results[kind][name] = value
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for name, *_rest, metric in JOBS:
        ours, peer = results["ours"][name], results["peer"][name]
        key = "iops" if metric == "iops" else "bw_mib_s"
        ratio = ours[key] / peer[key] if peer[key] else float("nan")
        target = TARGETS.get(name)
        rows.append({"job": name, "metric": key, "ours": ours, "peer": peer, "ratio": ratio, "target": target,
                     "meets_target": None if target is None else ratio >= target})
    if args.json:
        print(json.dumps({"accel": accel, "smp": args.smp, "runtime_s": args.runtime, "rows": rows}, indent=2))
        return 0
    print("virtio-blk over vhost-user: acrnmgr devmodel (ours) vs qemu-storage-daemon (peer)")
    print(f"guest: {args.smp} vCPU, accel {accel}; image {args.size_mb} MiB raw; fio libaio direct=1, "
          f"{args.runtime}s/job, best of {max(1, args.repeat)}")
    print(f"{'job':<18}{'ours IOPS':>11}{'ours MiB/s':>12}{'us CPU/IO':>10}{'peer IOPS':>11}{'peer MiB/s':>12}"
          f"{'us CPU/IO':>10}{'ours/peer':>11}  target")
    for r in rows:
        o, p = r["ours"], r["peer"]
        tgt = "" if r["target"] is None else f">= {r['target']:.0%} {'ok' if r['meets_target'] else 'MISSED'}"
        print(f"{r['job']:<18}{o['iops']:>11.0f}{o['bw_mib_s']:>12.1f}{o['cpu_us_per_io']:>10.1f}{p['iops']:>11.0f}"
              f"{p['bw_mib_s']:>12.1f}{p['cpu_us_per_io']:>10.1f}{r['ratio']:>10.0%}   {tgt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
