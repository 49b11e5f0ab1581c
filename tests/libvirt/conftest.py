"""`system_libvirt`: a libvirtd answering on qemu:///system for the whole session.

A libvirtd that already answers (systemd on a CI box) is used as it is. Otherwise this fixture starts
one itself, in the foreground as our own child (this machine may have no systemd: no socket
activation, so libvirtd listens on /run/libvirt/libvirt-sock by itself). The QEMU driver sends the
guests' stdio and its own messages through virtlogd, which a privileged libvirtd does not spawn on
demand, so virtlogd is started too when its socket does not answer. Only the processes started here
are stopped at the end. The test is skipped only when libvirtd is not installed; a libvirtd that is
installed but does not come up is a failure, with its log."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

URI = "qemu:///system"
VIRTLOGD_SOCKET = "/run/libvirt/virtlogd-sock"


def _libvirt_answers() -> bool:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # a refused connection is expected here
    try:
        libvirt.open(URI).close()
        return True
    except libvirt.libvirtError:
        return False


def _socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until(ready, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer within {timeout:g} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def system_libvirt(tmp_path_factory):
    """The URI qemu:///system, answering."""
    if _libvirt_answers():
        yield URI
        return
    libvirtd = shutil.which("libvirtd") or shutil.which("libvirtd", path="/usr/sbin:/sbin")
    if libvirtd is None:
        pytest.skip("libvirtd is not installed (scripts/setup.sh installs libvirt-daemon-system)")
    virtlogd = shutil.which("virtlogd") or shutil.which("virtlogd", path="/usr/sbin:/sbin")
    folder = tmp_path_factory.mktemp("libvirtd")
    started: list[subprocess.Popen] = []
    try:
        if not _socket_answers(VIRTLOGD_SOCKET):
            if virtlogd is None:
                pytest.fail("libvirtd is installed but virtlogd is not; the QEMU driver needs it")
            log = folder / "virtlogd.log"
            started.append(_start([virtlogd, "--pid-file", str(folder / "virtlogd.pid")], log))
            _wait_until(lambda: _socket_answers(VIRTLOGD_SOCKET), started[-1], "virtlogd", log)
        log = folder / "libvirtd.log"
        started.append(_start([libvirtd, "--pid-file", str(folder / "libvirtd.pid")], log))
        _wait_until(_libvirt_answers, started[-1], "libvirtd", log)
        yield URI
    finally:
        for proc in reversed(started):
            _stop(proc)
