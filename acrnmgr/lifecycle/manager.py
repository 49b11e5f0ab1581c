"""The supervised engines (acrn, qemu, and the device models of a libvirt domain): up / down /
status over the state folder and the supervisor. An engine subclasses SupervisedEngine and provides
plan, prepare, query and the stop actions."""

from __future__ import annotations

import builtins
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from acrnmgr.host import HostProfile
from acrnmgr.lifecycle.engine import Console, LaunchPlan, Progress, Running, StopAction, argv_lines, quiet
from acrnmgr.lifecycle.errors import LifecycleError, StateError
from acrnmgr.lifecycle.state import LaunchRecord, VmState, all_vms, wait_until
from acrnmgr.lifecycle.supervisor import cleanup
from acrnmgr.model import VmSpec

FORCE_WAIT = 10.0  # seconds after each forced stop action before escalating
READY_TIMEOUT = 60.0
STARTUP_WINDOW = float(os.environ.get("ACRNMGR_STARTUP_WINDOW", "1.5"))  # seconds a new VM must stay up
ACTIVE_RUN_STATES = ("running", "degraded", "starting")


def load(state: VmState) -> Running | None:
    """The records of the VM in `state`, None when it has never been launched."""
    launch = state.read_launch()
    return None if launch is None else Running(state, launch, state.read_run())


def is_active(vm: Running) -> bool:
    """Something of this VM may still be running: its supervisor, or (supervisor killed) its
    processes."""
    if vm.state.supervisor_alive():
        return True
    return vm.run is not None and any(p.alive() for p in vm.run.processes)


def describe_exit(exit_code: int | None, sig: int | None) -> str:
    """How a process ended, for people."""
    if sig is not None:
        try:
            return f"killed by {signal.Signals(sig).name} (signal {sig})"
        except ValueError:
            return f"killed by signal {sig}"
    if exit_code is not None:
        return f"exit code {exit_code}"
    return "exit status unknown: no one saw it exit"


def _unknown(name: str) -> LifecycleError:
    return LifecycleError(f"no VM named {name} (known: {', '.join(all_vms()) or 'none'})")


class SupervisedEngine:
    """An engine whose VM processes the lifecycle supervisor runs (see acrnmgr.lifecycle.engine)."""

    name = "base"
    spec_host_checks = True

    def __init__(self) -> None:
        self.options: dict = {}

    # what each supervised engine provides ----------------------------------------------------
    def plan(self, vm: VmSpec, host: HostProfile, state: VmState) -> LaunchPlan:
        raise NotImplementedError

    def prepare(self, vm: VmSpec, host: HostProfile, plan: LaunchPlan, progress: Progress) -> None:
        """Set up the host (taps, CPUs...). May append post_stop commands to `plan`."""

    def query(self, vm: Running) -> str | None:
        """The VM's state according to its control channel ("running", ...), None if unreachable."""
        raise NotImplementedError

    def graceful_actions(self, vm: Running) -> list[StopAction]:
        """Tried in order until one applies; then `down` waits up to --timeout."""
        raise NotImplementedError

    def force_actions(self, vm: Running) -> list[StopAction]:
        """Each applicable one is followed by a short wait; SIGKILL comes after all of them."""
        raise NotImplementedError

    # records -----------------------------------------------------------------------------------
    def _launched(self, name: str) -> Running:
        vm = load(VmState(name))
        if vm is None:
            raise _unknown(name)
        if vm.launch.engine != self.name:
            raise LifecycleError(f"{name} runs on the {vm.launch.engine} engine, not on {self.name}")
        return vm

    def list(self) -> list[str]:
        names = []
        for name in all_vms():
            try:
                launch = VmState(name).read_launch()
            except StateError:
                continue  # acrnmgr.lifecycle.engine.known_vms reports it
            if launch is not None and launch.engine == self.name:
                names.append(name)
        return names

    def active(self, name: str) -> bool:
        vm = load(VmState(name))
        return vm is not None and is_active(vm)

    def launch_lines(self, name: str) -> builtins.list[str]:
        return argv_lines(self._launched(name).launch.main.argv)

    def planned_lines(self, vm: VmSpec, host: HostProfile) -> builtins.list[str]:
        return argv_lines(self.plan(vm, host, VmState(vm.name)).main.argv)

    def log_files(self, name: str) -> builtins.list[Path]:
        vm = self._launched(name)
        names = ["console.log"] + [f"{p.name}.log" for p in reversed(vm.launch.processes)] + ["supervisor.log"]
        return [vm.state.path(n) for n in names if vm.state.path(n).exists()]

    def console(self, name: str, port: str | None = None) -> Console:
        vm = self._launched(name)
        if not vm.state.supervisor_alive():
            raise LifecycleError(f"{name} is not running")
        consoles = [c for c in vm.info.get("consoles", []) if c.get("path")]
        if port is not None:
            chosen = next((c for c in consoles if c["name"] == port), None)
            if chosen is None:
                raise LifecycleError(f"{name} has no console port {port} acrnmgr can attach to (it has: "
                                     f"{', '.join(c['name'] for c in consoles) or 'none'})")
            return Console(chosen["name"], chosen["kind"], chosen["path"])
        target = next((c for c in consoles if c["kind"] == "socket"), None) or next(
            (c for c in consoles if c["kind"] in ("pty", "tty")), None)
        if target is None:
            raise LifecycleError(f"{name} has no console acrnmgr can attach to "
                                 "(give it a stdio, socket or pty console)")
        return Console(target["name"], target["kind"], target["path"])

    # status ------------------------------------------------------------------------------------
    def status(self, name: str) -> dict:
        vm = self._launched(name)
        state, launch, run = vm.state, vm.launch, vm.run
        supervised = state.supervisor_alive()
        procs = {}
        for p in run.processes if run else ():
            procs[p.name] = {"pid": p.identity.pid, "role": p.role, "device": p.device, "alive": p.alive(),
                             "exit_code": p.exit_code, "signal": p.signal}
        main = procs.get(launch.main.name, {})
        result = {
            "name": name,
            "engine": launch.engine,
            "spec": launch.spec_path,
            "spec_hash": launch.spec_hash,
            "state_dir": str(state.dir),
            "pid": main.get("pid"),
            "processes": procs,
        }
        run_state = run.state if run else "starting"
        if supervised and run_state in ACTIVE_RUN_STATES:
            dead = [p for p, info in procs.items() if info["role"] == "helper" and not info["alive"]]
            result["state"] = "degraded" if dead else run_state
            if dead:
                result["degraded"] = [
                    {"process": p, "device": procs[p]["device"], "exit_code": procs[p]["exit_code"],
                     "signal": procs[p]["signal"]}
                    for p in dead
                ]
            result["vm_status"] = self.query(vm)
            result["uptime"] = round(time.time() - run.started_at, 1) if run else 0.0
        elif run is not None and run_state == "exited":
            result["state"] = run.outcome or "stopped"
            result["exit_code"] = main.get("exit_code")
            result["signal"] = main.get("signal")
            if run.error:
                result["error"] = run.error
            if result["state"] in ("crashed", "failed"):
                result["log"] = state.tail(f"{launch.main.name}.log", 20)
        elif main.get("alive"):
            result["state"] = "unsupervised"  # supervisor killed, VM still up: `down` still works
        elif run_state in ACTIVE_RUN_STATES:
            result["state"] = "crashed"
            result["error"] = "the supervisor died; the VM is gone"
            result["exit_code"] = result["signal"] = None  # no one reaped it
            result["log"] = state.tail(f"{launch.main.name}.log", 20)
        else:
            result["state"] = "stopped"
        return result

    # up ----------------------------------------------------------------------------------------
    def up(self, vm: VmSpec, host: HostProfile, *, wait_ready: bool = False, progress: Progress = quiet) -> dict:
        state = VmState(vm.name)
        with state.locked():
            running = load(state)
            if running is not None and is_active(running):
                if running.launch.spec_hash == vm.hash:
                    progress(f"{vm.name} is already running with this spec")
                    return {"name": vm.name, "action": "unchanged", "engine": running.launch.engine}
                raise LifecycleError(
                    f"{vm.name} is running with a different spec (engine {running.launch.engine}, hash "
                    f"{running.launch.spec_hash[:12]}); run `acrnmgr down {vm.name}` first"
                )
            if running is not None:
                cleanup(state, running.launch, _main_pid(running))
            plan = self.plan(vm, host, state.ensure())
            try:
                self.prepare(vm, host, plan, progress)
            except BaseException:
                for argv in plan.post_stop:  # undo what prepare did before it failed (e.g. taps)
                    subprocess.run(argv, capture_output=True)
                raise
            _reset(state)  # only now: a start that fails before this keeps the previous run's records
            launch = LaunchRecord(
                name=vm.name, engine=self.name, processes=tuple(plan.processes), spec_hash=vm.hash,
                spec_path=str(vm.source.resolve()) if vm.source else None, created_at=time.time(),
                cleanup=tuple(plan.cleanup), post_stop=tuple(tuple(argv) for argv in plan.post_stop),
                info=plan.info, engine_options=self.options,
            )
            state.write_launch(launch)
            state.path("argv").write_text(shlex.join(launch.main.argv) + "\n")
            progress(f"starting {vm.name} on the {self.name} engine")
            started = _spawn_supervisor(state)
            if not started.get("ok"):
                tail = "\n".join(f"  | {line}" for line in started.get("log", []))
                raise LifecycleError(f"{vm.name} failed to start: {started.get('error')}"
                                     + (f"\n{tail}" if tail else ""))
            self._survive(state, progress)
            result = {"name": vm.name, "action": "started", "engine": self.name, "pid": started["pid"], "ready": False}
            if wait_ready:
                if vm.ready is not None:
                    self._wait_console(state, vm.ready.pattern, vm.ready.timeout, progress)
                else:
                    progress(f"waiting for {vm.name} to report running (no spec.console.ready pattern)")
                    self._wait_ready(state)
                result["ready"] = True
            progress(f"{vm.name} {'is up' if wait_ready else 'started'} (pid {started['pid']})")
            return result

    def _died(self, state: VmState, during: str) -> LifecycleError:
        """The error for a VM whose processes ended while `up` waited: its state, how it ended, its last lines."""
        st = self.status(state.name)
        why = st.get("error") or describe_exit(st.get("exit_code"), st.get("signal"))
        launch = state.read_launch()
        lines = st.get("log") or (state.tail(f"{launch.main.name}.log", 20) if launch else [])
        console = state.tail("console.log", 10) if state.path("console.log").exists() else []
        text = f"{state.name} died {during} ({st['state']}: {why})"
        if lines:
            text += "\nlast lines of its log:\n" + "\n".join(f"  | {line}" for line in lines)
        if console:
            text += "\nlast console lines:\n" + "\n".join(f"  | {line}" for line in console)
        return LifecycleError(text)

    def _alive(self, state: VmState) -> bool:
        vm = load(state)
        if vm is None or not state.supervisor_alive():
            return False
        return vm.run is None or vm.run.state in ACTIVE_RUN_STATES

    def _survive(self, state: VmState, progress: Progress) -> None:
        """A VM that dies at once (a bad kernel, a missing file) must not be reported as started: watch it for
        STARTUP_WINDOW seconds."""
        progress(f"checking that {state.name} stays up ({STARTUP_WINDOW:g} s)")
        deadline = time.monotonic() + STARTUP_WINDOW
        while time.monotonic() < deadline:
            if not self._alive(state):
                raise self._died(state, "during start")
            time.sleep(0.1)

    def _wait_console(self, state: VmState, pattern: str, timeout: float, progress: Progress) -> None:
        """Wait until the console log matches `pattern` (spec.console.ready), showing progress."""
        import re

        regex = re.compile(pattern)
        log = state.path("console.log")
        progress(f"waiting for {state.name}'s console to print /{pattern}/ (up to {timeout:g} s)")
        start = time.monotonic()
        next_report = start + 5
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            if regex.search(text):
                return
            if not self._alive(state):
                raise self._died(state, "before it was ready")
            now = time.monotonic()
            if now - start > timeout:
                tail = "\n".join(f"  | {line}" for line in text.splitlines()[-10:])
                raise LifecycleError(f"{state.name} did not print /{pattern}/ on its console within {timeout:g} s "
                                     f"(it still runs; `acrnmgr down {state.name}` stops it)"
                                     + (f"\nlast console lines:\n{tail}" if tail else ""))
            if now >= next_report:
                last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
                progress(f"  still waiting ({now - start:.0f} s){': ' + last[:100] if last else ''}")
                next_report = now + 5
            time.sleep(0.2)

    def _wait_ready(self, state: VmState) -> None:
        def ready() -> bool:
            if not state.supervisor_alive():
                return True
            vm = load(state)  # not None: the launch record was written before the supervisor started
            return vm is not None and self.query(vm) == "running"

        if not wait_until(ready, READY_TIMEOUT, 0.1):
            raise LifecycleError(f"{state.name} did not report running within {READY_TIMEOUT:.0f} s")
        if not state.supervisor_alive():
            raise self._died(state, "during start")

    # forget ------------------------------------------------------------------------------------
    def forget(self, name: str, progress: Progress = quiet) -> dict:
        """Remove the records of a VM that is not running (stopped or crashed), so `list` no longer shows it."""
        import shutil

        state = self._launched(name).state
        with state.locked():
            vm = load(state)
            if vm is not None and is_active(vm):
                raise LifecycleError(f"{name} is running; stop it first (acrnmgr down {name})")
            if vm is not None:
                cleanup(state, vm.launch, _main_pid(vm))
            shutil.rmtree(state.dir, ignore_errors=True)
        progress(f"{name} forgotten (removed {state.dir})")
        return {"name": name, "action": "forgotten"}

    # down --------------------------------------------------------------------------------------
    def down(self, name: str, *, timeout: float = 30.0, force: bool = False, progress: Progress = quiet) -> dict:
        state = self._launched(name).state
        with state.locked():
            vm = load(state)  # again: an up or down may have changed it while we waited for the lock
            if vm is None:
                raise _unknown(name)
            if not is_active(vm):
                cleanup(state, vm.launch, _main_pid(vm))
                progress(f"{name} is not running")
                return {"name": name, "action": "none", "how": "not running"}
            state.path("stop-requested").touch()

            def current() -> Running:
                return load(state) or vm

            def gone() -> bool:
                return not is_active(current())

            how = None
            if not force:
                for action in self.graceful_actions(vm):
                    done = action(current())
                    if done:
                        progress(f"{name}: {done}; waiting up to {timeout:g} s")
                        if wait_until(gone, timeout, 0.1):
                            how = "graceful"
                        break
            if how is None:
                for action in self.force_actions(vm):
                    done = action(current())
                    if done:
                        progress(f"{name}: {done}")
                        if wait_until(gone, FORCE_WAIT, 0.1):
                            how = "forced"
                            break
            if how is None:
                how = "killed"
                progress(f"{name}: did not stop, sending SIGKILL")
                fresh = current()
                for p in fresh.run.processes if fresh.run else ():
                    if not p.exited:
                        p.identity.signal(signal.SIGKILL)
                if not wait_until(gone, FORCE_WAIT, 0.1):
                    raise LifecycleError(f"{name} survived SIGKILL (processes in D state?); see {state.dir}")
            fresh = current()
            for problem in cleanup(state, fresh.launch, _main_pid(fresh)):
                progress(f"warning: {problem}")
            progress(f"{name} stopped ({how})")
            return {"name": name, "action": "stopped", "how": how}


def _reset(state: VmState) -> None:
    for name in ("run.json", "stop-requested", "launch.json", "cleaned"):
        state.remove(name)
    for log in state.dir.glob("*.log"):
        os.replace(log, log.with_suffix(".log.prev"))


def _spawn_supervisor(state: VmState) -> dict:
    read_fd, write_fd = os.pipe()
    with open(state.path("supervisor.log"), "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "acrnmgr.lifecycle.supervisor", str(state.dir), "--ready-fd", str(write_fd)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,  # own session: survives the terminal and the CLI
            cwd="/",
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()  # the supervisor closes its end once started (or failed)
    try:
        return json.loads(data.decode() or "{}") or {
            "ok": False, "error": "the supervisor exited early", "log": state.tail("supervisor.log"),
        }
    except ValueError:
        return {"ok": False, "error": f"bad supervisor reply {data!r}", "log": state.tail("supervisor.log")}


def _main_pid(vm: Running) -> int | None:
    entry = vm.run.process(vm.launch.main.name) if vm.run else None
    return entry.identity.pid if entry else None
