"""Client of acrn-dm's --cmd_monitor JSON socket (v3.0+): {"command": ...} -> {"ack": 0|-1}."""

from __future__ import annotations

from acrnmgr.lifecycle.jsonstream import JsonSocket


def command(path: str, name: str, arguments: str | None = None, timeout: float = 5.0) -> int:
    """Send one command and return its ack (0 = accepted)."""
    msg: dict = {"command": name}
    if arguments is not None:
        msg["arguments"] = arguments
    with JsonSocket(path, timeout) as chan:
        chan.send(msg)
        while True:
            reply = chan.receive()
            if "ack" in reply:
                return int(reply["ack"])


def destroy(path: str, timeout: float = 5.0) -> int:
    return command(path, "destroy", timeout=timeout)
