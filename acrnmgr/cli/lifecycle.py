"""CLI commands for the lifecycle concept: up, down, status, list, logs, console, systemd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from acrnmgr.cli.common import OutputFormat, fail, load_host, seconds
from acrnmgr.lifecycle.engine import EngineChoice

_ENGINE_HELP = ("acrn (acrn-dm on an ACRN Service VM), qemu, libvirt (a libvirt domain; see --connect), or auto: "
                "libvirt with --connect, else acrn when /dev/acrn_hsm exists, else qemu.")
_FOUND_HELP = "The VM's engine (default: the one it was started on; libvirt with --connect)."
_CONNECT_HELP = ("The libvirt engine's connection URI, e.g. qemu:///system (its default), acrn:///system, "
                 "test:///default.")


def _progress(message: str) -> None:
    typer.echo(message, err=True)


def _guard(fn, *args, **kwargs):
    """Run an operation; known failures become a message and exit 1, never a traceback."""
    from acrnmgr.host import HostProfileError
    from acrnmgr.lifecycle.errors import LifecycleError
    from acrnmgr.spec.diagnostics import SpecError

    try:
        return fn(*args, **kwargs)
    except SpecError as exc:
        fail("invalid spec:\n" + "\n".join(f"  {d}" for d in exc.errors or exc.diagnostics))
    except (LifecycleError, HostProfileError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")


def _engine(choice: EngineChoice, host, connect: Optional[str]):
    """The engine to start VMs on."""
    from acrnmgr.lifecycle.engine import get_engine

    return _guard(get_engine, choice.value, host, uri=connect)


def _engine_of(name: str, choice: EngineChoice, connect: Optional[str]):
    """The engine of the existing VM `name`."""
    from acrnmgr.lifecycle.engine import engine_of, get_engine

    if choice.value == "auto":
        return _guard(engine_of, name, uri=connect)
    return _guard(get_engine, choice.value, None, uri=connect)


def _known(choice: EngineChoice, connect: Optional[str]):
    """Every VM with a state folder, and those of the engine chosen explicitly (or by --connect)."""
    from acrnmgr.lifecycle.engine import known_vms

    explicit = choice.value != "auto" or connect is not None
    return _guard(known_vms, _engine(choice, None, connect) if explicit else None)


def _statuses(choice: EngineChoice, connect: Optional[str]) -> list[dict]:
    """The status of every known VM; one whose state files cannot be read is listed as unreadable."""
    from acrnmgr.lifecycle.errors import StateError

    def status(vm) -> dict:
        error = vm.error
        if vm.engine is not None:
            try:
                return vm.engine.status(vm.name)
            except StateError as exc:
                error = str(exc)
        return {"name": vm.name, "engine": None, "state": "unreadable", "pid": None, "spec": None, "error": error}

    return [_guard(status, vm) for vm in _known(choice, connect)]


def _complete_names(incomplete: str) -> list[str]:
    """Shell completion of VM names: the VMs with a state folder."""
    try:
        from acrnmgr.lifecycle.state import all_vms

        return [n for n in all_vms() if n.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []


# `acrnmgr status NAME` exit codes, as `systemctl is-active` gives them (LSB): 0 the VM runs (running, degraded,
# starting), 3 it does not (stopped, crashed, failed, unsupervised, unreadable), 4 no such VM.
ACTIVE_STATES = ("running", "degraded", "starting")
EXIT_NOT_RUNNING = 3
EXIT_NO_SUCH_VM = 4


def _emit(output: OutputFormat, results: list[dict]) -> None:
    if output is OutputFormat.json:
        typer.echo(json.dumps(results, indent=2))


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""

    @app.command()
    def up(
        files: List[Path] = typer.Argument(..., metavar="FILE", help="VM spec files to start."),
        engine: EngineChoice = typer.Option("auto", "--engine", help=_ENGINE_HELP),
        wait_ready: bool = typer.Option(
            False, "--wait-ready",
            help="Return once the guest is up: its console printed spec.console.ready's pattern (without one: the "
                 "VM reports running on its control channel)."),
        host: Optional[Path] = typer.Option(None, "--host", metavar="HOST.yaml",
                                            help="Host profile YAML instead of probing this machine."),
        connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
        output: OutputFormat = typer.Option(OutputFormat.text, "--output",
                                            help="text, or json: one result per VM on stdout."),
    ) -> None:
        """Start VMs from their specs (a VM already running with the same spec is left alone).

        Exit 1, with the reason and the VM's last log lines, when a VM dies during start."""
        from acrnmgr.devices import vm_from_spec
        from acrnmgr.spec.validation import load_spec

        profile = load_host(host)
        eng = _engine(engine, profile, connect)
        results = []
        for file in files:
            spec = _guard(load_spec, file, host=profile if eng.spec_host_checks else None)
            results.append(_guard(eng.up, vm_from_spec(spec), profile, wait_ready=wait_ready, progress=_progress))
        _emit(output, results)

    @app.command()
    def down(
        names: List[str] = typer.Argument(None, metavar="NAME", help="VM names.", autocompletion=_complete_names),
        all_: bool = typer.Option(False, "--all", help="Stop every VM acrnmgr started (and the --connect URI's)."),
        timeout: float = typer.Option(30.0, "--timeout", metavar="SECONDS", callback=seconds,
                                      help="Seconds to wait for a graceful shutdown before forcing."),
        force: bool = typer.Option(False, "--force", help="Skip the graceful shutdown."),
        engine: EngineChoice = typer.Option("auto", "--engine", help=_FOUND_HELP),
        connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
        output: OutputFormat = typer.Option(OutputFormat.text, "--output",
                                            help="text, or json: one result per VM on stdout."),
    ) -> None:
        """Stop VMs: graceful shutdown, then forced power-off, then SIGKILL (reported as such)."""
        if all_ == bool(names):
            typer.echo("error: give VM names or --all (not both)", err=True)
            raise typer.Exit(2)
        if all_:
            targets = []
            for vm in _known(engine, connect):
                if vm.engine is None:
                    fail(f"{vm.name}: {vm.error}")
                targets.append((vm.name, vm.engine))
        else:
            targets = [(name, _engine_of(name, engine, connect)) for name in names]
        results = [_guard(eng.down, name, timeout=timeout, force=force, progress=_progress) for name, eng in targets]
        _emit(output, results)

    @app.command()
    def status(
        name: Optional[str] = typer.Argument(None, metavar="NAME", help="VM name (default: all VMs).",
                                             autocompletion=_complete_names),
        output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text or json."),
        engine: EngineChoice = typer.Option("auto", "--engine", help=_FOUND_HELP),
        connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
    ) -> None:
        """Show whether VMs are running, degraded, stopped or crashed (with exit code and last log lines).

        Exit codes, as systemctl is-active gives them: 0 the VM runs (running, degraded or starting), 3 it
        does not (stopped, crashed, ...), 4 no VM has that name. Without NAME: 0, or 3 when any VM does not run."""
        from acrnmgr.lifecycle.state import all_vms, check_name

        if name:
            _guard(check_name, name)
            if name not in all_vms() and engine.value == "auto" and connect is None:
                typer.echo(f"error: no VM named {name} (known: {', '.join(all_vms()) or 'none'})", err=True)
                raise typer.Exit(EXIT_NO_SUCH_VM)
            results = [_guard(_engine_of(name, engine, connect).status, name)]
        else:
            results = _statuses(engine, connect)
        if output is OutputFormat.json:
            typer.echo(json.dumps(results[0] if name else results, indent=2))
        else:
            for st in results:
                _print_status(st)
        if any(st.get("state") not in ACTIVE_STATES for st in results):
            raise typer.Exit(EXIT_NOT_RUNNING)

    @app.command("list")
    def list_(
        output: OutputFormat = typer.Option(OutputFormat.text, "--output", help="text or json."),
        engine: EngineChoice = typer.Option(
            "auto", "--engine", help="Also list this engine's VMs (libvirt: the domains acrnmgr defined)."),
        connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
    ) -> None:
        """List the VMs acrnmgr knows about (`forget` removes a stopped or crashed one)."""
        vms: list[dict[str, Any]] = [{k: st.get(k) for k in ("name", "engine", "state", "pid", "spec")}
                                     for st in _statuses(engine, connect)]
        if output is OutputFormat.json:
            typer.echo(json.dumps(vms, indent=2))
            return
        rows = [("NAME", "ENGINE", "STATE", "PID", "SPEC")] + [
            (v["name"], v["engine"] or "-", v["state"], str(v["pid"] or "-"), v["spec"] or "-") for v in vms
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            # strict=False: four widths for five columns; the last (SPEC) is not padded
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])

    @app.command()
    def logs(
        name: str = typer.Argument(..., metavar="NAME", help="VM name.", autocompletion=_complete_names),
        follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new output until the VM stops."),
        tail: Optional[int] = typer.Option(None, "-n", "--tail", metavar="N", min=0,
                                           help="Only the last N lines of each log (then new ones, with -f)."),
        engine: EngineChoice = typer.Option("auto", "--engine", help=_FOUND_HELP),
        connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
    ) -> None:
        """Print the VM's logs: guest console, VM process, device models, supervisor."""
        from acrnmgr.lifecycle import logs as logs_mod

        _guard(logs_mod.show, _engine_of(name, engine, connect), name, follow, tail)

    @app.command()
    def forget(
        names: List[str] = typer.Argument(..., metavar="NAME", help="VM names.", autocompletion=_complete_names),
        engine: EngineChoice = typer.Option("auto", "--engine", help=_FOUND_HELP),
        connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
    ) -> None:
        """Forget stopped or crashed VMs: remove their records and logs, so `list` no longer shows them.

        A running VM is refused (stop it with `down` first)."""
        for name in names:
            eng = _engine_of(name, engine, connect)
            if not hasattr(eng, "forget"):
                fail(f"the {eng.name} engine keeps {name}'s records itself (libvirt: virsh undefine {name})")
            _guard(eng.forget, name, progress=_progress)

    @app.command()
    def console(
        name: str = typer.Argument(..., metavar="NAME", help="VM name.", autocompletion=_complete_names),
        port: Optional[str] = typer.Option(None, "--port", metavar="NAME",
                                           help="The console port to attach to, e.g. com2 or a virtio-console "
                                                "port's name (default: the first stdio or socket console)."),
        linger: float = typer.Option(2.0, "--linger", metavar="SECONDS",
                                     help="With stdin not a terminal: after it ends, wait until the console is "
                                          "quiet this long."),
        engine: EngineChoice = typer.Option("auto", "--engine", help=_FOUND_HELP),
        connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
    ) -> None:
        """Attach to the VM's console (socket, pty or tty). Detach with Ctrl-].

        From a pipe, send the input and print what the console answers: echo 'uname -a' | acrnmgr console NAME"""
        from acrnmgr.lifecycle import logs as logs_mod

        _guard(logs_mod.attach_console, _engine_of(name, engine, connect), name, port, linger)

    @app.command()
    def systemd(
        file: Path = typer.Argument(..., metavar="FILE", help="VM spec file."),
        engine: EngineChoice = typer.Option("auto", "--engine", help=_ENGINE_HELP),
        connect: Optional[str] = typer.Option(None, "--connect", metavar="URI", help=_CONNECT_HELP),
        unit_dir: Path = typer.Option(Path("/etc/systemd/system"), "--dir", help="Where to write the unit."),
        timeout: float = typer.Option(60.0, "--timeout", callback=seconds,
                                      help="Graceful shutdown timeout for `down` at stop."),
    ) -> None:
        """Write a systemd unit that runs `up` at boot and `down` at shutdown (the role of acrnd)."""
        from acrnmgr.lifecycle import systemd as systemd_mod

        path = _guard(systemd_mod.write_unit, file, engine.value, connect, unit_dir, timeout)
        typer.echo(str(path))
        _progress(f"enable it with: systemctl daemon-reload && systemctl enable --now {path.name}")


def _print_status(st: dict) -> None:
    from acrnmgr.lifecycle.manager import describe_exit

    line = f"{st['name']}: {st['state']} (engine {st['engine'] or 'unknown'}"
    if st.get("pid"):
        line += f", pid {st['pid']}"
    if st.get("vm_status"):
        line += f", vm reports {st['vm_status']}"
    typer.echo(line + ")")
    for d in st.get("degraded", []):
        typer.echo(f"  device {d['device'] or d['process']}: its device model died "
                   f"({describe_exit(d['exit_code'], d['signal'])})")
    if st["state"] == "unreadable":
        typer.echo(f"  {st['error']}")
    elif st["state"] in ("crashed", "failed") and "exit_code" in st:
        how = describe_exit(st["exit_code"], st.get("signal"))
        typer.echo(f"  {st.get('error') or 'the VM process exited'} ({how}); last log lines:")
        for line in st.get("log", []):
            typer.echo(f"  | {line}")
