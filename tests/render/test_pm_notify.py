"""settings.pmNotifyChannel in acrn-dm's v3 form. acrn-dm v3 (devicemodel/core/main.c) marks
--pm_notify_channel obsolete: it warns, and still acts on it. power_button works; uart needs the vUART
node that the (now ignored) --pm_by_vuart gave, so acrn-dm fails to set the VM up (core/pm_vuart.c);
v3's S5 goes through the Lifecycle Manager over the hypervisor's S5 vUART instead, with no acrn-dm option."""

from __future__ import annotations

import textwrap

import pytest

from acrnmgr.host import HostProfile
from acrnmgr.importers.dm_argv import spec_from_argv
from acrnmgr.render.acrndm import compile_spec
from acrnmgr.render.grammar import parse_argv
from acrnmgr.spec.validation import load_spec_text

HOST = HostProfile(is_service_vm=True, hsm_device="/dev/acrn_hsm", acrn_dm="/usr/bin/acrn-dm", acrn_dm_version="3.x",
                   cpu_count=4, lapic_ids=[0, 2, 4, 6])


def compiled(settings: str, version: str = "3.x"):
    spec = load_spec_text(textwrap.dedent(f"""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {{name: pm}}
        spec:
          cpu: {{affinity: [2]}}
          memory: 256M
          boot: {{kernel: {{path: /k}}}}
          settings: {settings}
        """), "pm.yaml", check_paths=False)
    return compile_spec(spec, HOST, target_version=version)


def option(argv, name="--pm_notify_channel"):
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def test_power_button_is_still_written_for_v3_and_acrn_dm_warns_it_is_obsolete():
    c = compiled("{pmNotifyChannel: power_button}")
    assert c.ok and option(c.argv) == ["power_button"]
    assert any("obsolete" in w for w in parse_argv(c.argv).warnings)


@pytest.mark.parametrize("settings", ["{pmNotifyChannel: uart}", "{pmNotifyChannel: uart, allowTriggerS5: true}"])
def test_uart_is_not_written_for_v3_and_the_plan_says_why(settings):
    c = compiled(settings)
    assert c.ok, c.errors
    assert option(c.argv) == []
    (warning,) = [w for w in c.warnings if w.json_path == "spec.settings.pmNotifyChannel"]
    assert "pm_by_vuart_init finds no vUART node" in warning.message and "life_mngr" in warning.message


def test_uart_keeps_its_option_for_2_7():
    c = compiled("{pmNotifyChannel: uart, allowTriggerS5: true}", "2.7")
    assert c.ok, c.errors
    assert option(c.argv) == ["uart,allow_trigger_s5"]


def test_ioc_is_a_plan_error_for_v3_and_allow_trigger_s5_needs_uart():
    assert [e.json_path for e in compiled("{pmNotifyChannel: ioc}").errors] == ["spec.settings.pmNotifyChannel"]
    assert [e.json_path for e in compiled("{pmNotifyChannel: power_button, allowTriggerS5: true}").errors] == [
        "spec.settings.allowTriggerS5"]


def test_import_keeps_what_v3_acts_on():
    base = ["acrn-dm", "-m", "256M", "--cpu_affinity", "2", "-k", "/k", "-s", "0:0,hostbridge", "-s", "1:0,lpc"]
    button = spec_from_argv([*base, "--pm_notify_channel", "power_button", "vm1"])
    assert button.data["spec"]["settings"] == {"pmNotifyChannel": "power_button"}
    uart = spec_from_argv([*base, "--pm_notify_channel", "uart,allow_trigger_s5", "vm1"])
    assert "settings" not in uart.data["spec"]
    assert any("no vUART node" in w for w in uart.warnings)
    old = spec_from_argv([*base, "--pm_notify_channel", "uart", "vm1"], version="2.7")
    assert old.data["spec"]["settings"] == {"pmNotifyChannel": "uart"}
