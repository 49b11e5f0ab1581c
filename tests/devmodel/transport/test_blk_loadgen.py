"""bench/vhu_blk_loadgen.c, the guest-free front-end of bench/blk_loadgen.py: it must drive our back-end and
qemu-storage-daemon alike, and its data check must catch a back-end that reads or writes nothing.  Correctness
only: tiny runs, no timing."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from acrnmgr.devmodel.blk import BlkDevice
from acrnmgr.devmodel.server import POLL_MAX, VhostUserServer

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "bench" / "blk_loadgen.py"
SIZE = 8 << 20


def load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("blk_loadgen", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loadgen() -> Path:
    assert shutil.which("gcc"), "gcc is needed (scripts/setup.sh installs it)"
    return Path(load_bench().build_loadgen())


def test_bench_drives_ours_and_qsd_with_verified_data(tmp_path: Path) -> None:
    assert shutil.which("qemu-storage-daemon"), "qemu-storage-daemon is needed (scripts/setup.sh installs it)"
    out = subprocess.run([sys.executable, str(BENCH), "--seconds", "0.1", "--size-mb", "8", "--backends", "ours,qsd",
                          "--no-fio", "--no-pin", "--dir", str(tmp_path), "--output", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert len(report["rows"]) == 8  # 4 jobs x direct/indirect
    for row in report["rows"]:
        for kind in ("ours", "qsd"):
            r = row["results"][kind]
            assert r["iops"] > 0 and r["sectors_verified"] > 0, (row["job"], row["descriptors"], kind, r)
        assert row["ratios"]["qsd"] > 0


def lazy(kind: str):  # type: ignore[no-untyped-def]
    """A BlkDevice that answers its reads ("reads") or writes ("writes") OK without doing them: read buffers keep
    whatever the front-end left there.  Its handler is replaced on the instance (BlkDevice is compiled; an
    interpreted subclass could not be instantiated)."""
    skipped = b"\0\0\0\0" if kind == "reads" else b"\1\0\0\0"  # T_IN / T_OUT

    def make(image: str) -> BlkDevice:
        device = BlkDevice(image)
        honest = device._handle

        def handle(vq, chain):  # type: ignore[no-untyped-def]
            if bytes(chain.readable[0][:4]) == skipped:
                chain.writable[-1][-1] = 0
                return chain.writable_len if kind == "reads" else 1
            return honest(vq, chain)

        device._handle = handle  # type: ignore[method-assign]
        return device
    make.__name__ = f"lazy_{kind}"
    return make


LazyReads, LazyWrites = lazy("reads"), lazy("writes")


@pytest.fixture
def image(tmp_path: Path, loadgen: Path) -> Path:
    path = tmp_path / "disk.img"
    subprocess.run([str(loadgen), "--fill", str(path), "--size", str(SIZE), "--seed", "7"], check=True)
    return path


@contextlib.contextmanager
def serve(device: BlkDevice, sock: Path, poll_max: float = POLL_MAX) -> Iterator[VhostUserServer]:
    server = VhostUserServer(device, sock, poll_max=poll_max)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(10)
        device.close()


def run_job(loadgen: Path, sock: Path, job: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(loadgen), "--socket", str(sock), "--size", str(SIZE), "--seed", "7",
                           "--seconds", "0.1", "--job", job], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("job", ["randread:4096:4:d", "read:131072:2:i", "write:65536:4:i"])
def test_honest_backend_passes(tmp_path: Path, loadgen: Path, image: Path, job: str) -> None:
    sock = tmp_path / "s" / "blk.sock"
    with serve(BlkDevice(str(image)), sock):
        out = run_job(loadgen, sock, job)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["sectors_verified"] > 0


@pytest.mark.parametrize(("device", "job"), [(LazyReads, "randread:4096:4:i"), (LazyReads, "read:131072:2:d"),
                                             (LazyWrites, "write:131072:2:i")])
def test_backend_that_does_nothing_is_caught(tmp_path: Path, loadgen: Path, image: Path,
                                            device: Callable[[str], BlkDevice], job: str) -> None:
    sock = tmp_path / "s" / "blk.sock"
    with serve(device(str(image)), sock):
        out = run_job(loadgen, sock, job)
        assert out.returncode != 0 and "wrong data" in out.stderr, (out.returncode, out.stderr)


@pytest.mark.parametrize("poll_max", [0.0, 0.01])
def test_polling_takes_the_next_request_without_sleeping(tmp_path: Path, loadgen: Path, image: Path,
                                                         poll_max: float) -> None:
    """With a poll window the server finds events polling, without one it never polls; data verified either way.
    Not one polled round per request: a request that arrives before the device re-enables notifications is taken
    without going back to the loop at all, so a 0.1 s run waits from a few dozen to hundreds of times (the precise
    rule is test_server's test_the_loop_polls_within_its_window_and_sleeps_without_one)."""
    sock = tmp_path / "s" / "blk.sock"
    with serve(BlkDevice(str(image)), sock, poll_max=poll_max) as server:
        out = run_job(loadgen, sock, "randread:4096:1:i")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["sectors_verified"] > 0
        if poll_max:
            assert server.polled_rounds > 0
        else:
            assert server.polled_rounds == 0
