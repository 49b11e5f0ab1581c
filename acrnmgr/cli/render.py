"""`acrnmgr render` and `acrnmgr plan`: both show one Plan (acrnmgr.plan). The planner, jinja2 and PyYAML load
inside the commands."""

from __future__ import annotations

import enum
from typing import Any, Optional

import typer

from acrnmgr.cli.common import OutputFormat, load_host, planning_host


class RenderFormat(str, enum.Enum):
    argv = "argv"
    script = "script"
    json = "json"


class TargetVersion(str, enum.Enum):
    v3 = "3.x"
    v27 = "2.7"


class PlanEngine(str, enum.Enum):
    auto = "auto"
    acrn = "acrn"
    qemu = "qemu"


_HOST_HELP = "Host profile YAML to plan for (default: detect this machine). Also enables host checks on the spec."
_PATHS_HELP = "Do not require image/firmware paths to exist (rendering for another host)."
_ENGINE_HELP = "acrn (acrn-dm), qemu, or auto (acrn on an ACRN Service VM, else qemu), as `up` picks it."


def _fail(lines) -> None:
    for line in lines:
        typer.echo(str(line), err=True)
    raise typer.Exit(1)


def make_cli_plan(file: str, host: Optional[str], target_version: str, engine: str, check_paths: bool) -> Any:
    """Load, validate and plan one spec as the CLI does; spec errors exit 1 with every diagnostic."""
    from acrnmgr.devices import vm_from_spec
    from acrnmgr.plan import make_plan
    from acrnmgr.spec.diagnostics import SpecError
    from acrnmgr.spec.validation import load_spec

    profile = load_host(host) if host is not None else None
    try:
        # Host checks on the spec (CPU affinity etc.) only for an explicit profile: rendering an
        # example on a laptop must not fail because the laptop is not the target.
        spec = load_spec(file, host=profile, check_paths=check_paths)
    except SpecError as exc:
        _fail(exc.diagnostics)
    for warning in spec.warnings:
        typer.echo(str(warning), err=True)
    planned_host, planned_engine, live = planning_host(profile, engine)
    return make_plan(vm_from_spec(spec), planned_host, planned_engine, target_version, live_host=live)


def render(
    file: str = typer.Argument(..., metavar="FILE", help="VM spec (YAML or JSON)."),
    format: RenderFormat = typer.Option(RenderFormat.argv, "--format",
                                        help="argv (one shell-quoted line), script (acrn-dm launch script) or json."),
    host: Optional[str] = typer.Option(None, "--host", metavar="HOST.yaml", help=_HOST_HELP),
    target_version: TargetVersion = typer.Option(TargetVersion.v3, "--target-version",
                                                 help="acrn-dm grammar: 3.x, or 2.7 where it differs."),
    engine: PlanEngine = typer.Option(PlanEngine.auto, "--engine", help=_ENGINE_HELP),
    no_check_paths: bool = typer.Option(False, "--no-check-paths", help=_PATHS_HELP),
) -> None:
    """Render a VM spec's launch: the acrn-dm (or QEMU) command line, the launch script, or JSON."""
    import json
    import shlex

    from acrnmgr.render.acrndm import render_acrndm
    from acrnmgr.render.qemu import render_qemu

    plan = make_cli_plan(file, host, target_version.value, engine.value, not no_check_paths)
    for warning in plan.warnings:
        typer.echo(str(warning), err=True)
    if plan.errors:
        _fail(plan.errors)
    if format is RenderFormat.script and plan.engine != "acrn":
        _fail([f"a launch script runs acrn-dm: render it with --engine acrn (this plan is for {plan.engine})"])
    if plan.engine == "acrn":
        compiled = render_acrndm(plan)
        if format is RenderFormat.argv:
            typer.echo(shlex.join(compiled.argv))
        elif format is RenderFormat.script:
            from acrnmgr.render.script import render_script

            typer.echo(render_script(compiled), nl=False)
        else:
            typer.echo(json.dumps(compiled.to_dict(), indent=2))
    else:
        out = render_qemu(plan)
        typer.echo(shlex.join(out["argv"]) if format is RenderFormat.argv else json.dumps(out, indent=2))


def plan(
    file: str = typer.Argument(..., metavar="FILE", help="VM spec (YAML or JSON)."),
    host: Optional[str] = typer.Option(None, "--host", metavar="HOST.yaml", help=_HOST_HELP),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text (a table) or json."),
    target_version: TargetVersion = typer.Option(TargetVersion.v3, "--target-version",
                                                 help="acrn-dm grammar: 3.x, or 2.7 where it differs."),
    engine: PlanEngine = typer.Option(PlanEngine.auto, "--engine", help=_ENGINE_HELP),
    no_check_paths: bool = typer.Option(False, "--no-check-paths", help=_PATHS_HELP),
) -> None:
    """Show each device's PCI slot, the backend chosen and why. Plan errors exit 1."""
    import json

    p = make_cli_plan(file, host, target_version.value, engine.value, not no_check_paths)
    if output is OutputFormat.json:
        report = {"ok": p.ok, "name": p.name, "engine": p.engine, "targetVersion": p.target_version,
                  "devices": p.devices_dict(),
                  "errors": [d.to_dict() for d in p.errors],
                  "warnings": [d.to_dict() for d in p.warnings]}
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(format_plan(p))
        for diag in p.warnings + p.errors:
            typer.echo(str(diag), err=True)
    raise typer.Exit(0 if p.ok else 1)


def format_plan(plan: Any) -> str:
    rows = [("DEVICE", "TYPE", "SLOT", "BACKEND", "WHY")]
    for d in plan.devices:
        slot = "-" if d.slot is None else f"{d.slot}:{d.device.function}" if d.device.function else str(d.slot)
        rows.append((d.name, d.kind, slot, d.backend or "-", d.reason))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
    head = f"{plan.name}: {len(plan.devices)} device(s), engine {plan.engine}"
    if plan.engine == "acrn":
        head += f", acrn-dm v{plan.target_version}"
    return "\n".join([head, *lines])


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""
    app.command("render")(render)
    app.command("plan")(plan)
