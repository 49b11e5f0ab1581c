"""Reconcile: desired state (specs under a directory) against live state (the lifecycle state
folder), as a plan of create / update / prune / unchanged, and carry it out.

- create: a spec with no running VM;
- update: the running VM's spec hash differs; restarted only with allow_restart;
- prune: a running VM no spec names any more; stopped only with prune;
- unchanged.
One VM failing does not stop the others; the summary names it. Two applies never run at once:
`apply.lock` in the state root is flock'ed for the whole run."""

from __future__ import annotations

import difflib
import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

from acrnmgr.gitops.desired import Desired, DesiredSet

ACTIVE = ("running", "degraded", "starting", "unsupervised")
Progress = Callable[[str], None]


@dataclass
class Change:
    name: str
    action: str  # create | update | prune | unchanged
    source: str | None = None
    engine: str | None = None
    live_state: str | None = None
    reason: str = ""
    blocked: str | None = None  # why the action will not be done without a flag
    diff: list[str] = field(default_factory=list)  # unified diff of argv lines, live -> desired
    result: str | None = None  # after apply: done | skipped | failed
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def argv_lines(argv: list[str]) -> list[str]:
    """One option (with its value) per line, so a diff shows which option changed."""
    lines: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            lines.append(f"{argv[i]} {argv[i + 1]}")
            i += 2
        else:
            lines.append(argv[i])
            i += 1
    return lines


def _live() -> dict[str, dict]:
    from acrnmgr.lifecycle import manager
    from acrnmgr.lifecycle.engine import LifecycleError
    from acrnmgr.lifecycle.state import VmState, all_vms

    out = {}
    for name in all_vms():
        try:
            st = manager.status(name)
        except LifecycleError:
            continue
        launch = VmState(name).read_json("launch.json") or {}
        procs = launch.get("processes") or [{}]
        st["argv"] = procs[-1].get("argv", [])
        out[name] = st
    return out


def _desired_argv(vm: Desired, engine: str, host) -> list[str]:
    from acrnmgr.lifecycle.engine import select_engine
    from acrnmgr.lifecycle.state import VmState

    eng = select_engine(engine, host)
    try:
        return eng.plan(vm.spec, host, VmState(vm.name)).main.argv
    except Exception as exc:  # a plan error is shown in place of the argv
        return [f"<cannot plan: {exc}>"]


def make_plan(desired: DesiredSet, engine: str = "auto", host=None, with_diff: bool = False,
              allow_restart: bool = False, prune: bool = False) -> list[Change]:
    from acrnmgr.host import HostProfile

    host = host or HostProfile.detect()
    live = _live()
    changes: list[Change] = []
    for vm in sorted(desired.vms, key=lambda v: v.name):
        st = live.get(vm.name)
        active = st is not None and st.get("state") in ACTIVE
        eng = st["engine"] if active else engine
        if not active:
            c = Change(vm.name, "create", vm.source, eng, st.get("state") if st else None,
                       "no VM running" if not st else f"the VM is {st.get('state')}")
        elif st.get("spec_hash") == vm.spec.hash:
            c = Change(vm.name, "unchanged", vm.source, eng, st["state"], "running with this spec")
        else:
            c = Change(vm.name, "update", vm.source, eng, st["state"],
                       f"spec hash {str(st.get('spec_hash'))[:12]} -> {vm.spec.hash[:12]}")
            if not allow_restart:
                c.blocked = "needs --allow-restart (the VM is restarted)"
        if with_diff and c.action in ("create", "update"):
            old = argv_lines(st.get("argv", [])) if active else []
            new = argv_lines(_desired_argv(vm, eng, host))
            c.diff = list(difflib.unified_diff(old, new, f"live/{vm.name}", f"desired/{vm.name}", lineterm=""))
        changes.append(c)
    names = {vm.name for vm in desired.vms}
    for name, st in sorted(live.items()):
        if name in names or st.get("state") not in ACTIVE:
            continue
        c = Change(name, "prune", None, st.get("engine"), st.get("state"), "no spec names this VM")
        if not prune:
            c.blocked = "needs --prune (the VM is stopped)"
        if with_diff:
            c.diff = list(difflib.unified_diff(argv_lines(st.get("argv", [])), [], f"live/{name}",
                                               f"desired/{name}", lineterm=""))
        changes.append(c)
    return changes


@contextmanager
def apply_lock(progress: Progress):
    from acrnmgr.lifecycle.state import state_root

    root = state_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(root / "apply.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("another apply is running; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _spec_file(vm: Desired) -> str:
    if not vm.materialize:
        return str(vm.file)
    from acrnmgr.lifecycle.state import state_root, write_atomic

    folder = state_root() / "gitops"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{vm.name}.json"
    write_atomic(path, json.dumps(vm.spec.data, indent=2))
    return str(path)


def execute(changes: list[Change], desired: DesiredSet, engine: str = "auto", host=None, wait: bool = False,
            timeout: float = 30.0, progress: Progress = lambda m: None) -> list[Change]:
    from acrnmgr.lifecycle import manager
    from acrnmgr.lifecycle.engine import LifecycleError
    from acrnmgr.spec.diagnostics import SpecError

    by_name = {vm.name: vm for vm in desired.vms}
    for c in changes:
        if c.action == "unchanged":
            continue
        if c.blocked:
            c.result = "skipped"
            progress(f"{c.name}: {c.action} skipped: {c.blocked}")
            continue
        try:
            if c.action in ("update", "prune"):
                progress(f"{c.name}: stopping ({c.action})")
                manager.down(c.name, timeout, False, progress)
            if c.action in ("create", "update"):
                progress(f"{c.name}: starting ({c.action})")
                manager.up(_spec_file(by_name[c.name]), c.engine if c.action == "update" else engine,
                           wait, host, progress)
            c.result = "done"
        except (LifecycleError, SpecError, OSError) as exc:
            c.result = "failed"
            c.error = str(exc) if not isinstance(exc, SpecError) else "; ".join(str(d) for d in exc.diagnostics)
            progress(f"{c.name}: {c.action} failed: {c.error}")
    return changes


def format_table(changes: list[Change]) -> str:
    rows = [("VM", "ACTION", "ENGINE", "LIVE", "RESULT", "WHY")]
    for c in changes:
        result = c.result or ("blocked" if c.blocked else "-")
        why = c.reason + (f"; {c.blocked}" if c.blocked else "") + (f"; {c.error}" if c.error else "")
        rows.append((c.name, c.action, c.engine or "-", c.live_state or "-", result, why))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows)
