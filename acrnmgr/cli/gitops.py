"""CLI commands for the gitops concept: import, export, apply, diff.

Heavy modules (libvirt, the compiler, PyYAML) load inside the commands."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Optional

import typer

from acrnmgr.cli.common import OutputFormat, fail, load_host, seconds
from acrnmgr.lifecycle.engine import EngineChoice


class ExportFormat(str, enum.Enum):
    libvirt = "libvirt"


class Flavor(str, enum.Enum):
    qemu = "qemu"
    acrn = "acrn"


def import_(
    file: Path = typer.Argument(..., metavar="FILE",
                                help="ACRN scenario.xml, a generated launch_user_vm_idN.sh, or libvirt domain XML."),
    out_dir: Optional[Path] = typer.Option(None, "-o", "--out-dir", metavar="DIR",
                                           help="Write one <name>.yaml per VM here (default: YAML on stdout)."),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text (YAML) or json (a report)."),
    board: Optional[Path] = typer.Option(None, "--board", metavar="BOARD.xml",
                                         help="ACRN board XML: maps pcpu_id to LAPIC IDs and classifies passthrough "
                                              "devices."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files in DIR."),
    bios_as_ovmf: bool = typer.Option(False, "--bios-as-ovmf",
                                      help="libvirt: import a BIOS-booted domain with ACRN's OVMF (UEFI) instead."),
    keep_addresses: bool = typer.Option(False, "--keep-addresses",
                                        help="libvirt: keep the domain's PCI slots (default: acrnmgr assigns them)."),
    base_dir: Optional[Path] = typer.Option(None, "--base-dir", metavar="DIR",
                                            help="Resolve relative image paths against DIR (where ACRN's launch "
                                                 "script runs); default: keep them relative."),
) -> None:
    """Turn ACRN's own configuration (or a libvirt domain) into acrnmgr specs.

    What could not be mapped is listed (stderr, a comment in each file, or `warnings` in JSON).
    Nothing in a launch script is executed. Exit 1 if nothing could be imported or a spec
    does not validate."""
    from acrnmgr.importers import ImportError_, import_file
    from acrnmgr.importers.output import spec_yaml, validate, write_specs

    try:
        result = import_file(file, board=board, base_dir=base_dir, bios_as_ovmf=bios_as_ovmf,
                             keep_addresses=keep_addresses)
    except ImportError_ as exc:
        fail(str(exc))
    problems = {s.name: validate(s, out_dir, result.source) for s in result.specs}
    files: dict[str, str] = {}
    if out_dir is not None and not any(problems.values()):
        try:
            files = {s.name: str(p) for s, p in zip(result.specs, write_specs(result, out_dir, force), strict=True)}
        except (FileExistsError, OSError) as exc:
            fail(str(exc))
    if output is OutputFormat.json:
        report = result.to_dict()
        for vm in report["vms"]:
            vm["errors"] = problems[vm["name"]]
            if vm["name"] in files:
                vm["file"] = files[vm["name"]]
        report["ok"] = not any(problems.values()) and not result.errors
        typer.echo(json.dumps(report, indent=2))
    else:
        for w in result.warnings:
            typer.echo(f"warning: {w}", err=True)
        for e in result.errors:
            typer.echo(f"error: {e}", err=True)
        for s in result.specs:
            for w in s.warnings:
                typer.echo(f"warning: {s.name}: {w}", err=True)
        if out_dir is not None:
            for path in files.values():
                typer.echo(path)
        elif not any(problems.values()):
            typer.echo("---\n".join(spec_yaml(s, result.source) for s in result.specs), nl=False)
    bad = {n: p for n, p in problems.items() if p}
    if result.errors and not bad:
        raise typer.Exit(1)  # some VMs of the file could not be imported (their siblings were)
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
    from acrnmgr.render.libvirt import ExportError, export_domain
    from acrnmgr.spec.diagnostics import SpecError
    from acrnmgr.spec.validation import load_spec

    profile = load_host(host)
    try:
        spec = load_spec(file, check_paths=not no_check_paths)
        xml, warnings = export_domain(spec, profile, flavor.value)
    except SpecError as exc:
        fail("invalid spec:\n" + "\n".join(f"  {d}" for d in exc.diagnostics))
    except ExportError as exc:
        fail(str(exc))
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(xml, nl=False)


_ENGINE_HELP = ("Engine for VMs to create: acrn, qemu, libvirt (see --connect), or auto (libvirt with --connect, "
                "else acrn on an ACRN Service VM, else qemu). A VM that runs stays on its engine.")
_CONNECT_HELP = ("The libvirt engine's connection URI, e.g. qemu:///system (its default); that URI's domains are "
                 "live state too.")


_ROOT_HELP = ("The folder kustomization resources and patches may reach (default: DIR itself), e.g. the repository "
              "that holds a per-host overlay DIR and its base. Nothing outside it is read.")


def _desired(directory: Path, engine, host, root: Optional[Path] = None):
    """The specs in `directory`, checked against `host` when the engine runs VMs here."""
    from acrnmgr.gitops.desired import load_desired

    desired = load_desired(directory, host if engine.spec_host_checks else None, root)
    for line in desired.skipped:
        typer.echo(line, err=True)
    if desired.errors:
        for d in desired.errors:
            typer.echo(str(d), err=True)
        fail(f"{len(desired.errors)} problem(s) in {directory}; nothing was changed")
    if not desired.vms:
        fail(f"no VM specs in {directory} (a folder of kind: VM YAML or JSON files); nothing was changed")
    return desired


def _progress(message: str) -> None:
    typer.echo(message, err=True)


def _guard(fn, *args, **kwargs):
    """Run an engine operation; a LifecycleError (e.g. libvirt unreachable) is a clean exit 1."""
    from acrnmgr.lifecycle.errors import LifecycleError

    try:
        return fn(*args, **kwargs)
    except LifecycleError as exc:
        fail(str(exc))


def _engine(choice: EngineChoice, host, connect: Optional[str]):
    from acrnmgr.lifecycle.engine import get_engine

    return _guard(get_engine, choice.value, host, uri=connect)


def _explicit(choice: EngineChoice, connect: Optional[str]) -> bool:
    """An engine chosen by name or by --connect: its own VMs are live state too."""
    return choice.value != "auto" or connect is not None


def apply(
    directory: Path = typer.Argument(..., metavar="DIR", help="Folder of VM specs (recursive; multi-document "
                                     "YAML; kustomization.yaml overlays)."),
    engine: EngineChoice = typer.Option("auto", "--engine", help=_ENGINE_HELP),
    connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and the argv differences; change nothing."),
    allow_restart: bool = typer.Option(False, "--allow-restart", help="Restart VMs whose spec changed."),
    prune: bool = typer.Option(False, "--prune", help="Stop running VMs that no spec names any more."),
    wait: bool = typer.Option(False, "--wait", help="Block until every started VM runs (or has failed)."),
    timeout: float = typer.Option(30.0, "--timeout", metavar="SECONDS", callback=seconds,
                                  help="Graceful shutdown timeout for update/prune."),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text (a table) or json."),
    host: Optional[Path] = typer.Option(None, "--host", metavar="HOST.yaml", help="Host profile instead of probing."),
    root: Optional[Path] = typer.Option(None, "--root", metavar="DIR", help=_ROOT_HELP),
) -> None:
    """Make the running VMs match the specs in DIR.

    Exit 0 when everything is done (or in sync), 1 when a VM failed or the specs are invalid."""
    from acrnmgr.gitops.apply import apply_lock, execute, format_table, make_plan

    profile = load_host(host)
    eng = _engine(engine, profile, connect)
    desired = _desired(directory, eng, profile, root)
    with apply_lock(_progress):
        changes = _guard(make_plan, desired, eng, profile, explicit=_explicit(engine, connect), with_diff=dry_run,
                         allow_restart=allow_restart, prune=prune)
        if not dry_run:
            execute(changes, desired, profile, wait, timeout, _progress)
    failed = [c.name for c in changes if c.result == "failed"]
    if output is OutputFormat.json:
        typer.echo(json.dumps({"dryRun": dry_run, "changes": [c.to_dict() for c in changes], "failed": failed},
                              indent=2))
    else:
        typer.echo(format_table(changes))
        if dry_run:
            for c in changes:
                for line in c.diff:
                    typer.echo(line)
        if dry_run:
            would = [f"{sum(c.action == a and not c.blocked for c in changes)} {a}"
                     for a in ("create", "update", "prune")]
            blocked = [c.name for c in changes if c.blocked]
            unchanged = sum(c.action == "unchanged" for c in changes)
            summary = "dry run: would " + ", ".join(would) + f"; {unchanged} unchanged"
            if blocked:
                summary += f"; {len(blocked)} would be skipped ({', '.join(blocked)})"
            typer.echo(summary, err=True)
        else:
            done = sum(c.result == "done" for c in changes)
            skipped = [c.name for c in changes if c.result == "skipped"]
            summary = f"{done} done, {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else "")
            if skipped:
                summary += f", {len(skipped)} skipped ({', '.join(skipped)})"
            typer.echo(summary, err=True)
    raise typer.Exit(1 if failed else 0)


def diff(
    directory: Path = typer.Argument(..., metavar="DIR", help="Folder of VM specs."),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 3 when the live state differs from DIR."),
    engine: EngineChoice = typer.Option("auto", "--engine", help=_ENGINE_HELP),
    connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
    output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text (unified diffs) or json."),
    host: Optional[Path] = typer.Option(None, "--host", metavar="HOST.yaml", help="Host profile instead of probing."),
    root: Optional[Path] = typer.Option(None, "--root", metavar="DIR", help=_ROOT_HELP),
) -> None:
    """Show, per VM, the unified diff between the running argv and the argv DIR asks for."""
    from acrnmgr.gitops.apply import make_plan

    profile = load_host(host)
    eng = _engine(engine, profile, connect)
    desired = _desired(directory, eng, profile, root)
    changes = _guard(make_plan, desired, eng, profile, explicit=_explicit(engine, connect), with_diff=True,
                     allow_restart=True, prune=True)
    drift = [c for c in changes if c.action != "unchanged"]
    if output is OutputFormat.json:
        typer.echo(json.dumps({"inSync": not drift, "changes": [c.to_dict() for c in changes]}, indent=2))
    else:
        for c in drift:
            typer.echo(f"# {c.name}: {c.action} ({c.reason})")
            for line in c.diff:
                typer.echo(line)
        if not drift:
            typer.echo("in sync", err=True)
    raise typer.Exit(3 if drift and exit_code else 0)


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""
    app.command("import")(import_)
    app.command("export")(export)
    app.command("apply")(apply)
    app.command("diff")(diff)
