"""CLI commands for the gitops concept: import, export, apply, diff.

Heavy modules (libvirt, the compiler, PyYAML) load inside the commands."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Optional

import typer


class OutputFormat(str, enum.Enum):
    text = "text"
    json = "json"


class ExportFormat(str, enum.Enum):
    libvirt = "libvirt"


class Flavor(str, enum.Enum):
    qemu = "qemu"
    acrn = "acrn"


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def import_(
    file: Path = typer.Argument(..., metavar="FILE",
                                help="ACRN scenario.xml, a generated launch_user_vm_idN.sh, or libvirt domain XML."),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out-dir", metavar="DIR",
                                           help="Write one <name>.yaml per VM here (default: YAML on stdout)."),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text (YAML) or json (a report)."),
    board: Optional[Path] = typer.Option(None, "--board", metavar="BOARD.xml",
                                         help="ACRN board XML: maps pcpu_id to LAPIC IDs and classifies passthrough devices."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files in DIR."),
) -> None:
    """Turn ACRN's own configuration (or a libvirt domain) into acrnmgr specs.

    What could not be mapped is listed (stderr, a comment in each file, or `warnings` in JSON).
    Nothing in a launch script is executed. Exit 1 if nothing could be imported or a spec
    does not validate."""
    from acrnmgr.importers import ImportError_, import_file
    from acrnmgr.importers.output import spec_yaml, validate, write_specs

    try:
        result = import_file(file, board=board)
    except ImportError_ as exc:
        _fail(str(exc))
    problems = {s.name: validate(s, out_dir) for s in result.specs}
    files: dict[str, str] = {}
    if out_dir is not None and not any(problems.values()):
        try:
            files = {s.name: str(p) for s, p in zip(result.specs, write_specs(result, out_dir, force))}
        except (FileExistsError, OSError) as exc:
            _fail(str(exc))
    if output is OutputFormat.json:
        report = result.to_dict()
        for vm in report["vms"]:
            vm["errors"] = problems[vm["name"]]
            if vm["name"] in files:
                vm["file"] = files[vm["name"]]
        report["ok"] = not any(problems.values())
        typer.echo(json.dumps(report, indent=2))
    else:
        for w in result.warnings:
            typer.echo(f"warning: {w}", err=True)
        for s in result.specs:
            for w in s.warnings:
                typer.echo(f"warning: {s.name}: {w}", err=True)
        if out_dir is not None:
            for path in files.values():
                typer.echo(path)
        elif not any(problems.values()):
            typer.echo("---\n".join(spec_yaml(s, result.source) for s in result.specs), nl=False)
    bad = {n: p for n, p in problems.items() if p}
    if bad:
        if output is not OutputFormat.json:
            for name, errs in bad.items():
                typer.echo(f"error: {name}: the imported spec does not validate:", err=True)
                for e in errs:
                    typer.echo(f"  {e}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""
    app.command("import")(import_)
