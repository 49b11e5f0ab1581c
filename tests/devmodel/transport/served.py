"""`acrnmgr devmodel serve` in a child process, for attacks that would kill the process serving them (SIGBUS)
or that need the server's own fd table and log (/proc/PID/fd, its stderr in a file)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.vhost_user import F_PROTOCOL_FEATURES

from .frontend import Frontend

MODERN = (1 << F.F_VERSION_1) | F_PROTOCOL_FEATURES | (1 << F.F_RING_EVENT_IDX)
ACRNMGR = str(Path(sys.executable).parent / "acrnmgr")


class Served:
    def __init__(self, directory: Path, *args: str, device: str = "rng") -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / f"{device}.sock"
        self.log_path = directory / f"{device}.log"
        self._log = open(self.log_path, "wb")  # a file, not a pipe: a pipe nobody drains would block the server
        self.proc = subprocess.Popen([ACRNMGR, "devmodel", "serve", "--device", device, "--socket", str(self.path),
                                      *args], stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 20
        while not self.path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start (rc {self.proc.poll()}): {self.log()}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fds(self) -> set[str]:
        return set(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def quiet_fds(self, still: float = 0.3, timeout: float = 5.0) -> int:
        """The server's fd count once it has not changed for `still` seconds (the server is idle)."""
        deadline = time.monotonic() + timeout
        n, since = len(self.fds()), time.monotonic()
        while time.monotonic() - since < still and time.monotonic() < deadline:
            time.sleep(0.02)
            m = len(self.fds())
            if m != n:
                n, since = m, time.monotonic()
        return n

    def settle_fds(self, expected: int, timeout: float = 5.0) -> int:
        """The server's fd count once it is back to `expected` (or whatever it is when `timeout` runs out)."""
        deadline = time.monotonic() + timeout
        while True:
            n = len(self.fds())
            if n == expected or time.monotonic() > deadline:
                return n
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def rng_roundtrip(path: Path, n: int = 3, *, timeout: float = 10.0) -> list[tuple[int, int, bytes]]:
    """A well-behaved front-end: handshake, start one ring, get `n` buffers of entropy."""
    fe = Frontend(str(path), timeout=timeout)
    try:
        fe.handshake()
        (q,) = fe.start(MODERN, {0: 16}).values()
        for _ in range(n):
            q.post(ins=[32])
        q.notify()
        return q.wait(n, timeout=timeout)
    finally:
        fe.close()
