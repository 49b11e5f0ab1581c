"""Reconcile: desired state (specs under a directory) against live state (the VMs the engines
know: every state folder, and the chosen engine's VMs, e.g. a libvirt URI's domains), as a plan of
create / update / prune / unchanged, and carry it out.

- create: a spec with no running VM;
- update: the running VM's spec hash differs; restarted only with allow_restart;
- prune: a running VM no spec names any more; stopped only with prune;
- unchanged.
One VM failing does not stop the others; the summary names it. Two applies never run at once:
`apply.lock` in the state root is flock'ed for the whole run."""

from __future__ import annotations

import difflib
import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Callable

from acrnmgr.gitops.desired import DesiredSet
from acrnmgr.lifecycle.engine import Engine, known_vms
from acrnmgr.lifecycle.errors import LifecycleError
from acrnmgr.lifecycle.state import state_root
from acrnmgr.spec.diagnostics import SpecError

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
    diff: list[str] = field(default_factory=list)  # unified diff of launch lines (argv, domain XML), live -> desired
    result: str | None = None  # after apply: done | skipped | failed
    error: str | None = None
    runner: Engine | None = field(default=None, repr=False, compare=False)  # the engine that carries it out

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "runner"}


@dataclass
class Live:
    status: dict
    engine: Engine


def live_vms(engine: Engine | None) -> dict[str, Live]:
    """The VMs the engines know (see acrnmgr.lifecycle.engine.known_vms) with their status. A VM whose
    state cannot be read is left out: starting it again reports why."""
    out = {}
    for vm in known_vms(engine):
        if vm.engine is None:
            continue
        try:
            out[vm.name] = Live(vm.engine.status(vm.name), vm.engine)
        except LifecycleError:
            continue
    return out


def _lines(what: Callable[[], list[str]]) -> list[str]:
    """Launch lines, or the reason there are none in their place."""
    try:
        return what()
    except (LifecycleError, SpecError) as exc:
        return [f"<cannot plan: {exc}>"]


def make_plan(desired: DesiredSet, engine: Engine, host, *, explicit: bool = True, with_diff: bool = False,
              allow_restart: bool = False, prune: bool = False) -> list[Change]:
    """The changes that make the live VMs match `desired`; new VMs go to `engine`, whose own VMs are
    live state too when it was chosen explicitly (not by auto)."""
    live = live_vms(engine if explicit else None)
    changes: list[Change] = []
    for want in sorted(desired.vms, key=lambda v: v.name):
        cur = live.get(want.name)
        st = cur.status if cur else None
        active = st is not None and st.get("state") in ACTIVE
        runner = cur.engine if cur is not None and active else engine
        if st is None or not active:
            c = Change(want.name, "create", want.source, runner.name, st.get("state") if st else None,
                       "no VM running" if not st else f"the VM is {st.get('state')}")
        elif st.get("spec_hash") == want.vm.hash:
            c = Change(want.name, "unchanged", want.source, runner.name, st["state"], "running with this spec")
        else:
            c = Change(want.name, "update", want.source, runner.name, st["state"],
                       f"spec hash {str(st.get('spec_hash'))[:12]} -> {want.vm.hash[:12]}")
            if not allow_restart:
                c.blocked = "needs --allow-restart (the VM is restarted)"
        c.runner = runner
        if with_diff and c.action in ("create", "update"):
            old = _lines(partial(runner.launch_lines, want.name)) if active else []
            new = _lines(partial(runner.planned_lines, want.vm, host))
            c.diff = list(difflib.unified_diff(old, new, f"live/{want.name}", f"desired/{want.name}", lineterm=""))
        changes.append(c)
    names = {vm.name for vm in desired.vms}
    for name, cur in sorted(live.items()):
        st = cur.status
        if name in names or st.get("state") not in ACTIVE:
            continue
        c = Change(name, "prune", None, cur.engine.name, st.get("state"), "no spec names this VM", runner=cur.engine)
        if not prune:
            c.blocked = "needs --prune (the VM is stopped)"
        if with_diff:
            old = _lines(partial(cur.engine.launch_lines, name))
            c.diff = list(difflib.unified_diff(old, [], f"live/{name}", f"desired/{name}", lineterm=""))
        changes.append(c)
    return changes


@contextmanager
def apply_lock(progress: Progress):
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


def execute(changes: list[Change], desired: DesiredSet, host=None, wait: bool = False, timeout: float = 30.0,
            progress: Progress = lambda m: None) -> list[Change]:
    by_name = {vm.name: vm for vm in desired.vms}
    for c in changes:
        if c.action == "unchanged":
            continue
        if c.blocked:
            c.result = "skipped"
            progress(f"{c.name}: {c.action} skipped: {c.blocked}")
            continue
        runner = c.runner
        assert runner is not None  # make_plan gives every change its engine
        try:
            if c.action in ("update", "prune"):
                progress(f"{c.name}: stopping ({c.action})")
                runner.down(c.name, timeout=timeout, progress=progress)
            if c.action in ("create", "update"):
                progress(f"{c.name}: starting ({c.action})")
                runner.up(by_name[c.name].vm, host, wait_ready=wait, progress=progress)
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
