"""up / down / status over the engines, the state folder and the supervisor."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from acrnmgr.lifecycle.engine import Engine, LifecycleError, Running, select_engine
from acrnmgr.lifecycle.state import ProcessIdentity, VmState, all_vms, wait_until
from acrnmgr.lifecycle.supervisor import cleanup

Progress = Callable[[str], None]
FORCE_WAIT = 10.0  # seconds after each forced stop action before escalating
READY_TIMEOUT = 60.0


def _quiet(_: str) -> None:
    pass


# status ------------------------------------------------------------------------------------

def _running(state: VmState) -> Running | None:
    launch = state.read_json("launch.json")
    if launch is None:
        return None
    return Running(state, launch, state.read_json("run.json") or {})


def _active(vm: Running) -> bool:
    """Something of this VM may still be running: its supervisor, or (supervisor killed) its
    processes."""
    if vm.state.supervisor_alive():
        return True
    return any(_identity(e).alive() for e in vm.run.get("processes", {}).values() if e.get("exit_code") is None)


def _identity(entry: dict) -> ProcessIdentity:
    return ProcessIdentity.from_dict(entry["identity"])


def status(name: str) -> dict:
    state = VmState(name)
    vm = _running(state)
    if vm is None:
        raise LifecycleError(f"no VM named {name} (known: {', '.join(all_vms()) or 'none'})")
    launch, run = vm.launch, vm.run
    main_name = launch["processes"][-1]["name"]
    supervised = state.supervisor_alive()
    procs = {}
    for pname, entry in run.get("processes", {}).items():
        alive = entry.get("exit_code") is None and _identity(entry).alive()
        procs[pname] = {
            "pid": entry["identity"]["pid"],
            "role": entry.get("role"),
            "device": entry.get("device"),
            "alive": alive,
            "exit_code": entry.get("exit_code"),
            "signal": entry.get("signal"),
        }
    main = procs.get(main_name, {})
    result = {
        "name": name,
        "engine": launch["engine"],
        "spec": launch.get("spec_path"),
        "spec_hash": launch.get("spec_hash"),
        "state_dir": str(state.dir),
        "pid": main.get("pid"),
        "processes": procs,
    }
    run_state = run.get("state", "starting")
    if supervised and run_state in ("running", "degraded", "starting"):
        dead = [p for p, info in procs.items() if info["role"] == "helper" and not info["alive"]]
        result["state"] = "degraded" if dead else run_state
        if dead:
            result["degraded"] = [
                {"process": p, "device": procs[p]["device"], "exit_code": procs[p]["exit_code"], "signal": procs[p]["signal"]}
                for p in dead
            ]
        engine = select_engine(launch["engine"], None)
        result["vm_status"] = engine.query(vm)
        result["uptime"] = round(time.time() - run.get("started_at", time.time()), 1)
    elif run_state == "exited":
        result["state"] = run.get("outcome", "stopped")
        result["exit_code"] = main.get("exit_code")
        result["signal"] = main.get("signal")
        if run.get("error"):
            result["error"] = run["error"]
        if result["state"] in ("crashed", "failed"):
            result["log"] = state.tail(f"{main_name}.log", 20)
    elif main.get("alive"):
        result["state"] = "unsupervised"  # supervisor killed, VM still up: `down` still works
    elif run_state in ("running", "degraded", "starting"):
        result["state"] = "crashed"
        result["error"] = "the supervisor died; the VM is gone"
        result["log"] = state.tail(f"{main_name}.log", 20)
    else:
        result["state"] = "stopped"
    return result


def list_vms() -> list[dict]:
    out = []
    for name in all_vms():
        try:
            st = status(name)
        except LifecycleError:
            continue
        out.append({k: st.get(k) for k in ("name", "engine", "state", "pid", "spec")})
    return out


# up ----------------------------------------------------------------------------------------

def up(spec_path: str, engine_choice: "str | Engine" = "auto", wait_ready: bool = False, host=None, progress: Progress = _quiet) -> dict:
    from acrnmgr.host import HostProfile
    from acrnmgr.spec.validation import load_spec

    host = host or HostProfile.detect()
    spec = load_spec(spec_path, host=host)
    # an Engine instance: the libvirt engine's device models, whose plan needs its URI and domain XML
    engine = engine_choice if isinstance(engine_choice, Engine) else select_engine(engine_choice, host)
    state = VmState(spec.name)
    with state.locked():
        vm = _running(state)
        if vm is not None and _active(vm):
            if vm.launch.get("spec_hash") == spec.hash:
                progress(f"{spec.name} is already running with this spec")
                return {"name": spec.name, "action": "unchanged", "engine": vm.launch["engine"]}
            raise LifecycleError(
                f"{spec.name} is running with a different spec (engine {vm.launch['engine']}, hash "
                f"{str(vm.launch.get('spec_hash'))[:12]}); run `acrnmgr down {spec.name}` first"
            )
        if vm is not None:
            cleanup(state, vm.launch, _main_pid(vm))
        plan = engine.plan(spec, host, state.ensure())
        _reset(state)
        try:
            engine.prepare(spec, host, plan, progress)
        except BaseException:
            for argv in plan.post_stop:  # undo what prepare did before it failed (e.g. taps)
                subprocess.run(argv, capture_output=True)
            raise
        launch = {
            **plan.to_dict(),
            "name": spec.name,
            "spec_path": str(Path(spec_path).resolve()),
            "spec_hash": spec.hash,
            "created_at": time.time(),
        }
        state.write_json("launch.json", launch)
        state.path("argv").write_text(shlex.join(plan.main.argv) + "\n")
        progress(f"starting {spec.name} on the {engine.name} engine")
        started = _spawn_supervisor(state)
        if not started.get("ok"):
            tail = "\n".join(f"  | {line}" for line in started.get("log", []))
            raise LifecycleError(f"{spec.name} failed to start: {started.get('error')}" + (f"\n{tail}" if tail else ""))
        if wait_ready:
            progress(f"waiting for {spec.name} to report running")
            _wait_ready(engine, state)
        progress(f"{spec.name} started (pid {started['pid']})")
        return {"name": spec.name, "action": "started", "engine": engine.name, "pid": started["pid"]}


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


def _wait_ready(engine: Engine, state: VmState) -> None:
    def ready() -> bool:
        vm = _running(state)
        if not state.supervisor_alive():
            return True
        return engine.query(vm) == "running"

    if not wait_until(ready, READY_TIMEOUT, 0.1):
        raise LifecycleError(f"{state.name} did not report running within {READY_TIMEOUT:.0f} s")
    if not state.supervisor_alive():
        st = status(state.name)
        tail = "\n".join(f"  | {line}" for line in st.get("log", []))
        raise LifecycleError(f"{state.name} exited during start ({st['state']}, exit code {st.get('exit_code')})\n{tail}")


def _main_pid(vm: Running) -> int | None:
    entry = vm.run.get("processes", {}).get(vm.launch["processes"][-1]["name"])
    return entry["identity"]["pid"] if entry else None


# down --------------------------------------------------------------------------------------

def down(name: str, timeout: float = 30.0, force: bool = False, progress: Progress = _quiet) -> dict:
    state = VmState(name)
    if _running(state) is None:
        raise LifecycleError(f"no VM named {name} (known: {', '.join(all_vms()) or 'none'})")
    with state.locked():
        vm = _running(state)
        if not _active(vm):
            cleanup(state, vm.launch, _main_pid(vm))
            progress(f"{name} is not running")
            return {"name": name, "action": "none", "how": "not running"}
        state.path("stop-requested").touch()
        engine = select_engine(vm.launch["engine"], None)

        def gone() -> bool:
            fresh = _running(state)
            return not _active(fresh)

        how = None
        if not force:
            for action in engine.graceful_actions(vm):
                done = action(_running(state))
                if done:
                    progress(f"{name}: {done}; waiting up to {timeout:g} s")
                    if wait_until(gone, timeout, 0.1):
                        how = "graceful"
                    break
        if how is None:
            for action in engine.force_actions(vm):
                done = action(_running(state))
                if done:
                    progress(f"{name}: {done}")
                    if wait_until(gone, FORCE_WAIT, 0.1):
                        how = "forced"
                        break
        if how is None:
            how = "killed"
            progress(f"{name}: did not stop, sending SIGKILL")
            fresh = _running(state)
            for entry in fresh.run.get("processes", {}).values():
                if entry.get("exit_code") is None:
                    _identity(entry).signal(signal.SIGKILL)
            if not wait_until(gone, FORCE_WAIT, 0.1):
                raise LifecycleError(f"{name} survived SIGKILL (processes in D state?); see {state.dir}")
        fresh = _running(state)
        problems = cleanup(state, fresh.launch, _main_pid(fresh))
        for p in problems:
            progress(f"warning: {p}")
        progress(f"{name} stopped ({how})")
        return {"name": name, "action": "stopped", "how": how}
