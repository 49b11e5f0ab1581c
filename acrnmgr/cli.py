"""The `acrnmgr` command line.

Each concept registers its own commands; heavy imports (jsonschema, jinja2, the device
model) happen inside the commands so `acrnmgr --help` stays fast."""

from __future__ import annotations

import typer

from acrnmgr import __version__
from acrnmgr.render import cli as compiler_cli
from acrnmgr.devmodel import cli as devmodel_cli
from acrnmgr.gitops import cli as gitops_cli
from acrnmgr.lifecycle import cli as lifecycle_cli
from acrnmgr.spec import cli as spec_cli

app = typer.Typer(
    name="acrnmgr",
    help="Configuration-driven ACRN virtual machines: validate, compile, run and reconcile VM specs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"acrnmgr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Exit codes: 0 ok, 1 invalid input or failed operation, 2 usage error."""


spec_cli.register(app)
compiler_cli.register(app)
lifecycle_cli.register(app)
gitops_cli.register(app)
app.add_typer(devmodel_cli.app, name="devmodel", help="Run the embedded Python virtio device model.")


def main() -> None:
    app()
