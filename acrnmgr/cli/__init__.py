"""The `acrnmgr` command line.

Each concept registers its own commands; heavy imports (jsonschema, jinja2, the device
model) happen inside the commands so `acrnmgr --help` stays fast."""

from __future__ import annotations

import typer

from acrnmgr import __version__
from acrnmgr.cli import devmodel as devmodel_cli
from acrnmgr.cli import gitops as gitops_cli
from acrnmgr.cli import gpio as gpio_cli
from acrnmgr.cli import helpfmt
from acrnmgr.cli import host as host_cli
from acrnmgr.cli import i2c as i2c_cli
from acrnmgr.cli import images as images_cli
from acrnmgr.cli import lifecycle as lifecycle_cli
from acrnmgr.cli import render as render_cli
from acrnmgr.cli import spec as spec_cli

helpfmt.install()

app = typer.Typer(
    name="acrnmgr",
    help="Configuration-driven ACRN virtual machines: validate, compile, run and reconcile VM specs.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"acrnmgr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Exit codes: 0 ok, 1 invalid input or failed operation, 2 usage error."""


spec_cli.register(app)
render_cli.register(app)
lifecycle_cli.register(app)
gitops_cli.register(app)
host_cli.register(app)
app.add_typer(images_cli.app, name="image", help="Build bootable guest images from Debian's packages.")
app.add_typer(devmodel_cli.app, name="devmodel", help="Run the embedded Python virtio device model.")
app.add_typer(gpio_cli.app, name="gpio", help="Read and drive a VM's simulated GPIO lines (qemu engine).")
app.add_typer(i2c_cli.app, name="i2c", help="Read and set the simulated I2C devices of a running VM.")


def main() -> None:
    app()
