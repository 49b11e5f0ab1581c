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


def export(
    file: Path = typer.Argument(..., metavar="FILE", help="VM spec (YAML or JSON)."),
    format: ExportFormat = typer.Option(ExportFormat.libvirt, "--format", help="Only libvirt domain XML for now."),
    flavor: Flavor = typer.Option(Flavor.qemu, "--flavor",
                                  help="qemu (QEMU/KVM domain; embedded devices as vhost-user) or acrn "
                                       "(the out-of-tree ACRN driver, acrn:///system)."),
    host: Optional[Path] = typer.Option(None, "--host", metavar="HOST.yaml",
                                        help="Host profile to export for (default: detect this machine)."),
    no_check_paths: bool = typer.Option(False, "--no-check-paths", help="Do not require image paths to exist."),
) -> None:
    """Print the spec as libvirt domain XML (warnings about what libvirt cannot express go to stderr)."""
    from acrnmgr.host import HostProfile, HostProfileError
    from acrnmgr.libvirt.domain import ExportError, export_domain
    from acrnmgr.spec.diagnostics import SpecError
    from acrnmgr.spec.loader import load_spec

    try:
        profile = HostProfile.from_file(host) if host else HostProfile.detect()
        spec = load_spec(file, check_paths=not no_check_paths)
        xml, warnings = export_domain(spec, profile, flavor.value)
    except SpecError as exc:
        _fail("invalid spec:\n" + "\n".join(f"  {d}" for d in exc.diagnostics))
    except (HostProfileError, ExportError) as exc:
        _fail(str(exc))
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(xml, nl=False)


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""
    app.command("import")(import_)
    app.command("export")(export)
