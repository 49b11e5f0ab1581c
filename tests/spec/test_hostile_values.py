"""Values that must never validate: a trailing newline (Python's `$` matches before a final
"\\n", and jsonschema uses re.search), a leading dash on anything acrn-dm or `ip` reads as its
own word, and numbers too large to be a size or to be printed (issue 11)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from jsonschema import Draft202012Validator

from acrnmgr.lifecycle.state import VM_NAME
from acrnmgr.resources import schema_text
from acrnmgr.spec.fastcheck import compile_schema
from acrnmgr.spec.validation import load_spec_text
from acrnmgr.spec.diagnostics import SpecError

from tests.spec.helpers import HEAD, devices_text, diagnostics, spec_text

SCHEMA = json.loads(schema_text())


def _patterns(node, path="#"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield path, value
            else:
                yield from _patterns(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _patterns(value, f"{path}/{i}")


PATTERNS = dict(_patterns(SCHEMA))

# One valid value per pattern of the schema; the test below fails when a pattern is added
# without a sample, so every pattern-bearing field is covered.
SAMPLES = {
    "#/properties/metadata/properties/name": "vm-1",
    "#/$defs/dev-virtio-net/properties/mac": "00:16:3e:00:00:01",
    "#/$defs/dev-virtio-net/properties/macSeed": "seed",
    "#/$defs/dev-virtio-input/properties/device": "/dev/input/event0",
    "#/$defs/dev-virtio-input/properties/serial": "serial0",
    "#/$defs/dev-virtio-gpu/properties/displays/items/properties/geometry": "1024x768+0+0",
    "#/$defs/dev-passthru/properties/bdf": "00:02.0",
    "#/$defs/dev-ivshmem/properties/region": "dm:/shm_region_0",
    "#/$defs/dev-xhci/properties/ports/items": "1-2",
    "#/$defs/consolePort/properties/name": "hvc0",
    "#/$defs/settings/properties/acpiDevPt/items/properties/hid": "MSFT0101",
    "#/$defs/settings/properties/acpiDevPt/items/properties/uid": "0",
    "#/$defs/deviceName": "rootfs",
    "#/$defs/ifname": "tap_0",
    "#/$defs/hex": "0xFED40000",
    "#/$defs/size/oneOf/0": "512M",
    "#/$defs/path": "/images/disk.img",
    "#/$defs/dev-virtio-blk/properties/path": "disk.img",
    "#/$defs/dev-xhci/properties/log": "/var/log/xhci.log",
    "#/$defs/dev-virtio-input/properties/deviceName": "AT Translated Set 2 keyboard",
    "#/$defs/dev-virtio-input/properties/devicePhys": "isa0060/serio0/input0",
    "#/$defs/dev-virtio-net/properties/libvirtNetwork": "default",
    "#/$defs/dev-virtio-net/properties/socket": "/run/openvswitch/vhu0",
    "#/$defs/dev-virtio-blk/properties/socket": "/var/run/spdk/vhost-blk.0",
    "#/$defs/vmSpec/properties/uuid": "c7a5fdbd-edaf-9455-926a-d65c16db1809",
    "#/$defs/lpcPort/properties/tcpHost": "127.0.0.1",
    "#/$defs/dev-virtio-i2c/properties/args": "0:0x50",
    "#/$defs/dev-virtio-gpio/properties/args": "@gpiochip0{1:2}",
    "#/$defs/gpioLine/properties/name": "reset-button",
    "#/$defs/gpioLine/properties/host": "gpiochip0:17",
    "#/$defs/dev-acrn-emulation/properties/args": "00:15.0,d3",
}


def _where(path: str) -> str:
    return path.rsplit("/pattern", 1)[0]


def test_every_pattern_has_a_sample():
    assert {_where(p) for p in PATTERNS} == set(SAMPLES)


@pytest.mark.parametrize("where", sorted(SAMPLES))
@pytest.mark.parametrize("tail", ["\n", "\r\n", "\n\n", "\x00", "\t"])
def test_no_pattern_accepts_a_trailing_control_character(where, tail):
    (pattern,) = [p for k, p in PATTERNS.items() if _where(k) == where]
    good = SAMPLES[where]
    bad = good + tail
    schema = {"type": "string", "pattern": pattern}
    fast = compile_schema(schema)
    assert re.search(pattern, good) and Draft202012Validator(schema).is_valid(good) and fast(good)
    assert re.search(pattern, bad) is None, (where, pattern)
    assert not Draft202012Validator(schema).is_valid(bad)
    assert not fast(bad)


# Every field that reaches the argv, the launch script, a path or an `ip` command, in a whole spec.
FIELDS = {
    "metadata.name": lambda v: HEAD.replace("name: t1", f"name: {json.dumps(v)}"),
    "tap": lambda v: devices_text(f"- {{type: virtio-net, tap: {json.dumps(v)}}}"),
    "bridge": lambda v: spec_text(f"network: {{bridge: {json.dumps(v)}}}"),
    "mac": lambda v: devices_text(f"- {{type: virtio-net, tap: tap0, mac: {json.dumps(v)}}}"),
    "macSeed": lambda v: devices_text(f"- {{type: virtio-net, tap: tap0, macSeed: {json.dumps(v)}}}"),
    "device name": lambda v: devices_text(f"- {{type: virtio-rnd, name: {json.dumps(v)}}}"),
    "disk path": lambda v: devices_text(f"- {{type: virtio-blk, path: {json.dumps(v)}}}"),
    "vhost-user socket": lambda v: devices_text(
        f"- {{type: virtio-blk, backend: vhost-user, socket: {json.dumps(v)}}}"),
    "kernel path": lambda v: HEAD.replace("path: bzImage", f"path: {json.dumps(v)}"),
    "port name": lambda v: devices_text(
        f"- {{type: virtio-console, ports: [{{kind: pty, name: {json.dumps(v)}}}]}}"),
    "gpio line": lambda v: devices_text(f"- {{type: virtio-gpio, lines: [{{name: {json.dumps(v)}}}]}}"),
    "gpio host line": lambda v: devices_text(f"- {{type: virtio-gpio, lines: [{{host: {json.dumps(v)}}}]}}"),
}
GOOD = {"metadata.name": "vm1", "tap": "tap0", "bridge": "br0", "mac": "00:16:3e:00:00:01",
        "macSeed": "seed", "device name": "rng", "disk path": "disk.img", "vhost-user socket": "/run/vhost-blk.0",
        "kernel path": "bzImage", "port name": "hvc0", "gpio line": "led", "gpio host line": "gpiochip0:RESET_N"}


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_whole_spec_refuses_a_trailing_newline(field):
    assert not [d for d in diagnostics(FIELDS[field](GOOD[field])) if d.is_error]
    errors = [d for d in diagnostics(FIELDS[field](GOOD[field] + "\n")) if d.is_error]
    assert errors, field


@pytest.mark.parametrize("field", ["metadata.name", "tap", "bridge", "device name", "port name", "gpio line"])
def test_whole_spec_refuses_a_leading_dash(field):
    errors = [d for d in diagnostics(FIELDS[field]("--lapic_pt"[: 15])) if d.is_error]
    assert errors, field
    assert not [d for d in diagnostics(FIELDS[field]("a-b")) if d.is_error]


@pytest.mark.parametrize("name", ["evil\n", "-x", "--lapic_pt", "a\n", "x" * 16, "../x", ""])
def test_lifecycle_name_pattern_agrees(name):
    assert not VM_NAME.fullmatch(name)
    assert not (VM_NAME.match(name) and VM_NAME.match(name).end() == len(name))


# -- numbers ---------------------------------------------------------------------------------

HUGE = ["0x" + "f" * 3600, "9" * 5000, "0o" + "7" * 5000, "1" + "0" * 30, "0x" + "f" * 40,
        "99999999999999999999G", "1e400", "1.0e300"]


@pytest.mark.parametrize("number", HUGE)
@pytest.mark.parametrize("where", [
    lambda n: HEAD.replace("memory: 1G", f"memory: {n}"),
    lambda n: spec_text(f"settings: {{virtioPoll: {n}}}"),
    lambda n: devices_text(f"- {{type: vhost-vsock, cid: {n}}}"),
    lambda n: devices_text(f"- {{type: virtio-blk, path: d.img, range: {{startLba: {n}, size: 1}}}}"),
    lambda n: devices_text(f"- {{type: virtio-blk, path: d.img, discard: {{maxSectors: {n}}}}}"),
    lambda n: devices_text(f"- {{type: ivshmem, name: s, region: 'dm:/r', size: {n}}}"),
    lambda n: devices_text(f"- {{type: virtio-gpu, displays: [{{monitor: {n}}}]}}"),
    lambda n: spec_text(f"settings: {{intrMonitor: {{threshold: {n}, period: 1}}}}"),
])
def test_absurd_numbers_are_clear_errors(number, where):
    text = where(number)
    with pytest.raises(SpecError) as err:
        load_spec_text(text, "t.yaml", check_paths=False)
    shown = str(err.value)
    assert len(shown) < 2000


@pytest.mark.parametrize("number", ["9" * 5000, "1" + "0" * 30, "1e300", "-" + "9" * 4000])
def test_absurd_numbers_in_json_too(number):
    data = {"apiVersion": "acrnmgr/v1", "kind": "VM", "metadata": {"name": "t1"},
            "spec": {"cpu": {"affinity": [1]}, "memory": 1, "boot": {"kernel": {"path": "bz"}}}}
    text = json.dumps(data).replace('"memory": 1', f'"memory": {number}')
    with pytest.raises(SpecError):
        load_spec_text(text, "t.json", check_paths=False)


def test_every_integer_and_size_has_a_maximum():
    def walk(node, path="#"):
        if isinstance(node, dict):
            if node.get("type") == "integer" and "maximum" not in node:
                yield path
            if node.get("type") == "string" and "pattern" in node and re.search(r"\[0-9\][+*]", node["pattern"]):
                yield path + " (unbounded digits)"
            for k, v in node.items():
                yield from walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}/{i}")
    assert list(walk(SCHEMA)) == []


@pytest.mark.parametrize("memory", ["99999999G", "17000000M", 16777217])
def test_memory_has_a_maximum_in_every_spelling(memory):
    errors = [d for d in diagnostics(HEAD.replace("memory: 1G", f"memory: {memory}")) if d.is_error]
    assert {d.json_path for d in errors} == {"spec.memory"}


def test_memory_at_the_maximum_is_fine():
    assert not [d for d in diagnostics(HEAD.replace("memory: 1G", "memory: 16384G")) if d.is_error]


# -- Python regexes that validate input ------------------------------------------------------

def _dollar_patterns():
    """re.compile/match/search/fullmatch calls on a literal ending in `$` (without re.M) in acrnmgr."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "acrnmgr"
    for f in sorted(root.rglob("*.py")):
        if "devmodel" in f.parts:  # hardened on its own
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                    and node.func.attr in ("match", "search", "compile", "fullmatch") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and node.args[0].value.endswith("$")
                    and not any("M" in ast.unparse(a) for a in node.args[1:])):
                yield f"{f.relative_to(root.parent)}:{node.lineno}: {node.args[0].value!r}"


def test_no_python_regex_ends_in_a_dollar():
    """`$` matches before a final newline: end patterns with \\Z (or use fullmatch without `$`)."""
    assert list(_dollar_patterns()) == []


@pytest.mark.parametrize("name", ["vm1.monitor.12.socket\n", "vm1\n.monitor.12.socket"])
def test_monitor_socket_names_with_a_newline_are_not_sockets(name):
    from acrnmgr.lifecycle.monitor import parse_socket_name

    assert parse_socket_name(name) is None
    assert parse_socket_name(name.replace("\n", "")) == ("vm1", 12)


@pytest.mark.parametrize("bdf", ["00:02.0\n", "0:2.0\n"])
def test_passthru_bdf_with_a_newline_is_refused(bdf):
    from acrnmgr.devices.passthru import _BDF_RE

    assert _BDF_RE.match(bdf) is None and _BDF_RE.match(bdf.strip())


@pytest.mark.parametrize("literal", [".nan", ".inf", "-.inf"])
def test_a_non_finite_number_is_refused_where_it_stands(literal):
    # A NaN passes every minimum/maximum in the schema (each comparison is false): refused before them.
    text = devices_text(f"- {{type: virtio-i2c, devices: [{{type: lm75, address: 0x48, temperature: {literal}}}]}}")
    found = diagnostics(text)
    assert any(d.json_path == "spec.devices[0].devices[0].temperature" and "not a finite number" in d.message
               and d.line > 0 for d in found), found


def test_a_json_nan_is_refused_too():
    text = devices_text("- {type: virtio-i2c, devices: [{type: lm75, address: 0x48, temperature: 1}]}")
    doc = json.dumps(yaml.safe_load(text)).replace('"temperature": 1', '"temperature": NaN')
    assert [d.json_path for d in diagnostics(doc, "t.json") if "not a finite number" in d.message] == [
        "spec.devices[0].devices[0].temperature"]
