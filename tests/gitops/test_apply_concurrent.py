"""Two `acrnmgr apply` processes at once on the same directory and state root: the apply lock
serializes them, so each VM is started exactly once.

Uses the acrn engine with the lifecycle tests' stand-in acrn-dm (tests/lifecycle/standin_acrn_dm.py,
which appends its PID to $STANDIN_STARTS at every start) and a fake host (CPU sysfs, cpuinfo, HSM),
so no guest boots. To make the overlap certain rather than a race the test could lose, the test
itself holds apply.lock while both applies start: each must say it waits and start nothing; once
the lock is released one of them creates every VM and the other finds them all unchanged."""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import textwrap
import time

from tests.lifecycle.conftest import ACRNMGR, Env

WAITING = b"another apply is running; waiting for it to finish"
VMS = ("vm1", "vm2", "vm3")


def _read_until(proc: subprocess.Popen, needle: bytes, timeout: float = 60.0) -> bytes:
    """Read proc's stderr until needle appears (the process must not exit first)."""
    seen = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} on stderr within {timeout:g} s: {seen!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"apply exited ({proc.wait()}) before it waited for the lock: {seen!r}"
            seen += chunk
    return seen


def test_two_concurrent_applies_start_each_vm_once(tmp_path):
    fake = Env(tmp_path)  # the lifecycle tests' fake ACRN host: stand-in acrn-dm, CPU sysfs, cpuinfo, HSM
    host, env = fake.host, fake.env
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "bzImage").write_bytes(b"kernel")
    for n, name in enumerate(VMS, start=1):
        (specs / f"{name}.img").write_bytes(bytes(1 << 20))
        (specs / f"{name}.yaml").write_text(textwrap.dedent(f"""\
            apiVersion: acrnmgr/v1
            kind: VM
            metadata: {{name: {name}}}
            spec:
              cpu: {{affinity: [{n * 2}]}}
              memory: 256M
              boot:
                kernel: {{path: bzImage, cmdline: "console=hvc0"}}
              devices:
                - {{type: virtio-blk, name: root, path: {name}.img}}
            """))
    state = fake.state
    argv = [ACRNMGR, "apply", str(specs), "--engine", "acrn", "--host", str(host), "--wait", "--output", "json"]
    procs: list[subprocess.Popen] = []
    try:
        lock = os.open(state / "apply.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
                     for _ in range(2)]
            early = [_read_until(p, WAITING) for p in procs]
            assert not (tmp_path / "starts").exists()  # neither started a VM while the lock was held
            assert all(p.poll() is None for p in procs)
        finally:
            os.close(lock)  # releases the flock: the two applies now race for it
        results = []
        for p, before in zip(procs, early, strict=True):
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, f"apply -> {p.returncode}\n{out.decode()}\n{(before + err).decode()}"
            results.append({c["name"]: (c["action"], c["result"]) for c in json.loads(out)["changes"]})
        created = {name: ("create", "done") for name in VMS}
        unchanged = {name: ("unchanged", None) for name in VMS}
        assert sorted(results, key=str) == sorted([created, unchanged], key=str), results

        # each VM was started exactly once, and all of them run
        assert len((tmp_path / "starts").read_text().split()) == len(VMS)
        for name in VMS:
            st = subprocess.run([ACRNMGR, "status", name, "--output", "json"], env=env, capture_output=True,
                                text=True, timeout=60)
            assert st.returncode == 0, st.stderr
            assert json.loads(st.stdout)["state"] == "running"
        # and a third apply agrees that everything is in sync
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and WAITING.decode() not in again.stderr
        assert {c["action"] for c in json.loads(again.stdout)["changes"]} == {"unchanged"}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run([ACRNMGR, "down", "--all", "--force", "--timeout", "1"], env=env, capture_output=True)
