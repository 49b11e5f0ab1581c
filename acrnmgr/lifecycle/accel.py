"""Whether QEMU can really use KVM on this machine.

An openable /dev/kvm is not enough: under some nested hypervisors QEMU cannot run a vCPU with
`-cpu host` (it aborts on an MSR write when the vCPU first enters the guest), or a guest hangs.
The probe starts QEMU with KVM and `-cpu host` the way the qemu engine does, lets the vCPU run the
firmware for a moment, and calls KVM usable if QEMU is still alive. The verdict is cached in the
state root, which lives on a tmpfs and so is per boot."""

from __future__ import annotations

import dataclasses
import os
import select
import subprocess
import time
from pathlib import Path

from acrnmgr.lifecycle.state import write_atomic

PROBE_TIMEOUT = 10.0
SETTLE = 1.0  # seconds the vCPU must survive after QEMU is up
CACHE_NAME = "kvm-probe"


def probe_argv(qemu: str) -> list[str]:
    return [qemu, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-nodefaults",
            "-display", "none", "-monitor", "none", "-serial", "none", "-qmp", "stdio"]


def probe(qemu: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Run the probe; (usable, reason)."""
    try:
        proc = subprocess.Popen(probe_argv(qemu), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as e:
        return False, f"cannot run {qemu}: {e.strerror or e}"
    try:
        greeting = _read_line(proc, timeout)
        up = greeting is not None and b'"QMP"' in greeting
        try:
            status = proc.wait(SETTLE if up else 0.5)
        except subprocess.TimeoutExpired:
            if up:
                return True, "QEMU ran a KVM vCPU with -cpu host"
            status = None
        proc.kill()
        stderr = proc.communicate(timeout=5)[1].decode(errors="replace").strip().splitlines()
        if stderr:
            detail = stderr[0]
        elif status is not None:
            detail = f"it exited with status {status}"
        else:
            detail = f"no QMP greeting within {timeout:g} s"
        return False, f"QEMU cannot run a KVM vCPU with -cpu host: {detail}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:  # all three are pipes
                stream.close()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes | None:
    assert proc.stdout is not None  # started with stdout=PIPE
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    return data


def kvm_usable(qemu: str, cache_dir: Path) -> tuple[bool, str]:
    """The probe's verdict, cached in `cache_dir` (one probe per boot of the machine)."""
    cache = cache_dir / CACHE_NAME
    try:
        verdict, _, reason = cache.read_text().partition("\n")
        if verdict in ("usable", "unusable"):
            return verdict == "usable", reason.strip()
    except OSError:
        pass
    usable, reason = probe(qemu)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, f"{'usable' if usable else 'unusable'}\n{reason}\n")
    except OSError:
        pass  # an uncached verdict is still right; the next run probes again
    return usable, reason


def with_usable_kvm(host, cache_dir: Path):
    """`host` unchanged when it has no KVM or KVM works; else a copy with kvm=False and the warning to show."""
    if not (host.kvm and host.qemu):
        return host, None
    usable, reason = kvm_usable(host.qemu, cache_dir)
    if usable:
        return host, None
    return dataclasses.replace(host, kvm=False), f"KVM is not usable here ({reason}); running under TCG"
