"""virtio-gpio: the message state machine over real rings in test guest memory, the eventq's hold/latch rules,
and the control socket."""

import json
import os
import socket
import struct

import pytest
from core_guest import GuestQueue, Rings

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel import gpio as G
from acrnmgr.devmodel.control import MAX_LINE
from acrnmgr.devmodel.gpio import GpioDevice, LineConfig, parse_line_arg

LINES = [LineConfig("button", "in"), LineConfig("led", "out", 1), LineConfig("free")]


class Driver:
    """What Linux's gpio-virtio driver does, over real rings."""

    def __init__(self, ram, dev, irq=True):
        self.ram, self.dev = ram, dev
        offered = dev.device_features()
        dev.set_driver_features(offered if irq else offered & ~F.mask(F.GPIO_F_IRQ))
        self.req = GuestQueue(ram, size=16, features=dev.driver_features, index=0)
        self.evt = GuestQueue(ram, size=16, features=dev.driver_features, index=1)
        self.irq_bufs = {}

    def request(self, msg_type, gpio=0, value=0, rlen=2):
        resp = self.req.buf(rlen, True)
        head = self.req.add([self.req.buf(struct.pack("<HHI", msg_type, gpio, value)), resp])
        self.dev.process_queue(0, self.req.vq, self.req.mem)
        used = dict(self.req.get_used())
        assert head in used, "the device did not answer"
        data = self.ram.read(resp[0], used[head])
        return data[0], data[1:]

    def unmask(self, gpio):
        resp = self.evt.buf(1, True)
        head = self.evt.add([self.evt.buf(struct.pack("<H", gpio)), resp])
        self.irq_bufs[head] = resp
        return self.dev.process_queue(1, self.evt.vq, self.evt.mem)

    def io(self):
        notified = []
        for _fd, cb in self.dev.host_sources():
            notified += cb(Rings(self.ram.mem, self.dev.queues))
        return notified

    def events(self):
        """The eventq buffers the device returned: [(head, status)]."""
        out = [(h, self.ram.read(self.irq_bufs[h][0], 1)[0] if n else None) for h, n in self.evt.get_used()]
        self.evt.set_used_event(self.evt.last_used)  # as a driver with EVENT_IDX: interrupt me for the next one
        return out


@pytest.fixture
def dev(tmp_path):
    d = GpioDevice(LINES, control_path=str(tmp_path / "gpio.sock"))
    yield d
    d.close()


def test_config_space_and_names(ram, dev):
    drv = Driver(ram, dev)
    ngpio, size = struct.unpack("<HxxI", dev.read_config(0, 8))
    assert ngpio == 3 and size == len(b"button\0led\0free\0")
    status, names = drv.request(G.MSG_GET_NAMES, rlen=1 + size)
    assert status == G.STATUS_OK and names.split(b"\0")[:3] == [b"button", b"led", b"free"]
    assert drv.request(G.MSG_GET_NAMES, rlen=1 + size - 1) == (G.STATUS_ERR, b"")  # too small for the names


def test_directions_values_and_who_drives(ram, dev):
    drv = Driver(ram, dev)
    assert drv.request(G.MSG_GET_DIRECTION, 0) == (0, bytes([G.DIR_IN]))
    assert drv.request(G.MSG_GET_DIRECTION, 1) == (0, bytes([G.DIR_OUT]))
    assert drv.request(G.MSG_GET_DIRECTION, 2) == (0, bytes([G.DIR_NONE]))
    assert drv.request(G.MSG_GET_VALUE, 1) == (0, b"\x01")  # initial: 1
    assert drv.request(G.MSG_SET_DIRECTION, 0, G.DIR_OUT)[0] == G.STATUS_ERR  # the host drives "button"
    assert drv.request(G.MSG_SET_VALUE, 0, 1)[0] == G.STATUS_ERR
    assert drv.request(G.MSG_SET_DIRECTION, 1, G.DIR_IN)[0] == G.STATUS_ERR  # the guest drives "led"
    assert drv.request(G.MSG_SET_VALUE, 1, 0) == (0, b"\0")
    assert dev.core.control({"op": "get", "line": "led"})["lines"][0]["value"] == 0
    # The guest's own choice: output on "free" (value first, as Linux does), then the host cannot drive it.
    assert drv.request(G.MSG_SET_VALUE, 2, 1)[0] == 0
    assert drv.request(G.MSG_SET_DIRECTION, 2, G.DIR_OUT)[0] == 0
    assert drv.request(G.MSG_GET_VALUE, 2) == (0, b"\x01")
    answer = dev.core.control({"op": "set", "line": "free", "value": 0})
    assert not answer["ok"] and "output by the guest" in answer["error"]
    assert drv.request(G.MSG_SET_DIRECTION, 2, G.DIR_NONE)[0] == 0  # freed: state discarded
    assert drv.request(G.MSG_GET_DIRECTION, 2) == (0, bytes([G.DIR_NONE]))
    assert dev.core.control({"op": "set", "line": "free", "value": 1})["ok"]
    assert drv.request(G.MSG_GET_VALUE, 2) == (0, b"\x01")


@pytest.mark.parametrize("msg", [
    (G.MSG_GET_VALUE, 3, 0),            # no line 3
    (G.MSG_GET_VALUE, 0xFFFF, 0),
    (0, 0, 0), (7, 0, 0), (0xFFFF, 0, 0),  # unknown types
    (G.MSG_SET_DIRECTION, 2, 3),        # no such direction
    (G.MSG_SET_VALUE, 2, 2),            # not a level
    (G.MSG_SET_IRQ_TYPE, 0, 5),         # not an IRQ type
    (G.MSG_SET_IRQ_TYPE, 0, 0xFFFFFFFF),
    (G.MSG_GET_NAMES, 1, 0),            # GET_NAMES takes gpio 0, value 0
])
def test_bad_requests_are_errors_not_crashes(ram, dev, msg):
    drv = Driver(ram, dev)
    assert drv.request(*msg)[0] == G.STATUS_ERR
    assert not dev.needs_reset


def test_irq_type_needs_the_feature(ram, dev):
    drv = Driver(ram, dev, irq=False)
    assert drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_EDGE_RISING)[0] == G.STATUS_ERR


def test_a_chain_without_a_response_buffer_breaks_the_queue(ram, dev):
    drv = Driver(ram, dev)
    drv.req.add([drv.req.buf(struct.pack("<HHI", G.MSG_GET_VALUE, 0, 0))])
    dev.process_queue(0, drv.req.vq, drv.req.mem)
    assert drv.req.vq.broken and dev.needs_reset


def test_edge_interrupt_held_buffer_and_latch(ram, dev):
    drv = Driver(ram, dev)
    assert drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_EDGE_RISING)[0] == 0
    drv.unmask(0)
    assert drv.events() == []  # held: nothing happened yet
    assert dev.core.control({"op": "set", "line": "button", "value": 1})["ok"]
    assert drv.io() == [1]
    assert [s for _h, s in drv.events()] == [G.IRQ_STATUS_VALID]
    # Masked now (the buffer is with the driver): a falling edge is not the type, the next rising edge latches.
    dev.core.host_set("button", 0)
    dev.core.host_set("button", 1)
    drv.io()
    assert drv.events() == []
    assert drv.unmask(0)  # requeued: the latched edge comes back at once
    assert [s for _h, s in drv.events()] == [G.IRQ_STATUS_VALID]
    drv.unmask(0)
    assert drv.events() == []  # nothing more latched


def test_level_interrupt_is_not_latched(ram, dev):
    drv = Driver(ram, dev)
    drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_LEVEL_HIGH)
    dev.core.host_set("button", 1)
    dev.core.host_set("button", 0)  # active and gone while masked: no interrupt
    drv.unmask(0)
    assert drv.events() == []
    dev.core.host_set("button", 1)
    drv.io()
    assert [s for _h, s in drv.events()] == [G.IRQ_STATUS_VALID]
    drv.unmask(0)  # still high: fires again on unmask
    assert [s for _h, s in drv.events()] == [G.IRQ_STATUS_VALID]


def test_disabling_returns_the_buffer_invalid(ram, dev):
    drv = Driver(ram, dev)
    drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_EDGE_BOTH)
    drv.unmask(0)
    drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_NONE)
    assert drv.io() == [1]  # the request queue woke the device's io callback to return it
    assert [s for _h, s in drv.events()] == [G.IRQ_STATUS_INVALID]
    drv.unmask(0)  # unmasked while disabled: straight back, INVALID
    assert [s for _h, s in drv.events()] == [G.IRQ_STATUS_INVALID]


def test_eventq_hostile_buffers(ram, dev):
    drv = Driver(ram, dev)
    drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_EDGE_RISING)
    drv.unmask(0)
    drv.unmask(0)  # a second buffer for the same line: returned, never a second one held
    drv.unmask(9)  # no such line
    assert [s for _h, s in drv.events()] == [G.IRQ_STATUS_INVALID, G.IRQ_STATUS_INVALID]
    assert not dev.needs_reset
    drv.evt.add([drv.evt.buf(b"\0")])  # request too short
    dev.process_queue(1, drv.evt.vq, drv.evt.mem)
    assert drv.evt.vq.broken and dev.needs_reset


def test_reset_forgets_the_guest_not_the_host(ram, dev):
    drv = Driver(ram, dev)
    dev.core.host_set("button", 1)
    drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_EDGE_RISING)
    drv.unmask(0)
    dev.reset()
    line = dev.core.find("button")
    assert line.irq == G.IRQ_NONE and line.held is None and line.level == 1


def test_a_new_eventq_never_gets_the_old_rings_heads(ram, dev):
    drv = Driver(ram, dev)
    drv.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_EDGE_RISING)
    drv.unmask(0)
    assert dev.core.find("button").held is not None
    fresh = GuestQueue(ram, size=16, features=dev.driver_features, index=1)
    dev.attach_queue(1, fresh.vq)  # the front-end set the ring up again
    dev.core.host_set("button", 1)
    dev.process_queue(1, fresh.vq, fresh.mem)
    assert fresh.get_used() == [] and not dev.needs_reset


def test_control_socket(ram, dev, tmp_path):
    drv = Driver(ram, dev)
    path = str(tmp_path / "gpio.sock")
    assert os.stat(path).st_mode & 0o777 == 0o600
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(5)
        f = s.makefile("rb")
        requests = [{"op": "get"}, {"op": "set", "line": "button", "value": 1}, {"op": "set", "line": "led",
                    "value": 1}, {"op": "set", "line": "nope", "value": 1}, {"op": "set", "line": "button",
                    "value": True}, b"[" * 2000 + b"\n", {"op": "get", "line": "button"}]
        for r in requests:
            s.sendall(json.dumps(r).encode() + b"\n" if isinstance(r, dict) else r)
            drv.io()
            drv.io()  # accept, then read
        answers = [json.loads(f.readline()) for _ in requests]
    assert [a["ok"] for a in answers] == [True, True, False, False, False, False, True]
    assert [ln["name"] for ln in answers[0]["lines"]] == ["button", "led", "free"]
    assert "guest drives" in answers[2]["error"] and "no line named 'nope'" in answers[3]["error"]
    assert answers[6]["lines"] == [{"name": "button", "index": 0, "direction": "in", "value": 1, "drivenBy": "host",
                                    "fixedDirection": "in", "irq": "none", "source": "simulated"}]


def test_control_socket_drops_a_flood(dev, tmp_path, ram):
    drv = Driver(ram, dev)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(tmp_path / "gpio.sock"))
        drv.io()
        s.sendall(b"x" * (MAX_LINE + 10))
        drv.io()
        drv.io()
        s.settimeout(5)
        try:  # dropped, no answer (a reset when the flood's tail was still unread)
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
    assert dev.core.control({"op": "get"})["ok"]


@pytest.mark.parametrize("text, want", [
    ("led", LineConfig("led")),
    ("led:out=1", LineConfig("led", "out", 1)),
    ("button:in", LineConfig("button", "in")),
    ("x=1@gpiochip0:17", LineConfig("x", None, 1, "gpiochip0:17")),
    ("x@gpiochip3:RESET_N", LineConfig("x", None, 0, "gpiochip3:RESET_N")),
    ("@gpiochip0:4", LineConfig("", None, 0, "gpiochip0:4")),  # the guest sees the host line's own name
])
def test_line_arg(text, want):
    assert parse_line_arg(text) == want


@pytest.mark.parametrize("text", ["", "-x", "x:sideways", "x=2", "x@/dev/gpiochip0:1", "x@gpiochip0", "a" * 40,
                                  "x@gpiochip0:1\n", "naïve"])
def test_bad_line_arg(text):
    with pytest.raises(ValueError):
        parse_line_arg(text)


def test_line_names_unique():
    with pytest.raises(ValueError):
        GpioDevice([LineConfig("a"), LineConfig("a")])
    with pytest.raises(ValueError):
        GpioDevice([])


class StandInHostLine:
    """What GpioCore asks of a host line, recorded: this machine has no GPIO chip (no gpio-sim, no modules), so
    the kernel's side is played here; the ioctl layouts themselves are checked in test_gpio_uapi.py."""

    def __init__(self, name, level=0):
        self.name, self.level, self.calls = name, level, []

    def configure(self, direction, value, edges):
        self.calls.append((direction, value, edges))
        if direction == G.DIR_OUT:
            self.level = value

    def get(self):
        return self.level

    def set(self, value):
        self.calls.append(("set", value))
        self.level = value


def test_host_lines_in_the_core():
    reset, dup = StandInHostLine("RESET_N", level=1), StandInHostLine("led")
    core = G.GpioCore([G.Line(LineConfig("", host="gpiochip0:3"), reset), G.Line(LineConfig("led"), None),
                       G.Line(LineConfig("", host="gpiochip0:4"), dup)])
    assert core.names == b"RESET_N\0led\0\0"  # the host's own name; one that collides is left out
    core.irq_enabled = True
    assert core.request(G.MSG_GET_VALUE, 0, 0) == (G.STATUS_OK, b"\x01")  # read from the kernel
    assert core.request(G.MSG_SET_DIRECTION, 0, G.DIR_IN) == (G.STATUS_OK, b"\0")
    assert core.request(G.MSG_SET_IRQ_TYPE, 0, G.IRQ_EDGE_FALLING) == (G.STATUS_OK, b"\0")
    assert reset.calls[-1] == (G.DIR_IN, 0, True)  # edge detection on in the kernel
    line = core.lines[0]
    assert core.event_buffer(0, head=5) is None
    core.input_changed(line, 0)  # the falling edge the kernel reported
    assert core.due == [(5, G.IRQ_STATUS_VALID)]
    assert core.request(G.MSG_SET_VALUE, 0, 1)[0] == G.STATUS_OK and ("set", 1) not in reset.calls  # staged
    assert core.request(G.MSG_SET_DIRECTION, 0, G.DIR_OUT)[0] == G.STATUS_OK
    assert reset.calls[-1] == (G.DIR_OUT, 1, False) and reset.level == 1
    with pytest.raises(G.LineError, match="the host's gpiochip0:3"):
        core.host_set("RESET_N", 0)
    assert core.describe(line)["source"] == "gpiochip0:3"
