"""CLI commands for the lifecycle concept: up, down, status, list, logs, console, systemd."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from acrnmgr.cliutil import OutputFormat, fail, load_host


class EngineChoice(str, Enum):
    auto = "auto"
    acrn = "acrn"
    qemu = "qemu"
    libvirt = "libvirt"  # acrnmgr.libvirt.engine, with --connect URI


_CONNECT_HELP = "libvirt connection URI (the libvirt engine), e.g. qemu:///system, acrn:///system, test:///default."


def _progress(message: str) -> None:
    typer.echo(message, err=True)


def _guard(fn, *args, **kwargs):
    """Run an operation; known failures become a message and exit 1, never a traceback."""
    from acrnmgr.host import HostProfileError
    from acrnmgr.lifecycle.engine import LifecycleError
    from acrnmgr.spec.diagnostics import SpecError

    try:
        return fn(*args, **kwargs)
    except SpecError as exc:
        fail("invalid spec:\n" + "\n".join(f"  {d}" for d in exc.errors or exc.diagnostics))
    except (LifecycleError, HostProfileError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""

    @app.command()
    def up(
        files: List[Path] = typer.Argument(..., help="VM spec files to start."),
        engine: EngineChoice = typer.Option(EngineChoice.auto, "--engine", help="acrn (acrn-dm on an ACRN Service VM), qemu, or auto (acrn when /dev/acrn_hsm exists)."),
        wait_ready: bool = typer.Option(False, "--wait-ready", help="Return once the VM reports running on its control channel."),
        host: Optional[Path] = typer.Option(None, "--host", help="Host profile YAML instead of probing this machine."),
        connect: Optional[str] = typer.Option(None, "--connect", help=_CONNECT_HELP + " Implies --engine libvirt."),
    ) -> None:
        """Start VMs from their specs (a VM already running with the same spec is left alone)."""
        from acrnmgr.lifecycle import manager

        profile = load_host(host)
        for file in files:
            if connect or engine is EngineChoice.libvirt:
                from acrnmgr.libvirt import engine as libvirt_engine

                _guard(libvirt_engine.up, str(file), connect or "qemu:///system", profile, _progress)
                continue
            _guard(manager.up, str(file), engine.value, wait_ready, profile, _progress)

    @app.command()
    def down(
        names: List[str] = typer.Argument(None, help="VM names."),
        all_: bool = typer.Option(False, "--all", help="Stop every VM acrnmgr started."),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for a graceful shutdown before forcing."),
        force: bool = typer.Option(False, "--force", help="Skip the graceful shutdown."),
        connect: Optional[str] = typer.Option(None, "--connect", help=_CONNECT_HELP),
    ) -> None:
        """Stop VMs: graceful shutdown, then forced power-off, then SIGKILL (reported as such)."""
        from acrnmgr.lifecycle import manager
        from acrnmgr.lifecycle.state import all_vms

        if all_ == bool(names):
            typer.echo("error: give VM names or --all (not both)", err=True)
            raise typer.Exit(2)
        if connect:
            from acrnmgr.libvirt import engine as libvirt_engine

            targets = [v["name"] for v in _guard(libvirt_engine.list_vms, connect)] if all_ else names
            for name in targets:
                _guard(libvirt_engine.down, name, connect, timeout, force, _progress)
            return
        for name in all_vms() if all_ else names:
            _guard(manager.down, name, timeout, force, _progress)

    @app.command()
    def status(
        name: Optional[str] = typer.Argument(None, help="VM name (default: all VMs)."),
        output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text or json."),
        connect: Optional[str] = typer.Option(None, "--connect", help=_CONNECT_HELP),
    ) -> None:
        """Show whether VMs are running, degraded, stopped or crashed (with exit code and last log lines)."""
        from acrnmgr.lifecycle import manager
        from acrnmgr.lifecycle.state import all_vms

        if connect:
            from acrnmgr.libvirt import engine as libvirt_engine

            results = ([_guard(libvirt_engine.status, name, connect)] if name
                       else _guard(libvirt_engine.list_vms, connect))
        else:
            results = [_guard(manager.status, n) for n in ([name] if name else all_vms())]
        if output is OutputFormat.json:
            typer.echo(json.dumps(results[0] if name else results, indent=2))
            return
        for st in results:
            _print_status(st)

    @app.command("list")
    def list_(output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text or json.")) -> None:
        """List the VMs acrnmgr knows about."""
        from acrnmgr.lifecycle import manager

        vms = _guard(manager.list_vms)
        if output is OutputFormat.json:
            typer.echo(json.dumps(vms, indent=2))
            return
        rows = [("NAME", "ENGINE", "STATE", "PID", "SPEC")] + [
            (v["name"], v["engine"], v["state"], str(v["pid"] or "-"), v["spec"] or "-") for v in vms
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])

    @app.command()
    def logs(
        name: str = typer.Argument(..., help="VM name."),
        follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new output until the VM stops."),
    ) -> None:
        """Print the VM's logs: guest console, VM process, device models, supervisor."""
        from acrnmgr.lifecycle import logs as logs_mod

        _guard(logs_mod.show, name, follow)

    @app.command()
    def console(name: str = typer.Argument(..., help="VM name.")) -> None:
        """Attach to the VM's console (socket, pty or tty). Detach with Ctrl-]."""
        from acrnmgr.lifecycle import logs as logs_mod

        _guard(logs_mod.attach_console, name)

    @app.command()
    def systemd(
        file: Path = typer.Argument(..., help="VM spec file."),
        engine: EngineChoice = typer.Option(EngineChoice.auto, "--engine"),
        unit_dir: Path = typer.Option(Path("/etc/systemd/system"), "--dir", help="Where to write the unit."),
        timeout: float = typer.Option(60.0, "--timeout", help="Graceful shutdown timeout for `down` at stop."),
    ) -> None:
        """Write a systemd unit that runs `up` at boot and `down` at shutdown (the role of acrnd)."""
        from acrnmgr.lifecycle import systemd as systemd_mod

        path = _guard(systemd_mod.write_unit, file, engine.value, unit_dir, timeout)
        typer.echo(str(path))
        _progress(f"enable it with: systemctl daemon-reload && systemctl enable --now {path.name}")


def _print_status(st: dict) -> None:
    line = f"{st['name']}: {st['state']} (engine {st['engine']}"
    if st.get("pid"):
        line += f", pid {st['pid']}"
    if st.get("vm_status"):
        line += f", vm reports {st['vm_status']}"
    typer.echo(line + ")")
    for d in st.get("degraded", []):
        how = f"signal {d['signal']}" if d.get("signal") else f"exit code {d['exit_code']}"
        typer.echo(f"  device {d['device'] or d['process']}: its device model died ({how})")
    if st["state"] in ("crashed", "failed"):
        how = f"signal {st['signal']}" if st.get("signal") else f"exit code {st.get('exit_code')}"
        typer.echo(f"  {st.get('error') or 'the VM process exited'} ({how}); last log lines:")
        for line in st.get("log", []):
            typer.echo(f"  | {line}")
