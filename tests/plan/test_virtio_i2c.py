"""virtio-i2c, one device kind end to end on paper: the spec's checks, the plan on both engines, acrn-dm's
grammar both ways (virtio_i2c_parse / virtio_i2c_map), the launch-script importer and the QEMU form."""

from __future__ import annotations

import yaml

import pytest

from acrnmgr.devices import vm_from_spec
from acrnmgr.devices.base import GrammarError
from acrnmgr.devices.virtio_i2c import parse_acrn
from acrnmgr.importers.dm_argv import normalized_argv, spec_from_argv
from acrnmgr.plan import make_plan
from acrnmgr.render.acrndm import compile_spec
from acrnmgr.spec.validation import load_spec_text

from tests.spec.helpers import devices_text, diagnostics, only
from tests.specs import BASIC, compile_body, make_spec

SIMULATED = """\
  devices:
    - type: virtio-i2c
      name: bus0
      devices:
        - {type: eeprom-24c02, address: 0x50, file: eeprom.bin}
        - {type: lm75, address: 0x48, temperature: 31.5}
        - {type: host, bus: 2, address: 0x1c}
"""


def _errors(text):
    return [d for d in diagnostics(text) if d.severity == "error"]


# -- the spec -------------------------------------------------------------------------------------------------
def test_devices_and_args_both_validate():
    assert _errors(devices_text("""\
        - type: virtio-i2c
          devices:
            - {type: eeprom-24c02, address: 0x50, file: e.bin}
            - {type: lm75, address: 0x48}
            - {type: host, bus: 0, address: 0x70, acpiNode: cam1}
        - {type: virtio-i2c, args: "0:70@cam1:2F,4:1C"}
        - {type: virtio-i2c}
        """)) == []


@pytest.mark.parametrize("client, path, words", [
    ("{type: lm75, address: 0x48}, {type: eeprom-24c02, address: 0x48, file: e.bin}", "[1].address",
     "already used on this adapter by devices[0]"),
    ("{type: lm75, address: 0x03}", "[0].address", "reserved by the I2C specification"),
    ("{type: lm75, address: 0x7c}", "[0].address", "0x78-0x7f"),
])
def test_address_problems_point_at_the_device(client, path, words):
    text = devices_text(f"- type: virtio-i2c\n  devices: [{client}]")
    d = only(_errors(text), f"spec.devices[0].devices{path}")
    assert words in d.message and d.suggestion


@pytest.mark.parametrize("client, words", [
    ("{type: lm75, address: 200}", "above the maximum 127"),
    ("{type: host, address: 0x1c}", "missing required key `bus`"),
    ("{type: eeprom-24c02, address: 0x50}", "missing required key `file`"),
    ("{type: lm75, address: 0x48, file: x.bin}", "unknown key `file` for a lm75 device"),
    ("{type: lm75, address: 0x48, temperature: 300}", "above the maximum 125"),
    ("{type: flash, address: 0x48}", "unknown device type `flash`"),
])
def test_schema_refuses_malformed_devices(client, words):
    errs = _errors(devices_text(f"- type: virtio-i2c\n  devices: [{client}]"))
    assert len(errs) == 1 and words in errs[0].message, errs


def test_args_and_devices_together_and_bad_args():
    d = only(_errors(devices_text("- {type: virtio-i2c, args: '0:50', devices: []}")), "spec.devices[0].args")
    assert "twice" in d.message
    d = only(_errors(devices_text("- {type: virtio-i2c, args: '0:50:50'}")), "spec.devices[0].args")
    assert "appears twice" in d.message and "2:1C@cam1" in d.suggestion


def test_missing_eeprom_file_is_reported_with_its_path():
    text = devices_text("- type: virtio-i2c\n  devices: [{type: eeprom-24c02, address: 0x50, file: nope.bin}]")
    d = only(diagnostics(text, check_paths=True), "spec.devices[0].devices[0].file")
    assert "`nope.bin` does not exist (looked for " in d.message and "--no-check-paths" in d.suggestion


def test_eeprom_file_larger_than_the_chip(tmp_path):
    (tmp_path / "big.bin").write_bytes(bytes(300))
    text = devices_text("- type: virtio-i2c\n  devices: [{type: eeprom-24c02, address: 0x50, file: big.bin}]")
    d = only(diagnostics(text, check_paths=True, base_dir=tmp_path), "spec.devices[0].devices[0].file")
    assert d.message == "`big.bin` is 300 bytes; a 24c02 EEPROM holds 256 bytes"


# -- plans ----------------------------------------------------------------------------------------------------
def test_qemu_engine_serves_everything_from_the_embedded_model(tmp_path, plain_box):
    (tmp_path / "eeprom.bin").write_bytes(bytes(256))
    plan = make_plan(vm_from_spec(make_spec(tmp_path, BASIC + SIMULATED)), plain_box, "qemu",
                     state_dir=tmp_path / "state")
    assert plan.ok, plan.errors
    dev = plan.devices[0]
    assert dev.backend == "embedded"
    assert "vhost-user-i2c-pci" in dev.reason and "I2C_RDWR" in dev.reason and "lm75 0x48" in dev.reason
    launch = plan.qemu
    helper, = launch.helpers
    control = str(launch.state_dir / "bus0.i2c.sock")
    assert helper.argv[-12:] == ["--device", "i2c", "--socket", helper.socket, "--control-socket", control,
                                 "--eeprom", f"0x50={tmp_path / 'eeprom.bin'}", "--lm75", "0x48=31.5",
                                 "--host-client", "2:0x1c"][-12:]
    assert control in launch.sockets
    i = launch.argv.index("-device", launch.argv.index(f"socket,id=cdev3,path={helper.socket}"))
    assert launch.argv[i + 1] == "vhost-user-i2c-pci,chardev=cdev3,addr=0x3"


def test_acpi_nodes_are_acrn_dm_only(tmp_path, plain_box):
    body = BASIC + ("  devices:\n    - type: virtio-i2c\n"
                    "      devices: [{type: host, bus: 2, address: 0x1c, acpiNode: cam1}]\n")
    compiled = compile_body(tmp_path, body, plain_box, engine="qemu")
    assert compiled.ok, compiled.errors
    warning, = [w for w in compiled.warnings if w.json_path == "spec.devices[0].devices[0].acpiNode"]
    assert "adds no ACPI node" in warning.message


def test_acrn_engine_refuses_simulated_devices_and_says_why(tmp_path, service_vm):
    (tmp_path / "eeprom.bin").write_bytes(bytes(256))
    compiled = compile_body(tmp_path, BASIC + SIMULATED, service_vm)
    err, = compiled.errors
    assert "eeprom-24c02 0x50, lm75 0x48" in err.message and "vhost-user" in err.message
    assert "qemu engine" in err.suggestion


def test_acrn_engine_renders_host_clients_grouped_by_adapter(tmp_path, service_vm):
    body = BASIC + """\
  devices:
    - type: virtio-i2c
      devices:
        - {type: host, bus: 2, address: 0x1c, acpiNode: cam1}
        - {type: host, bus: 4, address: 0x2f}
        - {type: host, bus: 2, address: 0x50}
"""
    compiled = compile_body(tmp_path, body, service_vm)
    assert compiled.ok, compiled.errors
    assert "3:0,virtio-i2c,2:1C@cam1:50,4:2F" in compiled.argv
    assert "passes through host 0x1c of /dev/i2c-2" in compiled.devices[0].reason


@pytest.mark.parametrize("backend, engine, words", [("vbs-u", "qemu", "no virtio-i2c device of its own"),
                                                    ("vbs-u", "acrn", "has no simulated devices")])
def test_backends_that_cannot_serve(tmp_path, plain_box, service_vm, backend, engine, words):
    (tmp_path / "eeprom.bin").write_bytes(bytes(256))
    body = BASIC + SIMULATED.replace("name: bus0", f"name: bus0\n      backend: {backend}")
    compiled = compile_body(tmp_path, body, plain_box if engine == "qemu" else service_vm, engine=engine)
    assert any(words in e.message for e in compiled.errors), compiled.errors


# -- acrn-dm's grammar ---------------------------------------------------------------------------------------
def test_parse_acrn_reads_what_acrn_dm_reads():
    p = parse_acrn("virtio-i2c", "0:70@cam1:0x2f,12:1c:150:0", "3")
    assert p["adapters"] == [{"bus": 0, "clients": [{"address": 0x70, "acpiNode": "cam1"}, {"address": 0x2F}]},
                             {"bus": 12, "clients": [{"address": 0x1C}, {"address": 0x50}]}]  # 0x150 & 0x7f
    assert p["skipped"] == ["0"]  # acrn-dm skips client address 0
    assert parse_acrn("virtio-i2c", "", "3")["adapters"] == []


@pytest.mark.parametrize("body, words", [
    ("x:1c", "decimal"), ("0x2:1c", "decimal"), (",", "decimal"), ("2:1c,3:1c", "appears twice"),
    ("2:1c:9c", "appears twice"), ("2:zz", "not a hex address"), ("2:-1c", "not a hex address"),
    (",".join(f"{b}:{b + 8:x}" for b in range(17)), "more than 16 adapters"),
])
def test_parse_acrn_refuses_what_acrn_dm_refuses(body, words):
    with pytest.raises(GrammarError, match=words):
        parse_acrn("virtio-i2c", body, "3")


def test_launch_script_argv_imports_as_devices_and_renders_back(service_vm):
    argv = ["acrn-dm", "--cpu_affinity", "2", "-m", "512M", "-k", "/bzImage", "-s", "0:0,hostbridge",
            "-s", "1:0,lpc", "-s", "5,virtio-i2c,0:70@cam1:2F,4:1C", "-s", "6,virtio-i2c,3", "vm1"]
    imported = spec_from_argv(argv)
    devices = [d for d in imported.data["spec"]["devices"] if d["type"] == "virtio-i2c"]
    assert devices[0]["devices"] == [{"type": "host", "bus": 0, "address": 0x70, "acpiNode": "cam1"},
                                     {"type": "host", "bus": 0, "address": 0x2F},
                                     {"type": "host", "bus": 4, "address": 0x1C}]
    assert devices[1]["args"] == "3"  # an adapter with no clients: only acrn-dm's string says it
    spec = load_spec_text(yaml.safe_dump(imported.data), "vm1.yaml", check_paths=False)
    compiled = compile_spec(spec, service_vm)
    assert compiled.ok, compiled.errors
    assert normalized_argv(compiled.argv) == normalized_argv(argv)
