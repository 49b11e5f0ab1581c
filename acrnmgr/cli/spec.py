"""`acrnmgr validate` and `acrnmgr schema`. jsonschema and PyYAML load inside the commands."""

from __future__ import annotations

import enum
import sys
from typing import List, Optional

import typer

from acrnmgr.cli.common import OutputFormat, load_host, planning_host


class ValidateEngine(str, enum.Enum):
    auto = "auto"
    acrn = "acrn"
    qemu = "qemu"


def validate(
    files: List[str] = typer.Argument(..., metavar="FILE",
                                      help="Spec files (YAML or JSON; - reads standard input; a YAML file may hold "
                                      "several `---` separated VMs). All VMs are also checked against each other: "
                                      "names, vsock CIDs, MACs, taps and RTVM CPUs must not clash."),
    host: Optional[str] = typer.Option(None, "--host", metavar="HOST.yaml",
                                       help="Host profile to check against (CPU LAPIC IDs); default: no host checks."),
    no_check_paths: bool = typer.Option(False, "--no-check-paths",
                                        help="Do not require image/firmware paths to exist (planning for another "
                                             "host)."),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text (gcc-style lines) or json."),
    engine: Optional[ValidateEngine] = typer.Option(
        None, "--engine", help="Also plan every VM for this engine (acrn, qemu, or auto as `up` picks it) and report "
        "what would stop it there. Without it, only what holds on every engine is checked."),
) -> None:
    """Validate VM specs: schema first, then semantic checks. Reports every problem with file:line:col."""
    import json

    from acrnmgr.spec.validation import STDIN_NAME, validate_files

    profile = load_host(host) if host is not None else None
    docs, diagnostics = validate_files(files, host=profile, check_paths=not no_check_paths)
    diagnostics += _mac_collisions(docs, diagnostics)
    if engine is not None:
        diagnostics += _plan_diagnostics(docs, diagnostics, profile, engine.value)
    errors = [d for d in diagnostics if d.is_error]
    warnings = [d for d in diagnostics if not d.is_error]
    bad_files = {d.file for d in errors}
    files = [STDIN_NAME if f == "-" else f for f in files]  # as the diagnostics name it
    if output is OutputFormat.json:
        report = {
            "ok": not errors,
            "files": [{"file": f, "ok": f not in bad_files} for f in files],
            "errors": len(errors),
            "warnings": len(warnings),
            "diagnostics": [d.to_dict() for d in diagnostics],
        }
        typer.echo(json.dumps(report, indent=2))
    else:
        for d in diagnostics:
            typer.echo(str(d), err=True)
        summary = f"{len(files) - len(bad_files)} of {len(files)} file{'s' if len(files) != 1 else ''} valid"
        if errors or warnings:
            summary += f"; {_count(len(errors), 'error')}, {_count(len(warnings), 'warning')}"
        typer.echo(summary, err=bool(errors))
    raise typer.Exit(1 if errors else 0)


def _mac_collisions(docs, diagnostics) -> list:
    """NICs of different VMs on one bridge that acrn-dm would give the same MAC."""
    from acrnmgr.devices import vm_from_spec
    from acrnmgr.plan.macs import mac_collisions
    from acrnmgr.spec.loader import spec_from_document

    failed = {d.file for d in diagnostics if d.is_error}
    vms = [(doc, vm_from_spec(spec_from_document(doc))) for doc in docs if doc.filename not in failed]
    return [doc.diag(where, message, hint) for doc, where, message, hint in mac_collisions(vms)]


def _plan_diagnostics(docs, diagnostics, profile, engine: str) -> list:
    """What the one planner says of each VM that passed validation, on the chosen engine."""
    from acrnmgr.devices import vm_from_spec
    from acrnmgr.plan import make_plan
    from acrnmgr.spec.loader import spec_from_document

    host, engine, live = planning_host(profile, engine)
    failed = {d.file for d in diagnostics if d.is_error}
    out = []
    for doc in docs:
        if doc.filename in failed:
            continue
        plan = make_plan(vm_from_spec(spec_from_document(doc)), host, engine, live_host=live)
        out += plan.errors + plan.warnings
    return out


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def schema() -> None:
    """Print the VM spec's JSON Schema (draft 2020-12)."""
    from acrnmgr.resources import schema_text

    sys.stdout.write(schema_text())


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""
    app.command("validate")(validate)
    app.command("schema")(schema)
