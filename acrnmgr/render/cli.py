"""`acrnmgr render` and `acrnmgr plan`. The compiler, jinja2 and PyYAML load inside the commands."""

from __future__ import annotations

import enum
from typing import Optional

import typer

from acrnmgr.cliutil import OutputFormat, load_host


class RenderFormat(str, enum.Enum):
    argv = "argv"
    script = "script"
    json = "json"


class TargetVersion(str, enum.Enum):
    v3 = "3.x"
    v27 = "2.7"


class RenderEngine(str, enum.Enum):
    acrn = "acrn"


class PlanEngine(str, enum.Enum):
    acrn = "acrn"
    qemu = "qemu"


_HOST_HELP = "Host profile YAML to plan for (default: detect this machine). Also enables host checks on the spec."
_PATHS_HELP = "Do not require image/firmware paths to exist (rendering for another host)."


def _fail(lines) -> None:
    for line in lines:
        typer.echo(str(line), err=True)
    raise typer.Exit(1)


def _compile(file: str, host: Optional[str], target_version: str, engine: str, check_paths: bool):
    from acrnmgr.render.acrndm import compile_spec
    from acrnmgr.spec.diagnostics import SpecError
    from acrnmgr.spec.loader import load_spec

    profile = load_host(host) if host is not None else None
    try:
        # Host checks on the spec (CPU affinity etc.) only for an explicit profile: rendering an
        # example on a laptop must not fail because the laptop is not the target.
        spec = load_spec(file, host=profile, check_paths=check_paths)
    except SpecError as exc:
        _fail(exc.diagnostics)
    for warning in spec.warnings:
        typer.echo(str(warning), err=True)
    return compile_spec(spec, profile, target_version, engine)  # no profile: compile_spec detects this machine


def render(
    file: str = typer.Argument(..., metavar="FILE", help="VM spec (YAML or JSON)."),
    format: RenderFormat = typer.Option(RenderFormat.argv, "--format",
                                        help="argv (one shell-quoted line), script (launch script) or json."),
    host: Optional[str] = typer.Option(None, "--host", metavar="HOST.yaml", help=_HOST_HELP),
    target_version: TargetVersion = typer.Option(TargetVersion.v3, "--target-version",
                                                 help="acrn-dm grammar: 3.x, or 2.7 where it differs."),
    engine: RenderEngine = typer.Option(RenderEngine.acrn, "--engine", help="Only acrn renders an acrn-dm command."),
    no_check_paths: bool = typer.Option(False, "--no-check-paths", help=_PATHS_HELP),
) -> None:
    """Compile a VM spec to the acrn-dm command line, its launch script, or JSON."""
    import json
    import shlex

    compiled = _compile(file, host, target_version.value, engine.value, not no_check_paths)
    for warning in compiled.warnings:
        typer.echo(str(warning), err=True)
    if compiled.errors:
        _fail(compiled.errors)
    if format is RenderFormat.argv:
        typer.echo(shlex.join(compiled.argv))
    elif format is RenderFormat.script:
        from acrnmgr.render.script import render_script

        typer.echo(render_script(compiled), nl=False)
    else:
        typer.echo(json.dumps(compiled.to_dict(), indent=2))


def plan(
    file: str = typer.Argument(..., metavar="FILE", help="VM spec (YAML or JSON)."),
    host: Optional[str] = typer.Option(None, "--host", metavar="HOST.yaml", help=_HOST_HELP),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text (a table) or json."),
    target_version: TargetVersion = typer.Option(TargetVersion.v3, "--target-version",
                                                 help="acrn-dm grammar: 3.x, or 2.7 where it differs."),
    engine: PlanEngine = typer.Option(PlanEngine.acrn, "--engine", help="Engine to plan for."),
    no_check_paths: bool = typer.Option(False, "--no-check-paths", help=_PATHS_HELP),
) -> None:
    """Show each device's PCI slot, the backend chosen and why. Plan errors exit 1."""
    import json

    compiled = _compile(file, host, target_version.value, engine.value, not no_check_paths)
    if output is OutputFormat.json:
        report = {"ok": compiled.ok, "name": compiled.name, "engine": compiled.engine,
                  "targetVersion": compiled.target_version,
                  "devices": [d.to_dict() for d in compiled.devices],
                  "errors": [d.to_dict() for d in compiled.errors],
                  "warnings": [d.to_dict() for d in compiled.warnings]}
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(format_plan(compiled))
        for diag in compiled.warnings + compiled.errors:
            typer.echo(str(diag), err=True)
    raise typer.Exit(0 if compiled.ok else 1)


def format_plan(compiled) -> str:
    rows = [("DEVICE", "TYPE", "SLOT", "BACKEND", "WHY")]
    for d in compiled.devices:
        rows.append((d.name, d.type, "-" if d.slot is None else str(d.slot), d.backend or "-", d.reason))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
    head = f"{compiled.name}: {len(compiled.devices)} device(s), engine {compiled.engine}"
    if compiled.engine == "acrn":
        head += f", acrn-dm v{compiled.target_version}"
    return "\n".join([head, *lines])


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""
    app.command("render")(render)
    app.command("plan")(plan)
