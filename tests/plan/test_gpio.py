"""virtio-gpio as a device kind: the spec's lines, their checks, the plan on each engine, acrn-dm's config string
both ways (against acrn-dm's native_gpio_init) and the QEMU argv with its embedded device model."""

from __future__ import annotations

import dataclasses

import pytest

from acrnmgr.devices.virtio_gpio import parse_config
from acrnmgr.render.grammar import GrammarError, parse_argv

from tests.spec.helpers import devices_text
from tests.spec.test_checks import errors
from tests.specs import BASIC, compile_body, make_spec

LINES = """\
  devices:
    - type: virtio-gpio
      lines:
        - {name: button, direction: in}
        - {name: led, direction: out, initial: 1}
"""
HOST_LINES = """\
  devices:
    - type: virtio-gpio
      lines:
        - {name: reset, host: "gpiochip0:17"}
        - {host: "gpiochip0:PWR_EN"}
        - {name: alarm, host: "gpiochip2:3"}
        - {host: "gpiochip0:4"}
"""


def test_host_lines_render_as_acrn_dm_reads_them(tmp_path, service_vm):
    compiled = compile_body(tmp_path, BASIC + HOST_LINES, service_vm)
    assert compiled.ok, compiled.errors
    assert "3:0,virtio-gpio,@gpiochip0{17=reset:PWR_EN}@gpiochip2{3=alarm}@gpiochip0{4}" in compiled.argv
    (dev,) = compiled.devices
    assert dev.backend == "vbs-u" and "ACRN's device 8086:8609" in dev.reason


def test_acrn_dm_config_parses_back_to_the_same_lines():
    assert parse_config("@gpiochip0{17=reset:PWR_EN}@gpiochip2{3=alarm}@gpiochip0{4}")["lines"] == [
        ("reset", None, 0, "gpiochip0:17"), (None, None, 0, "gpiochip0:PWR_EN"), ("alarm", None, 0, "gpiochip2:3"),
        (None, None, 0, "gpiochip0:4")]


def test_what_acrn_dm_skips_is_reported_not_dropped_silently():
    parsed = parse_config("@{1}@gpiochip1@gpiochip0{::5:_x:7}junk")
    assert parsed["lines"] == [(None, None, 0, "gpiochip0:5"), (None, None, 0, "gpiochip0:7")]
    assert len(parsed["ignored"]) == 4  # no chip; no '{'; '_x' (acrn-dm looks lines up by a letter or digit); junk


@pytest.mark.parametrize("body, words", [
    ("x", "names no GPIO line"),
    ("@gpiochip0{}", "names no GPIO line"),
    ("@../../etc{1}", "gpiochipN chips only"),
    ("@gpiochip0{1=-opt}", "guest name"),
    ("@gpiochip0{99999999}", "out of range"),
    ("@gpiochip0{1x}", "neither an offset nor a line name"),
])
def test_configs_acrn_dm_refuses_or_acrnmgr_cannot_carry(body, words):
    with pytest.raises(GrammarError, match=words):
        parse_config(body)


def test_launch_script_import_reads_lines():
    cmd = parse_argv(["acrn-dm", "-m", "1G", "--cpu_affinity", "1", "-s", "5,virtio-gpio,@gpiochip0{2=btn:3}", "vm"])
    from acrnmgr.devices.virtio_gpio import VirtioGpio

    warnings: list[str] = []
    assert VirtioGpio.spec_from_acrn(cmd.slot(5), warnings) == {
        "type": "virtio-gpio", "lines": [{"name": "btn", "host": "gpiochip0:2"}, {"host": "gpiochip0:3"}]}
    assert warnings == []


def test_simulated_lines_are_an_acrn_plan_error_that_says_what_works(tmp_path, service_vm):
    compiled = compile_body(tmp_path, BASIC + LINES, service_vm)
    assert [e.json_path for e in compiled.errors] == ["spec.devices[0].lines[0]", "spec.devices[0].lines[1]"]
    first = compiled.errors[0]
    assert "line button is simulated; acrn-dm's virtio-gpio passes host GPIO lines only" in first.message
    assert "qemu engine" in first.suggestion


def test_direction_on_a_host_line_warns_on_acrn(tmp_path, service_vm):
    body = BASIC + "  devices:\n    - {type: virtio-gpio, lines: [{name: a, host: 'gpiochip0:1', direction: in}]}\n"
    compiled = compile_body(tmp_path, body, service_vm)
    assert compiled.ok and [w.json_path for w in compiled.warnings] == ["spec.devices[0].lines[0].direction"]


def test_qemu_engine_serves_it_from_the_embedded_device_model(tmp_path, plain_box):
    compiled = compile_body(tmp_path, BASIC + LINES, plain_box, engine="qemu")
    assert compiled.ok, compiled.errors
    (dev,) = compiled.devices
    assert dev.backend == "embedded"
    assert dev.reason == ("acrn-dm's virtio-gpio is native on ACRN; on QEMU it is served by the embedded device "
                          "model over vhost-user-gpio-pci (the standard virtio 1.2 GPIO device)")
    (warning,) = compiled.warnings  # what QEMU's front-end cannot do, said before anyone wonders
    assert "does not offer the guest VIRTIO_GPIO_F_IRQ" in warning.message
    from acrnmgr.lifecycle.qemu_argv import compile_qemu

    launch = compile_qemu(make_spec(tmp_path, BASIC + LINES), plain_box, tmp_path)
    (helper,) = launch.helpers
    argv = helper.argv
    assert argv[argv.index("--device") + 1] == "gpio"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--line"] == ["button:in", "led:out=1"]
    control = argv[argv.index("--control-socket") + 1]
    assert control.endswith("virtio-gpio0.gpio.sock") and control in launch.sockets
    assert any(a.startswith("vhost-user-gpio-pci,chardev=cdev3,addr=0x3") for a in launch.argv)


@pytest.mark.parametrize(("version", "warning"), [
    (None, "QEMU's vhost-user-gpio-pci before 9.0 does not offer the guest VIRTIO_GPIO_F_IRQ, and the host profile "
           "does not say which QEMU this is (`qemu_version`): GPIO interrupts may not reach the guest"),
    ("7.2.22", "QEMU 7.2's vhost-user-gpio-pci does not offer the guest VIRTIO_GPIO_F_IRQ (QEMU before 9.0 never "
               "does): the lines work, GPIO interrupts do not reach the guest"),
    ("8.2", "QEMU 8.2's vhost-user-gpio-pci does not offer the guest VIRTIO_GPIO_F_IRQ (QEMU before 9.0 never does): "
            "the lines work, GPIO interrupts do not reach the guest"),
    ("9.0.0", None),
    ("10.0.2", None),
])
def test_qemu_version_decides_the_no_interrupts_warning(tmp_path, plain_box, version, warning):
    host = dataclasses.replace(plain_box, qemu_version=version)
    compiled = compile_body(tmp_path, BASIC + LINES, host, engine="qemu")
    assert compiled.ok, compiled.errors
    assert [w.message for w in compiled.warnings] == ([warning] if warning else [])
    if warning:
        assert "QEMU 9.0 or later" in compiled.warnings[0].suggestion


def test_qemu_engine_takes_acrn_dm_args_too(tmp_path, plain_box):
    body = BASIC + "  devices:\n    - {type: virtio-gpio, args: '@gpiochip0{17=reset:4}'}\n"
    from acrnmgr.devmodel.gpio import parse_line_arg
    from acrnmgr.lifecycle.qemu_argv import compile_qemu

    (helper,) = compile_qemu(make_spec(tmp_path, body), plain_box, tmp_path).helpers
    lines = [helper.argv[i + 1] for i, a in enumerate(helper.argv) if a == "--line"]
    assert lines == ["reset@gpiochip0:17", "@gpiochip0:4"]  # unnamed: the guest sees the host line's name
    assert [parse_line_arg(a).host for a in lines] == ["gpiochip0:17", "gpiochip0:4"]  # the device model's parse


@pytest.mark.parametrize("extra, words", [
    ("mode: legacy", "vhost-user-gpio-pci is modern-only"),
    ("backend: vbs-u", "QEMU has no virtio-gpio of its own"),
])
def test_qemu_refusals(tmp_path, plain_box, extra, words):
    body = BASIC + f"  devices:\n    - {{type: virtio-gpio, lines: [{{name: a}}], {extra}}}\n"
    compiled = compile_body(tmp_path, body, plain_box, engine="qemu")
    assert any(words in e.message for e in compiled.errors), compiled.errors


def test_modern_mode_is_an_acrn_plan_error(tmp_path, service_vm):
    body = BASIC + "  devices:\n    - {type: virtio-gpio, lines: [{host: 'gpiochip0:1'}], mode: modern}\n"
    compiled = compile_body(tmp_path, body, service_vm)
    assert any("acrn-dm has no vhost-user frontend" in e.message for e in compiled.errors)


@pytest.mark.parametrize("devices, path, words", [
    ("- {type: virtio-gpio}", "spec.devices[0]", "virtio-gpio needs `lines`"),
    ("- {type: virtio-gpio, args: '@gpiochip0{1}', lines: [{name: a}]}", "spec.devices[0]", "not both"),
    ("- {type: virtio-gpio, lines: [{name: a}, {name: a}]}", "spec.devices[0].lines[1].name", "already lines[0]'s"),
    ("- {type: virtio-gpio, lines: [{host: 'gpiochip0:1'}, {host: 'gpiochip0:1'}]}", "spec.devices[0].lines[1].host",
     "already lines[0]"),
    ("- {type: virtio-gpio, lines: [{direction: in}]}", "spec.devices[0].lines[0]", "needs a `name`"),
    ("- {type: virtio-gpio, args: 'x'}", "spec.devices[0].args", "names no GPIO line"),
    ("- {type: virtio-gpio, lines: [{name: a}]}\n- {type: virtio-gpio, lines: [{name: b}]}", "spec.devices[1]",
     "one virtio-gpio controller"),
    ("- {type: virtio-gpio, lines: [{name: a, direction: sideways}]}", "spec.devices[0].lines[0].direction", ""),
    ("- {type: virtio-gpio, lines: [{name: a, host: '/dev/gpiochip0:1'}]}", "spec.devices[0].lines[0].host", ""),
    ("- {type: virtio-gpio, lines: [{name: 'a b'}]}", "spec.devices[0].lines[0].name", ""),
])
def test_spec_checks(devices, path, words):
    found = [d for d in errors(devices_text(devices)) if d.json_path == path]
    assert found and words in found[0].message, errors(devices_text(devices))
    assert found[0].suggestion or not words


def test_existing_args_specs_stay_valid():
    assert errors(devices_text("- {type: virtio-gpio, args: '@gpiochip0{1:2:3}'}")) == []


def test_libvirt_has_no_gpio_element_and_the_export_says_so(tmp_path, plain_box, service_vm):
    from acrnmgr.render.libvirt import export_domain

    spec = make_spec(tmp_path, BASIC + LINES)
    xml, warnings = export_domain(spec, plain_box, "qemu", state_dir=tmp_path / "state")
    assert any("(virtio-gpio) has no QEMU domain element" in w for w in warnings), warnings
    assert "gpio" not in xml.split("<metadata>")[0]  # no element in <devices>, only the metadata copy
    xml, _ = export_domain(make_spec(tmp_path, BASIC + HOST_LINES), service_vm, "acrn")
    assert "virtio-gpio,@gpiochip0{17=reset:PWR_EN}@gpiochip2{3=alarm}@gpiochip0{4}" in xml  # acrn:commandline
