"""virtio-gpio interrupts end to end through the real served device: `acrnmgr devmodel serve --device gpio` as a
process, driven over vhost-user by our Python front-end with VIRTIO_GPIO_F_IRQ negotiated (QEMU 7.2's
vhost-user-gpio-pci never offers it to a guest, see tests/devmodel/e2e/test_gpio.py), and the host's side
through the control socket: an edge the host makes returns the held eventq buffer and signals the call eventfd;
an edge while masked is latched; disabling returns the buffer INVALID; a front-end that goes away and comes
back starts clean while the host's levels stay."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel import gpio as G
from acrnmgr.devmodel.control import control_call
from acrnmgr.devmodel.vhost_user import F_PROTOCOL_FEATURES
from acrnmgr.lifecycle.state import wait_until

from .frontend import Frontend

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))
FEATURES = (1 << F.F_VERSION_1) | F_PROTOCOL_FEATURES | (1 << F.GPIO_F_IRQ)


@pytest.fixture
def served(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    vhost, control = run / "gpio.vhost.sock", run / "gpio.sock"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([ACRNMGR, "devmodel", "serve", "--device", "gpio", "--socket", str(vhost),
                             "--control-socket", str(control), "--line", "button:in", "--line", "led:out=1"],
                            stdout=log, stderr=log)
    assert wait_until(lambda: vhost.exists() or proc.poll() is not None, 20, 0.02) and proc.poll() is None, \
        (tmp_path / "serve.log").read_text()
    yield str(vhost), str(control)
    proc.terminate()
    assert proc.wait(10) == 0
    log.close()
    assert not vhost.exists() and not control.exists()  # both sockets removed on a clean stop


class Driver:
    def __init__(self, path: str) -> None:
        self.fe = Frontend(path)
        features, _ = self.fe.handshake()
        assert features & (1 << F.GPIO_F_IRQ)
        ngpio, names_size = struct.unpack("<HxxI", self.fe.get_config(0, 8))
        assert (ngpio, names_size) == (2, len(b"button\0led\0"))
        queues = self.fe.start(FEATURES, {0: 16, 1: 16})
        self.req, self.evt = queues[0], queues[1]

    def request(self, msg_type: int, gpio: int, value: int = 0) -> tuple[int, int]:
        self.req.post(out=[struct.pack("<HHI", msg_type, gpio, value)], ins=[2])
        self.req.notify()
        (_head, length, data), = self.req.wait(1)
        assert length == 2
        return data[0], data[1]

    def unmask(self, gpio: int) -> int:
        head = self.evt.post(out=[struct.pack("<H", gpio)], ins=[1])
        self.evt.notify()
        return head

    def close(self) -> None:
        self.fe.close()


def test_edge_interrupts_through_the_served_device(served):
    vhost, control = served
    drv = Driver(vhost)
    try:
        assert drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_EDGE_RISING) == (G.STATUS_OK, 0)
        assert control_call(control, {"op": "get", "line": "button"})["lines"][0]["irq"] == "edge-rising"
        head = drv.unmask(0)
        drv.fe.sync()
        assert drv.evt.completions() == []  # held until the line fires

        assert control_call(control, {"op": "set", "line": "button", "value": 1})["ok"]
        assert drv.evt.wait(1) == [(head, 1, bytes([G.IRQ_STATUS_VALID]))]
        assert drv.request(G.MSG_GET_VALUE, 0) == (G.STATUS_OK, 1)

        # Masked (the buffer is with the driver): falling is not the type, the next rising edge is latched.
        control_call(control, {"op": "set", "line": "button", "value": 0})
        control_call(control, {"op": "set", "line": "button", "value": 1})
        head = drv.unmask(0)
        assert drv.evt.wait(1) == [(head, 1, bytes([G.IRQ_STATUS_VALID]))]

        head = drv.unmask(0)
        assert drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_NONE) == (G.STATUS_OK, 0)
        assert drv.evt.wait(1) == [(head, 1, bytes([G.IRQ_STATUS_INVALID]))]  # disabled: given back

        assert drv.request(G.MSG_SET_VALUE, 1, 0) == (G.STATUS_OK, 0)
        answer = control_call(control, {"op": "get"})
        assert answer["interrupts"] is True
        assert [(ln["name"], ln["value"]) for ln in answer["lines"]] == [("button", 1), ("led", 0)]
    finally:
        drv.close()

    # A new front-end (QEMU reconnecting) negotiates from scratch; the host's input level is kept.
    drv = Driver(vhost)
    try:
        assert drv.request(G.MSG_GET_VALUE, 0) == (G.STATUS_OK, 1)
        assert drv.request(G.MSG_GET_VALUE, 1) == (G.STATUS_OK, 1)  # the guest's output: back to initial
    finally:
        drv.close()


def test_control_socket_answers_without_a_front_end(served):
    _vhost, control = served
    answer = control_call(control, {"op": "set", "line": "button", "value": 1})
    assert answer["ok"] and answer["interrupts"] is False and answer["lines"][0]["value"] == 1
    bad = control_call(control, {"op": "set", "line": "led", "value": 0})
    assert not bad["ok"] and "guest drives" in bad["error"]
