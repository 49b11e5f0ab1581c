"""E2E fixtures: our `acrnmgr devmodel serve` as a real process, fronted by QEMU with a real Linux guest."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guest import GuestBuildError, build_guest_image

ROOT = Path(__file__).resolve().parents[3]


class Backend:
    """`acrnmgr devmodel serve ...` as a child process; restartable (same socket) to test reconnection."""

    def __init__(self, tmp: Path, device: str, *args: str, launcher: list[str] | None = None,
                 log_name: str | None = None) -> None:
        """`launcher` ([script, its args...]) runs a test wrapper around the serve command instead of the CLI."""
        sock_dir = tmp / "vhost"
        self.socket = sock_dir / f"{device}.sock"
        serve = ["--device", device, "--socket", str(self.socket), *args]
        if launcher:
            self.argv = [sys.executable, *launcher, *serve]
        else:
            self.argv = [str(Path(sys.executable).parent / "acrnmgr"), "devmodel", "serve", *serve]
        self.log_path = tmp / (log_name or f"{device}-backend.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Backend:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"backend did not start:\n{self.log}")
            time.sleep(0.02)
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        """SIGTERM; returns the exit status (0 = clean stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture(scope="session")
def guest_image():
    try:
        return build_guest_image()
    except GuestBuildError as exc:
        pytest.fail(f"cannot build the test guest: {exc}")


@pytest.fixture
def backend(tmp_path):
    started: list[Backend] = []

    def make(device: str, *args: str, **kwargs) -> Backend:
        b = Backend(tmp_path, device, *args, **kwargs)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        if b.proc is not None and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()


def chardev(b: Backend, ident: str = "vu0", reconnect: bool = False) -> list[str]:
    opts = f"socket,id={ident},path={b.socket}" + (",reconnect=1" if reconnect else "")
    return ["-chardev", opts]
