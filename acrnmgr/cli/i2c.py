"""`acrnmgr i2c list|get|set`: the simulated I2C devices of a running VM's embedded virtio-i2c adapter.

They talk to the adapter's control socket (`<adapter>.i2c.sock` in the VM's state folder), one JSON line each way
(acrnmgr/devmodel/i2c.py documents the protocol)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from acrnmgr.cli.common import OutputFormat, device_control_socket, fail

app = typer.Typer(no_args_is_help=True)

AdapterOption = Annotated[Optional[str], typer.Option("--adapter", help="The virtio-i2c device's name, when the VM "
                                                                        "has several.")]
OutputOption = Annotated[OutputFormat, typer.Option("--output", help="text or json.")]


def _socket(vm: str, adapter: str | None) -> Path:
    from acrnmgr.devices.virtio_i2c import CONTROL_SUFFIX

    return device_control_socket(
        vm, kind="virtio-i2c adapter", suffix=CONTROL_SUFFIX, device=adapter, option="--adapter",
        missing=f"VM {vm} has no running embedded virtio-i2c adapter (is it up, on the qemu engine, with a virtio-i2c "
                "device?)")


def _ask(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    from acrnmgr.devmodel.control import control_call

    try:
        answer = control_call(str(path), request)
    except OSError as exc:
        fail(f"cannot reach the virtio-i2c device model at {path}: {exc.strerror or exc}")
    except ValueError:
        fail(f"the virtio-i2c device model at {path} gave no answer")
    if not answer["ok"]:
        fail(str(answer.get("error", "the request failed")))
    return answer


def _value(text: str) -> Any:
    """A number if it reads as one, else the text (the device says what it accepts)."""
    try:
        return float(text)
    except ValueError:
        return text


def _show(answer: dict[str, Any], output: OutputFormat) -> None:
    answer = {k: v for k, v in answer.items() if k != "ok"}
    if output is OutputFormat.json:
        typer.echo(json.dumps(answer, indent=2))
    elif "value" in answer:
        typer.echo(answer["value"])
    elif "properties" in answer:
        for key, value in answer["properties"].items():
            typer.echo(f"{key}: {value}")
    else:
        for t in answer["targets"]:
            props = ", ".join(f"{k}={v}" for k, v in t["properties"].items())
            typer.echo(f"{t['target']}  {props}")


@app.command("list")
def list_(vm: Annotated[str, typer.Argument(help="The VM's name.")], adapter: AdapterOption = None,
          output: OutputOption = OutputFormat.text) -> None:
    """The devices on the VM's virtio-i2c adapter, with their properties."""
    _show(_ask(_socket(vm, adapter), {"list": True}), output)


@app.command()
def get(vm: Annotated[str, typer.Argument(help="The VM's name.")],
        target: Annotated[str, typer.Argument(help="TYPE@ADDRESS (lm75@0x48) or an address (0x48).")],
        prop: Annotated[Optional[str], typer.Argument(metavar="[PROPERTY]", help="e.g. temperature; all when "
                                                                                   "left out.")] = None,
        adapter: AdapterOption = None, output: OutputOption = OutputFormat.text) -> None:
    """A simulated I2C device's property (lm75: temperature, tos, thyst in °C, config; eeprom-24c02: file, size)."""
    request: dict[str, Any] = {"target": target}
    if prop is not None:
        request["get"] = prop
    _show(_ask(_socket(vm, adapter), request), output)


# A negative value (-3.5) is a value, not an option.
@app.command("set", context_settings={"ignore_unknown_options": True})
def set_(vm: Annotated[str, typer.Argument(help="The VM's name.")],
         target: Annotated[str, typer.Argument(help="TYPE@ADDRESS (lm75@0x48) or an address (0x48).")],
         prop: Annotated[str, typer.Argument(metavar="PROPERTY", help="e.g. temperature.")],
         value: Annotated[str, typer.Argument(help="e.g. 42.5 (°C; the LM75 keeps 0.5 °C steps).")],
         adapter: AdapterOption = None, output: OutputOption = OutputFormat.text) -> None:
    """Set what a simulated I2C device reports to the guest: acrnmgr i2c set VM lm75@0x48 temperature 42.5

    Prints the value the device now holds (an LM75 rounds to 0.5 °C)."""
    _show(_ask(_socket(vm, adapter), {"target": target, "set": prop, "value": _value(value)}), output)
