"""A small QMP client (QEMU Machine Protocol) for status and shutdown."""

from __future__ import annotations

from acrnmgr.lifecycle.jsonstream import JsonSocket


class QmpError(RuntimeError):
    pass


class Qmp:
    def __init__(self, path: str, timeout: float = 5.0):
        self.chan = JsonSocket(path, timeout)
        self._id = 0
        try:
            greeting = self.chan.receive()
            if "QMP" not in greeting:
                raise QmpError(f"not a QMP greeting: {greeting}")
            self.execute("qmp_capabilities")
        except Exception:
            self.chan.close()
            raise

    def execute(self, command: str, arguments: dict | None = None):
        self._id += 1
        msg = {"execute": command, "id": self._id}
        if arguments:
            msg["arguments"] = arguments
        self.chan.send(msg)
        while True:
            reply = self.chan.receive()
            if "event" in reply or reply.get("id") != self._id:
                continue
            if "error" in reply:
                raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def close(self) -> None:
        self.chan.close()

    def __enter__(self) -> "Qmp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
