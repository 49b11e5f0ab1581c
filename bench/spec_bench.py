#!/usr/bin/env python3
"""Validate + plan + render 1,000 VM specs (generated variants of the examples) and print
specs/s; then the CLI's cold start (`acrnmgr --help`, and `acrnmgr render` of an example) next to
`python -c pass`.

Targets: > 500 specs/s on one core, < 0.25 s cold start for --help, < 0.5 s for a render.
Usage: .venv/bin/python bench/spec_bench.py [--count N] [--runs R]"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from acrnmgr.host import HostProfile  # noqa: E402
from acrnmgr.render.acrndm import compile_spec  # noqa: E402
from acrnmgr.render.script import render_script  # noqa: E402
from acrnmgr.spec.validation import load_spec_text  # noqa: E402

EXAMPLES = ROOT / "examples"
SOURCES = ["linux-vm", "windows-gpu", "rtvm", "ivshmem-vsock"]


def variants(count: int) -> list[tuple[str, str]]:
    """(filename, YAML text) pairs: the examples with names, memory, CPUs, MACs and taps varied."""
    bases = [yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()) for name in SOURCES]
    out = []
    for i in range(count):
        doc = copy.deepcopy(bases[i % len(bases)])
        doc["metadata"]["name"] = f"vm{i}"
        spec = doc["spec"]
        spec["memory"] = f"{512 + 64 * (i % 16)}M"
        spec["cpu"]["affinity"] = [2 * (1 + i % 7)]
        for n, device in enumerate(spec.get("devices", [])):
            if device["type"] == "virtio-net":
                device["tap"] = f"tap{i}_{n}"
                if "mac" in device:
                    device["mac"] = f"00:16:3e:{i >> 8 & 0xff:02x}:{i & 0xff:02x}:{n:02x}"
            if device["type"] == "vhost-vsock":
                device["cid"] = 3 + i
        out.append((f"bench-{i}.yaml", yaml.safe_dump(doc, sort_keys=False)))
    return out


def bench_specs(count: int, host: HostProfile) -> float:
    docs = variants(count)
    start = time.perf_counter()
    for filename, text in docs:
        spec = load_spec_text(text, filename, host=host, base_dir=EXAMPLES)
        compiled = compile_spec(spec, host)
        assert compiled.ok, compiled.errors
        render_script(compiled)
    return count / (time.perf_counter() - start)


def cold_start(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    host = HostProfile.from_file(EXAMPLES / "hosts" / "acrn-service-vm.yaml")
    bench_specs(50, host)  # warm imports and caches
    rate = bench_specs(args.count, host)
    print(f"specs: {args.count} validated+compiled+rendered, {rate:.0f} specs/s on one core "
          f"(target > 500): {'OK' if rate > 500 else 'BELOW TARGET'}")

    acrnmgr = str(Path(sys.executable).with_name("acrnmgr"))
    cli = cold_start([acrnmgr, "--help"], args.runs)
    python = cold_start([sys.executable, "-c", "pass"], args.runs)
    print(f"cold start: acrnmgr --help {cli * 1000:.0f} ms, python -c pass {python * 1000:.0f} ms, "
          f"ratio {cli / python:.1f}x (target < 250 ms): {'OK' if cli < 0.25 else 'BELOW TARGET'}")
    render = cold_start([acrnmgr, "render", str(EXAMPLES / "linux-vm.yaml"), "--engine", "acrn", "--host",
                         str(EXAMPLES / "hosts" / "acrn-service-vm.yaml"), "--no-check-paths"], args.runs)
    print(f"cold start: acrnmgr render {render * 1000:.0f} ms, python -c pass {python * 1000:.0f} ms, "
          f"ratio {render / python:.1f}x (target < 500 ms): {'OK' if render < 0.5 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
