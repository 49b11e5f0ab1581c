"""Issue 11: a hostile front-end must not crash, wedge, flood or leak the device model.  Each test stands for
a class of input; the server runs as `acrnmgr devmodel serve` in a child process so that a crash (SIGBUS) is
seen as a dead process, not as a dead test run."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from acrnmgr.devmodel.inflight import queue_region_size
from acrnmgr.devmodel.vhost_user import INFLIGHT, U64, Request

from .frontend import Frontend, FrontendError
from .served import MODERN, Served, rng_roundtrip


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path / "run")
    yield s
    s.stop()



def _memfd(size: int, seals: int = 0) -> int:
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


# ------------------------------------------------------------------------------------------------ SIGBUS

def test_guest_memory_in_an_unsealed_memfd_that_shrinks_does_not_kill_the_server(served):
    """Map guest RAM, ftruncate the memfd to 0, kick: touching the mapping would raise SIGBUS.  An unsealed
    memfd is refused at SET_MEM_TABLE with a clear log line; the server lives and serves the next front-end."""
    fe = Frontend(served.path, seal=False)
    try:
        fe.handshake()
        try:
            (q,) = fe.start(MODERN, {0: 16}).values()
        except FrontendError:
            pass  # refused: what we want
        else:
            q.post(ins=[32])
            os.ftruncate(fe.ram.fd, 0)
            os.eventfd_write(q.kick, 1)
            time.sleep(0.5)
    finally:
        fe.close()
    assert served.alive(), f"server died with rc {served.proc.returncode}"
    assert "F_SEAL_SHRINK" in served.log()
    assert len(rng_roundtrip(served.path)) == 3


@pytest.mark.parametrize("kind", ["sealed-but-too-small", "dev-zero", "pipe"])
def test_guest_memory_fds_that_cannot_back_the_region_are_refused(served, kind):
    """The class: every fd whose file is smaller than the region it claims to back (or is no memory file at
    all) is refused before it is mapped."""
    if kind == "sealed-but-too-small":
        fd = _memfd(4096, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    elif kind == "dev-zero":
        fd = os.open("/dev/zero", os.O_RDWR | os.O_CLOEXEC)
    else:
        r, fd = os.pipe()
        os.close(r)
    fe = Frontend(served.path)
    try:
        fe.handshake()
        fe.send(Request.SET_FEATURES, U64.pack(MODERN))
        fe.ram.fd, real = fd, fe.ram.fd
        with pytest.raises(FrontendError, match="refused"):
            fe.set_mem_table()
        fe.ram.fd = real
        # The connection goes on: a proper table is accepted afterwards.
        fe.set_mem_table()
    finally:
        os.close(fd)
        fe.close()
    assert served.alive()
    assert len(rng_roundtrip(served.path)) == 3


def test_an_unsealed_inflight_memfd_that_shrinks_does_not_kill_the_server(served):
    size = queue_region_size(16)
    size = (size + 4095) // 4096 * 4096
    fd = _memfd(size)
    fe = Frontend(served.path)
    try:
        fe.handshake()
        try:
            fe.send(Request.SET_INFLIGHT_FD, INFLIGHT.pack(size, 0, 1, 16), fds=[fd])
        except FrontendError:
            pass  # refused: what we want
        else:
            os.ftruncate(fd, 0)
            fe.start(MODERN, {0: 16})  # SET_VRING_KICK reads the inflight region
            time.sleep(0.5)
    except (FrontendError, ConnectionError, OSError):
        pass
    finally:
        os.close(fd)
        fe.close()
    assert served.alive(), f"server died with rc {served.proc.returncode}"
    assert "F_SEAL_SHRINK" in served.log()
    assert len(rng_roundtrip(served.path)) == 3


def test_our_own_inflight_buffer_is_sealed_and_accepted_back(served):
    """GET_INFLIGHT_FD hands out a sealed memfd, so a front-end that gives it back after a restart is served."""
    fe = Frontend(served.path)
    try:
        fe.handshake()
        fd, size, _ = fe.get_inflight(1, 16)
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        (q,) = fe.start(MODERN, {0: 16}, inflight=(fd, size)).values()
        q.post(ins=[32])
        q.notify()
        assert len(q.wait(1)) == 1
        os.close(fd)
    finally:
        fe.close()
