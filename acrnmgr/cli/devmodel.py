"""`acrnmgr devmodel ...` commands."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from acrnmgr.devmodel.device import VirtioDevice

app = typer.Typer(no_args_is_help=True)


class DeviceKind(str, enum.Enum):
    blk = "blk"
    net = "net"
    console = "console"
    rng = "rng"
    gpio = "gpio"
    i2c = "i2c"


class LogLevel(str, enum.Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"acrnmgr devmodel serve: {message}", err=True)
    return typer.Exit(1)


def _usage(message: str) -> typer.Exit:
    typer.echo(f"acrnmgr devmodel serve: {message}", err=True)
    return typer.Exit(2)


@app.command()
def serve(
    device: Annotated[DeviceKind, typer.Option("--device", help="Device type to serve.")],
    socket_path: Annotated[Path, typer.Option("--socket", help="vhost-user Unix socket to listen on (created 0600; "
                                              "its directory is created 0700 if missing and must not be "
                                              "group/world-writable).")],
    image: Annotated[Path | None, typer.Option("--image", help="blk: raw disk image file or block device.")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="blk: refuse writes (VIRTIO_BLK_F_RO).")] = False,
    queues: Annotated[int, typer.Option("--queues", min=1, max=64, help="blk: number of request queues.")] = 1,
    tap: Annotated[str | None, typer.Option("--tap", help="net: tap interface name (created if missing).")] = None,
    mac: Annotated[str | None, typer.Option("--mac", help="net: MAC address offered to the guest.")] = None,
    pty: Annotated[bool, typer.Option("--pty", help="console: back the console with a new pty (default).")] = False,
    console_socket: Annotated[Path | None, typer.Option("--console-socket", help="console: Unix socket to serve the "
                                                        "console on instead of a pty.")] = None,
    line: Annotated[list[str] | None, typer.Option("--line", help="gpio: a line, in order: NAME[:in|out][=0|1]"
                                                   "[@gpiochipN:OFFSET|NAME]; in: the host drives it, out: the "
                                                   "guest does; @: a host GPIO line instead of a simulated one. "
                                                   "Repeat for each line.")] = None,
    eeprom: Annotated[list[str] | None, typer.Option("--eeprom", metavar="ADDR=FILE", help="i2c: a 24c02 EEPROM at "
                                                     "ADDR backed by FILE (at most 256 bytes; written on every guest "
                                                     "write). Repeatable.")] = None,
    lm75: Annotated[list[str] | None, typer.Option("--lm75", metavar="ADDR[=CELSIUS]", help="i2c: an LM75 sensor at "
                                                   "ADDR (default 25 °C). Repeatable.")] = None,
    host_client: Annotated[list[str] | None, typer.Option("--host-client", metavar="BUS:ADDR", help="i2c: pass "
                                                          "client ADDR of /dev/i2c-BUS through. Repeatable.")] = None,
    control_socket: Annotated[Path | None, typer.Option("--control-socket", help="gpio, i2c: Unix socket (created "
                                                        "0600) where the host reads and drives the device "
                                                        "(`acrnmgr gpio`, `acrnmgr i2c`).")] = None,
    log_level: Annotated[LogLevel, typer.Option("--log-level", help="Logging verbosity (stderr).")] = LogLevel.info,
    stall_timeout: Annotated[float, typer.Option("--stall-timeout", min=0.01, max=3600,
                                                 help="Seconds a front-end may take to finish sending a message "
                                                      "it began; then it is disconnected.")] = 5.0,
    poll_us: Annotated[int, typer.Option("--poll-us", min=0, max=10_000,
                                         help="Longest the device polls for the front-end's next kick or message "
                                              "before it sleeps, in microseconds; adapted to how soon they come "
                                              "(as QEMU's poll-max-ns). Lowers latency at a low queue depth for "
                                              "some CPU; 0: never poll.")] = 32,
) -> None:
    """Serve one virtio device over vhost-user in the foreground until SIGTERM/SIGINT.

    The front-end (QEMU: -chardev socket,path=SOCKET,reconnect=1) may disconnect and reconnect;
    the device keeps its backing resources across sessions."""
    import logging
    import signal

    kind = device.value
    if kind != "blk" and (image is not None or read_only or queues != 1):
        raise _usage("--image, --read-only and --queues apply to --device blk only")
    if kind != "net" and (tap is not None or mac is not None):
        raise _usage("--tap and --mac apply to --device net only")
    if kind != "console" and (pty or console_socket is not None):
        raise _usage("--pty and --console-socket apply to --device console only")
    if kind not in ("gpio", "i2c") and control_socket is not None:
        raise _usage("--control-socket applies to --device gpio and i2c only")
    if kind != "gpio" and line:
        raise _usage("--line applies to --device gpio only")
    if kind == "gpio" and not line:
        raise _usage("--device gpio needs at least one --line")
    if pty and console_socket is not None:
        raise _usage("--pty and --console-socket are mutually exclusive")
    if kind != "i2c" and (eeprom or lm75 or host_client):
        raise _usage("--eeprom, --lm75 and --host-client apply to --device i2c only")
    if kind == "blk" and image is None:
        raise _usage("--device blk needs --image")
    if kind == "net" and tap is None:
        raise _usage("--device net needs --tap")
    if mac is not None and not _MAC.match(mac):
        raise _fail(f"--mac {mac!r} is not a MAC address like 52:54:00:12:34:56")

    logging.basicConfig(level=log_level.value.upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    log = logging.getLogger("acrnmgr.devmodel")

    from acrnmgr.devmodel.server import ServerError, VhostUserServer

    try:
        if kind == "i2c":
            dev = _make_i2c(eeprom or [], lm75 or [], host_client or [], control_socket)
        else:
            dev = _make_device(kind, image=image, read_only=read_only, queues=queues, tap=tap, mac=mac,
                               console_socket=console_socket, lines=line or [], control_socket=control_socket)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot open the {kind} device: {exc}") from None
    try:
        try:
            server = VhostUserServer(dev, socket_path, stall_timeout=stall_timeout, poll_max=poll_us * 1e-6)
        except ServerError as exc:
            raise _fail(str(exc)) from None
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            server.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        pty_path = getattr(dev, "pty_path", None)
        if pty_path:
            log.info("console pty: %s", pty_path)
        server.serve_forever()
    finally:
        dev.close()


def _address(text: str, option: str) -> int:
    try:
        addr = int(text, 0)
    except ValueError:
        raise _usage(f"{option}: {text!r} is not an I2C address (0x08..0x77, e.g. 0x50)") from None
    if not 0 <= addr <= 0x7F:
        raise _usage(f"{option}: {text!r} is not a 7-bit I2C address")
    return addr


def _make_i2c(eeproms: list[str], lm75s: list[str], clients: list[str], control: Path | None) -> VirtioDevice:
    """The adapter the options describe: every option is checked (usage errors) before any file is opened."""
    from acrnmgr.devmodel.i2c import Eeprom24c02, HostAdapter, I2cDevice, I2cTarget, Lm75

    taken: dict[int, str] = {}

    def claim(text: str, option: str) -> int:
        addr = _address(text, option.split()[0])
        if addr in taken:
            raise _usage(f"{option}: address {addr:#04x} is already given by {taken[addr]}")
        taken[addr] = option
        return addr

    files: dict[int, str] = {}
    for item in eeproms:
        addr_text, sep, file = item.partition("=")
        if not sep or not file:
            raise _usage(f"--eeprom {item!r}: use ADDR=FILE, e.g. 0x50=eeprom.bin")
        files[claim(addr_text, f"--eeprom {item}")] = file
    temperatures: dict[int, float] = {}
    for item in lm75s:
        addr_text, sep, temp = item.partition("=")
        addr = claim(addr_text, f"--lm75 {item}")
        try:
            temperatures[addr] = float(temp) if sep else 25.0
        except ValueError:
            raise _usage(f"--lm75 {item!r}: {temp!r} is not a temperature in °C") from None
    buses: dict[int, list[int]] = {}
    for item in clients:
        bus_text, sep, addr_text = item.partition(":")
        if not sep or not bus_text.isdigit():
            raise _usage(f"--host-client {item!r}: use BUS:ADDR, e.g. 2:0x1c for client 0x1c of /dev/i2c-2")
        buses.setdefault(int(bus_text), []).append(claim(addr_text, f"--host-client {item}"))

    targets: dict[int, I2cTarget] = {}
    try:
        for addr, file in files.items():
            targets[addr] = Eeprom24c02(file)
        for addr, celsius in temperatures.items():
            targets[addr] = Lm75(celsius)
        for bus, addrs in buses.items():
            adapter = HostAdapter(bus, addrs)
            targets.update(dict.fromkeys(addrs, adapter))
        return I2cDevice(targets, control_path=str(control) if control is not None else None)
    except BaseException:
        for target in {id(t): t for t in targets.values()}.values():
            target.close()
        raise


def _make_device(kind: str, *, image: Path | None, read_only: bool, queues: int, tap: str | None, mac: str | None,
                 console_socket: Path | None, lines: list[str], control_socket: Path | None) -> VirtioDevice:
    if kind == "blk":
        from acrnmgr.devmodel.blk import BlkDevice

        if image is None or not Path(image).exists():
            raise ValueError(f"image {image} does not exist")
        return BlkDevice(str(image), read_only=read_only, num_queues=queues)
    if kind == "net":
        from acrnmgr.devmodel.net import NetDevice

        return NetDevice(tap=tap, mac=mac)
    if kind == "console":
        from acrnmgr.devmodel.console import ConsoleDevice

        if console_socket is not None:
            return ConsoleDevice(pty=False, socket_path=str(console_socket))
        return ConsoleDevice(pty=True)
    if kind == "gpio":
        from acrnmgr.devmodel.gpio import GpioDevice, parse_line_arg

        configs = []
        for text in lines:
            try:
                configs.append(parse_line_arg(text))
            except ValueError as exc:
                raise ValueError(f"--line {text!r}: {exc}") from None
        if control_socket is not None:
            from acrnmgr.devmodel.server import ServerError, prepare_socket_path

            try:
                prepare_socket_path(control_socket)
            except ServerError as exc:
                raise ValueError(str(exc)) from None
        return GpioDevice(configs, control_path=str(control_socket) if control_socket is not None else None)
    from acrnmgr.devmodel.rng import RngDevice

    return RngDevice()
