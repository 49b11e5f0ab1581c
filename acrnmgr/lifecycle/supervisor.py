"""The per-VM supervisor: a detached process (own session) that outlives the `up` command.

It starts the helper processes (embedded device models) and then the VM process (acrn-dm or
QEMU), waits on all of them, records every exit into run.json, and when the VM process ends it
stops the helpers, removes sockets and runs the post-stop commands (e.g. deleting taps). While it
lives it holds supervisor.lock, which is how other commands know it is there.

Its children get PR_SET_PDEATHSIG, so a `kill -9` of the supervisor takes them down too instead of
leaving orphans; `down`/`status` then clean up what the supervisor could not.

Run as: python -m acrnmgr.lifecycle.supervisor <state-dir> --ready-fd N
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from acrnmgr.lifecycle.errors import StateError
from acrnmgr.lifecycle.state import (
    LaunchRecord,
    ProcessIdentity,
    ProcessRun,
    ProcessSpec,
    RunEvent,
    RunRecord,
    VmState,
    wait_until,
)

HELPER_SOCKET_TIMEOUT = 30.0
HELPER_STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int):
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def cleanup(state: VmState, launch: LaunchRecord, main_pid: int | None) -> list[str]:
    """Remove the sockets of a stopped VM and run its post-stop commands. Idempotent; used by the
    supervisor and by `down` when the supervisor is gone. Returns problems worth reporting."""
    if state.path("cleaned").exists():
        return []
    problems = []
    for pattern in launch.cleanup:
        if "{pid}" in pattern:
            if main_pid is None:
                continue
            pattern = pattern.replace("{pid}", str(main_pid))
        try:
            os.unlink(pattern)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"cannot remove {pattern}: {exc}")
    for argv in launch.post_stop:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            problems.append(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    state.path("cleaned").touch()
    return problems


class Supervisor:
    def __init__(self, state: VmState, launch: LaunchRecord, ready_fd: int | None):
        self.state = state
        self.ready_fd = ready_fd
        self.launch = launch
        self.children: dict[int, str] = {}  # pid -> process name
        self.pumps: dict[str, threading.Thread] = {}  # process name -> the thread copying its output to its log
        self.run = RunRecord(state="starting", started_at=time.time(), supervisor=ProcessIdentity.of(os.getpid()))
        self.stop_now = False

    # run.json ------------------------------------------------------------------------------
    def update(self, **changes) -> None:
        self.run = replace(self.run, **changes)
        self.state.write_run(self.run)

    def record(self, entry: ProcessRun) -> None:
        self.run = self.run.with_process(entry)
        self.state.write_run(self.run)

    def report_ready(self, message: dict) -> None:
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # `up` went away; nothing to tell
        os.close(self.ready_fd)
        self.ready_fd = None

    # processes -----------------------------------------------------------------------------
    def spawn(self, proc: ProcessSpec) -> subprocess.Popen:
        # The child writes into a pipe and a thread of ours copies it into a log with a size cap, so no
        # process (a device model logging a hostile front-end's every move, say) can fill the disk.
        read_end, write_end = os.pipe()
        try:
            child = subprocess.Popen(
                proc.argv,
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=subprocess.STDOUT,
                close_fds=True,
                preexec_fn=_pdeathsig(signal.SIGTERM),
                env={**os.environ, **proc.env},
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        log = CappedLog(self.state.path(f"{proc.name}.log"), log_cap())
        pump = threading.Thread(target=log.pump, args=(read_end,), name=f"log-{proc.name}", daemon=True)
        pump.start()
        self.pumps[proc.name] = pump
        ident = ProcessIdentity.of(child.pid) or ProcessIdentity(child.pid, -1, [])
        self.children[child.pid] = proc.name
        self.record(ProcessRun(proc.name, proc.role, ident, proc.device))
        return child

    def reap(self, block: bool) -> ProcessRun | None:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == 0:
            return None
        name = self.children.pop(pid, None)
        if name is None:
            return None
        self.flush_log(name)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        started = self.run.process(name)
        assert started is not None  # spawn() recorded every child it started
        entry = replace(started, exit_code=128 + sig if sig else os.WEXITSTATUS(status), signal=sig,
                        exited_at=time.time())
        self.record(entry)
        return entry

    def flush_log(self, name: str) -> None:
        """Let the log pump of a process that exited copy its last words (what `status` shows) first."""
        pump = self.pumps.pop(name, None)
        if pump is not None:
            pump.join(LOG_FLUSH_TIMEOUT)  # a grandchild may still hold the pipe open: do not wait for it

    def stop_children(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + HELPER_STOP_TIMEOUT
        while self.children and time.monotonic() < deadline:
            if self.reap(block=False) is None:
                time.sleep(0.05)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self.children and self.reap(block=True) is not None:
            pass

    def wait_socket(self, child: subprocess.Popen, path: str) -> str | None:
        ok = wait_until(lambda: os.path.exists(path) or child.poll() is not None, HELPER_SOCKET_TIMEOUT)
        if child.returncode is not None:
            name = self.children.pop(child.pid, None)
            if name is not None:
                self.flush_log(name)
            return f"exited with code {child.returncode} before creating {path}"
        return None if ok else f"did not create {path} within {HELPER_SOCKET_TIMEOUT:.0f} s"

    # main flow -----------------------------------------------------------------------------
    def start(self) -> bool:
        self.state.write_run(self.run)
        for proc in self.launch.processes:
            try:
                child = self.spawn(proc)
            except OSError as exc:
                return self.fail(f"cannot start {proc.name} ({proc.argv[0]}): {exc}", proc.name)
            if proc.role == "helper" and proc.wait_socket:
                problem = self.wait_socket(child, proc.wait_socket)
                if problem:
                    return self.fail(f"{proc.name} {problem}", proc.name)
        self.update(state="running")
        self.report_ready({"ok": True, "pid": child.pid})  # the last process is the main one
        return True

    def fail(self, message: str, log_name: str | None) -> bool:
        self.stop_children()
        cleanup(self.state, self.launch, None)
        self.update(state="exited", outcome="failed", error=message, ended_at=time.time())
        tail = self.state.tail(f"{log_name}.log", 15) if log_name else []
        self.report_ready({"ok": False, "error": message, "log": tail})
        return False

    def on_sigterm(self, signum, frame) -> None:
        # `down` of a VM whose control channels are unusable ends here: stop the VM process.
        self.stop_now = True
        entry = self.run.process(self.launch.main.name)
        if entry and not entry.exited:
            try:
                os.kill(entry.identity.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def supervise(self) -> None:
        main_name = self.launch.main.name
        while True:
            entry = self.reap(block=True)
            if entry is None:
                if not self.children:
                    break
                continue
            if entry.name == main_name:
                break
            # A helper died under a running VM: the VM is degraded, keep it running.
            event = RunEvent(time.time(), f"{entry.name} exited", entry.exit_code, entry.signal)
            self.update(state="degraded", events=(*self.run.events, event))
        self.stop_children()
        main = self.run.process(main_name)
        assert main is not None  # spawned (and recorded) before supervise() runs
        requested = self.state.path("stop-requested").exists() or self.stop_now
        clean = main.exit_code == 0
        problems = cleanup(self.state, self.launch, main.identity.pid)
        self.update(outcome="stopped" if (requested or clean) else "crashed", state="exited", ended_at=time.time(),
                    cleanup_problems=tuple(problems))


DEFAULT_LOG_CAP = 8 << 20
LOG_FLUSH_TIMEOUT = 2.0


def log_cap() -> int:
    """Bytes a supervised process's log may hold before it rotates (ACRNMGR_LOG_MAX_BYTES overrides it)."""
    try:
        return max(4096, int(os.environ.get("ACRNMGR_LOG_MAX_BYTES", DEFAULT_LOG_CAP)))
    except ValueError:
        return DEFAULT_LOG_CAP


class CappedLog:
    """An append-only log of at most ``cap`` bytes: when full it becomes ``<name>.1`` (replacing the previous
    one) and a new file starts, so a process's log takes at most twice the cap on disk."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path, self.cap = path, cap
        self.file = open(path, "ab")
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        while data:
            if self.size >= self.cap:
                self.file.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self.file = open(self.path, "ab")
                self.size = 0
            part, data = data[:self.cap - self.size], data[self.cap - self.size:]
            self.file.write(part)
            self.file.flush()
            self.size += len(part)

    def pump(self, fd: int) -> None:
        """Copy what the process writes into the log until it closes its end."""
        try:
            while chunk := os.read(fd, 65536):
                self.write(chunk)
        except OSError:
            pass  # the disk is full or the log went away: the process keeps running
        finally:
            os.close(fd)
            self.file.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acrnmgr-supervisor")
    parser.add_argument("state_dir")
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir)
    state = VmState(state_dir.name, state_dir.parent)
    lock_fd = os.open(state.path("supervisor.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        if args.ready_fd is not None:
            os.write(args.ready_fd, b'{"ok": false, "error": "another supervisor is running for this VM"}\n')
        return 1
    try:
        launch = state.read_launch()
    except StateError as exc:
        launch, problem = None, str(exc)
    else:
        problem = f"{state.path('launch.json')} is missing"
    if launch is None:
        if args.ready_fd is not None:
            os.write(args.ready_fd, json.dumps({"ok": False, "error": problem}).encode() + b"\n")
        return 1
    sup = Supervisor(state, launch, args.ready_fd)
    signal.signal(signal.SIGTERM, sup.on_sigterm)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sup.start():
        sup.supervise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
