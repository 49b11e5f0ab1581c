"""`acrnmgr gpio get|set`: the host's side of a VM's simulated GPIO lines (the embedded virtio-gpio's control
socket in the VM's state folder)."""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Optional

import typer

from acrnmgr.cli.common import OutputFormat, device_control_socket, fail
from acrnmgr.cli.lifecycle import _complete_names

app = typer.Typer(no_args_is_help=True)

def _wrong_engine(name: str, engine: str | None) -> str:
    if engine == "acrn":
        return (f"{name} runs on the acrn engine, where virtio-gpio is acrn-dm's and its lines are host GPIO lines: "
                "read and drive them on the host (gpioget/gpioset)")
    return (f"{name} runs on the {engine} engine, which has no virtio-gpio (libvirt has no GPIO device); "
            "acrnmgr gpio serves the qemu engine's")


def _control_socket(name: str) -> str:
    """The control socket of VM `name`'s embedded virtio-gpio (a VM has one); a clear failure when there is none
    to reach."""
    from acrnmgr.devices.virtio_gpio import CONTROL_SUFFIX

    return str(device_control_socket(
        name, kind="virtio-gpio", suffix=CONTROL_SUFFIX,
        missing=f"{name} has no virtio-gpio (add `- type: virtio-gpio` with `lines:` to its spec)",
        wrong_engine=functools.partial(_wrong_engine, name)))


def _call(name: str, request: dict[str, Any]) -> dict[str, Any]:
    from acrnmgr.devmodel.control import control_call

    path = _control_socket(name)
    try:
        answer = control_call(path, request)
    except (OSError, ValueError) as exc:
        fail(f"{name}: the virtio-gpio device model does not answer on {path}: {exc}")
    if not answer["ok"]:
        fail(f"{name}: {answer.get('error')}")
    lines: list[dict[str, Any]] = answer.get("lines") or []
    return {"name": name, "interrupts": bool(answer.get("interrupts")), "lines": lines}


def _show(result: dict[str, Any], output: OutputFormat, value_only: bool) -> None:
    if output == OutputFormat.json:
        typer.echo(json.dumps(result, indent=2))
        return
    lines = result["lines"]
    if value_only:
        typer.echo("" if lines[0]["value"] is None else lines[0]["value"])
        return
    rows = [("LINE", "NAME", "DIRECTION", "VALUE", "DRIVEN BY", "IRQ", "SOURCE")]
    for ln in lines:
        direction = ln["direction"] + (" (fixed)" if ln["fixedDirection"] else "")
        rows.append((str(ln["index"]), ln["name"] or "-", direction,
                     "?" if ln["value"] is None else str(ln["value"]), ln["drivenBy"], ln["irq"], ln["source"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not result["interrupts"]:
        typer.echo("note: the guest has no GPIO interrupts: its front-end did not negotiate VIRTIO_GPIO_F_IRQ "
                   "(QEMU's vhost-user-gpio-pci before 9.0 does not offer it)", err=True)


@app.command("get")
def get(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The VM.", autocompletion=_complete_names)],
    line: Annotated[Optional[str], typer.Argument(help="A line's name (default: every line).")] = None,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="text or json.")] = OutputFormat.text,
) -> None:
    """Show the VM's GPIO lines: direction, level, who drives each, interrupt. With LINE, print its level (0/1)."""
    request: dict[str, Any] = {"op": "get"} if line is None else {"op": "get", "line": line}
    _show(_call(name, request), output, value_only=line is not None)


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The VM.", autocompletion=_complete_names)],
    line: Annotated[str, typer.Argument(help="The line's name.")],
    value: Annotated[int, typer.Argument(min=0, max=1, help="The level to drive: 0 or 1.")],
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="text or json.")] = OutputFormat.text,
) -> None:
    """Drive a simulated input line to VALUE; an edge raises the guest's interrupt if it asked for one.

    The host drives a line declared `direction: in`, or one the guest uses as an input (or not at all)."""
    _show(_call(name, {"op": "set", "line": line, "value": value}), output, value_only=False)
