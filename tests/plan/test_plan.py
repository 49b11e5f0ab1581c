"""Slot assignment, backend choices with their reasons, plan errors, and the v2.7 grammar."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from acrnmgr.devices import device_from_spec
from acrnmgr.plan.slots import assign_slots as assign_requests
from acrnmgr.plan.slots import requests_of
from acrnmgr.render.grammar import GrammarError, parse_argv

from tests.specs import BASIC, compile_body, make_spec

# The fields each kind requires, so that a test can name only what it is about.
_REQUIRED = {"virtio-blk": {"path": "/img"}, "virtio-console": {"ports": []}, "virtio-input": {"device": "/dev/x"},
             "virtio-i2c": {"args": "x"}, "virtio-gpio": {"args": "@gpiochip0{1}"}, "vhost-vsock": {"cid": 3},
             "passthru": {"bdf": "00:1f.3"}, "ivshmem": {"region": "dm:/x", "size": "2M"}}


def choose(raw, host, engine="acrn", family="3"):
    device = device_from_spec(0, {**_REQUIRED.get(raw["type"], {}), **raw}, Path("/"))
    return device.choose(host, engine, family)


def assign_slots(devices):
    return assign_requests(requests_of(devices))


# --- slots -----------------------------------------------------------------------------------

def test_slots_follow_device_order_from_3():
    slots, problems = assign_slots([{"type": "virtio-blk"}, {"type": "virtio-net"}, {"type": "virtio-rnd"}])
    assert slots == [3, 4, 5] and problems == []


def test_explicit_slots_are_skipped_and_gpu_takes_2():
    devices = [{"type": "virtio-blk"}, {"type": "virtio-net", "slot": 4}, {"type": "passthru", "gpu": True},
               {"type": "virtio-rnd"}, {"type": "virtio-console", "slot": 3}]
    slots, problems = assign_slots(devices)
    assert slots == [5, 4, 2, 6, 3] and problems == []


@pytest.mark.parametrize("devices, message", [
    ([{"type": "virtio-rnd", "slot": 1}], "reserved for the LPC bridge"),
    ([{"type": "virtio-rnd", "slot": 31}], "reserved for igd-lpc"),
    ([{"type": "virtio-rnd", "slot": 2}], "reserved for GPU passthrough"),
    ([{"type": "virtio-rnd", "slot": 30}], "outside 3..29"),
    ([{"type": "virtio-rnd", "slot": 7}, {"type": "virtio-blk", "slot": 7}], "already taken by device 0"),
    ([{"type": "passthru", "gpu": True, "slot": 5}], "must sit on slot 2"),
    ([{"type": "passthru", "gpu": True}, {"type": "passthru", "gpu": True}], "only one GPU"),
    ([{"type": "virtio-rnd"}] * 28, "no free PCI slot"),
])
def test_slot_problems(devices, message):
    _, problems = assign_slots(devices)
    assert len(problems) == 1 and message in problems[0].message


# --- backends ----------------------------------------------------------------------------------

def test_virtio_net_vhost_when_host_has_it(service_vm, plain_box):
    net = {"type": "virtio-net", "tap": "tap0"}
    assert choose(net, service_vm).backend == "vhost"
    choice = choose(net, plain_box)
    assert (choice.backend, choice.reason) == ("vbs-u",
                                               "host has no /dev/vhost-net: acrn-dm's user-space virtio-net (VBS-U)")
    assert choose({**net, "backend": "vbs-u"}, service_vm).backend == "vbs-u"
    # acrn-dm reads `,vhost` after mac_seed= as part of the seed (virtio_net.c): auto keeps the seed's MAC
    assert choose({**net, "macSeed": "s"}, service_vm).backend == "vbs-u"
    assert "would change the MAC" in choose({**net, "macSeed": "s"}, service_vm).reason
    assert choose({**net, "macSeed": "s", "backend": "vhost"}, service_vm).backend == "vhost"
    assert choose({**net, "macSeed": "s,vhost"}, service_vm).backend == "vhost"
    assert choose({**net, "macSeed": "s"}, service_vm, family="2").backend == "vhost"


@pytest.mark.parametrize("device, host, message, suggestion", [
    ({"type": "virtio-blk", "mode": "modern"}, "service_vm", "acrn-dm has no vhost-user frontend", "mode: legacy"),
    ({"type": "virtio-blk", "backend": "embedded"}, "service_vm", "acrn-dm has no vhost-user frontend", "qemu engine"),
    ({"type": "virtio-net", "tap": "t", "mode": "transitional"}, "service_vm", "legacy-only", "qemu engine"),
    ({"type": "vhost-vsock", "cid": 3}, "plain_box", "needs /dev/vhost-vsock", "vhost_vsock"),
    ({"type": "vhost-vsock", "cid": 3, "backend": "vbs-u"}, "service_vm", "no user-space vsock", None),
    ({"type": "virtio-net", "tap": "t", "backend": "vhost"}, "plain_box", "silently fall back", "backend: auto"),
    ({"type": "virtio-blk", "backend": "vhost"}, "service_vm", "kernel vhost only for virtio-net", None),
    ({"type": "virtio-input", "device": "/dev/input/event0", "mode": "legacy"}, "service_vm", "modern-only", None),
    ({"type": "ivshmem", "backend": "vbs-u"}, "service_vm", "only applies to virtio devices", None),
])
def test_backend_errors(device, host, message, suggestion, request):
    choice = choose(device, request.getfixturevalue(host))
    assert choice.error and message in choice.error
    if suggestion:
        assert suggestion in choice.suggestion


def test_embedded_device_is_planned_not_dropped(service_vm):
    choice = choose({"type": "virtio-blk", "mode": "modern"}, service_vm)
    assert choice.backend == "embedded" and "legacy-only" in choice.reason


def test_qemu_engine_plans_embedded_devices(service_vm, plain_box):
    modern = {"type": "virtio-blk", "mode": "modern", "backend": "embedded"}
    assert choose(modern, plain_box, "qemu").backend == "embedded"
    assert choose({"type": "virtio-blk"}, plain_box, "qemu").backend == "embedded"
    assert choose({"type": "virtio-net", "tap": "t"}, plain_box, "qemu").backend == "vbs-u"
    assert choose({"type": "virtio-net", "tap": "t"}, service_vm, "qemu").backend == "vhost"
    assert choose({"type": "ivshmem", "region": "dm:/x"}, plain_box, "qemu").error


# --- compile-level rules and plan errors --------------------------------------------------------

def test_plan_error_is_located(tmp_path, service_vm):
    body = BASIC + "  devices:\n    - {type: virtio-rnd}\n    - {type: virtio-blk, path: disk.img, mode: modern}\n"
    compiled = compile_body(tmp_path, body, service_vm)
    [error] = compiled.errors
    assert error.json_path == "spec.devices[1]" and error.line == 10 and error.col == 7
    assert "acrn-dm has no vhost-user frontend" in error.message
    assert compiled.devices[1].backend == "embedded"


def test_rtvm_gets_virtio_poll_and_no_lpc(tmp_path, service_vm):
    body = "  vmType: rtvm\n" + BASIC + "  devices:\n    - {type: virtio-blk, path: disk.img}\n"
    argv = compile_body(tmp_path, body, service_vm).argv
    assert argv[1] == "--rtvm" and argv[argv.index("--virtio_poll") + 1] == "1000000"
    assert "1:0,lpc" not in argv and "--lapic_pt" not in argv


def test_rtvm_keeps_its_own_poll_and_skips_it_without_virtio(tmp_path, service_vm):
    body = "  vmType: rtvm\n" + BASIC + "  settings: {virtioPoll: 5000}\n  devices:\n    - {type: virtio-rnd}\n"
    argv = compile_body(tmp_path, body, service_vm).argv
    assert argv[argv.index("--virtio_poll") + 1] == "5000"
    body = "  vmType: rtvm\n" + BASIC + "  devices:\n    - {type: passthru, bdf: '00:1f.6'}\n"
    assert "--virtio_poll" not in compile_body(tmp_path, body, service_vm).argv


def test_non_gpu_passthrough_adds_intr_monitor(tmp_path, service_vm):
    gpu = BASIC + "  devices:\n    - {type: passthru, bdf: '00:02.0', gpu: true}\n"
    assert "--intr_monitor" not in compile_body(tmp_path, gpu, service_vm).argv
    nic = BASIC + "  devices:\n    - {type: passthru, bdf: '00:1f.6'}\n"
    argv = compile_body(tmp_path, nic, service_vm).argv
    assert argv[argv.index("--intr_monitor") + 1] == "10000,10,1,100"
    own = nic + "  settings: {intrMonitor: {threshold: 1, period: 2, delayMs: 3, durationMs: 4}}\n"
    argv = compile_body(tmp_path, own, service_vm).argv
    assert argv.count("--intr_monitor") == 1 and argv[argv.index("--intr_monitor") + 1] == "1,2,3,4"


def test_windows_guest_gets_windows_flag_unless_turned_off(tmp_path, service_vm):
    assert "--windows" in compile_body(tmp_path, "  osType: windows\n" + BASIC, service_vm).argv
    off = "  osType: windows\n" + BASIC + "  settings: {windows: false}\n"
    assert "--windows" not in compile_body(tmp_path, off, service_vm).argv
    assert "--windows" not in compile_body(tmp_path, BASIC, service_vm).argv


@pytest.mark.parametrize("memory, expected",
                         [("1G", "1024M"), ("2048M", "2048M"), (768, "768M"), ("131584K", "131584K")])
def test_memory_always_has_a_unit(tmp_path, service_vm, memory, expected):
    body = BASIC.replace("512M", str(memory))
    argv = compile_body(tmp_path, body, service_vm).argv
    assert argv[argv.index("-m") + 1] == expected


def test_relative_paths_become_absolute(tmp_path, service_vm):
    argv = compile_body(tmp_path, BASIC + "  devices:\n    - {type: virtio-blk, path: ./disk.img}\n", service_vm).argv
    assert f"3:0,virtio-blk,{tmp_path}/disk.img" in argv and argv[argv.index("-k") + 1] == f"{tmp_path}/bzImage"


def test_comma_in_a_device_path_is_a_plan_error(tmp_path, service_vm):
    (tmp_path / "a,b.img").write_bytes(b"\0")
    compiled = compile_body(tmp_path, BASIC + "  devices:\n    - {type: virtio-blk, path: 'a,b.img'}\n", service_vm)
    assert [e.json_path for e in compiled.errors] == ["spec.devices[0].path"]
    assert "acrn-dm uses to split" in compiled.errors[0].message


def test_vsock_without_vhost_vsock_is_a_plan_error(tmp_path, plain_box):
    compiled = compile_body(tmp_path, BASIC + "  devices:\n    - {type: vhost-vsock, cid: 3}\n", plain_box)
    assert not compiled.ok and "needs /dev/vhost-vsock" in compiled.errors[0].message
    assert compiled.errors[0].suggestion


# --- v2.7 grammar -------------------------------------------------------------------------------

def test_v27_cpu_affinity_is_pcpu_ranges(tmp_path, service_vm):
    body = BASIC.replace("[2]", "[2, 4, 6, 10]")
    argv = compile_body(tmp_path, body, service_vm, "2.7").argv
    assert argv[argv.index("--cpu_affinity") + 1] == "1-3,5"  # host LAPIC IDs are 0,2,4,...
    argv = compile_body(tmp_path, body, service_vm, "3.x").argv
    assert argv[argv.index("--cpu_affinity") + 1] == "2,4,6,10"


def test_v27_unknown_lapic_is_an_error(tmp_path, service_vm):
    compiled = compile_body(tmp_path, BASIC.replace("[2]", "[3]"), service_vm, "2.7")
    assert compiled.errors[0].json_path == "spec.cpu.affinity[0]"


def test_v27_virtio_net_and_global_mac_seed(tmp_path, plain_box):
    body = BASIC + ("  devices:\n    - {type: virtio-net, tap: tap_a, macSeed: s1}\n"
                    "    - {type: virtio-net, tap: tap_b, mac: '00:16:3e:00:00:02'}\n")
    v2 = compile_body(tmp_path, body, plain_box, "2.7").argv
    assert v2[v2.index("--mac_seed") + 1] == "s1"
    assert "3:0,virtio-net,tap_a" in v2 and "4:0,virtio-net,tap_b,mac=00:16:3e:00:00:02" in v2
    v3 = compile_body(tmp_path, body, plain_box, "3.x").argv
    assert "--mac_seed" not in v3 and "3:0,virtio-net,tap=tap_a,mac_seed=s1" in v3
    parse_argv(v2, "2.7")
    with pytest.raises(GrammarError, match="needs tap=<name>"):
        parse_argv(v2, "3.x")  # the grammars really differ


def test_v27_errors(tmp_path, plain_box):
    body = BASIC + ("  devices:\n    - {type: virtio-net, tap: eth0, macSeed: a}\n"
                    "    - {type: virtio-net, tap: tap1, macSeed: b}\n"
                    "  settings: {cmdMonitor: /run/x.sock, iasl: /usr/bin/iasl, virtioMsi: true}\n")
    messages = [e.message for e in compile_body(tmp_path, body, plain_box, "2.7").errors]
    assert any("'tap'" in m for m in messages)
    assert any("one global --mac_seed" in m for m in messages)
    assert any("--cmd_monitor needs acrn-dm v3.0" in m for m in messages)
    assert any("--iasl needs acrn-dm v3.2" in m for m in messages)
    assert any("--virtio_msi needs" in m for m in messages)


def test_compiled_to_dict_is_json_ready(tmp_path, service_vm):
    import json

    compiled = compile_body(tmp_path, BASIC + "  devices:\n    - {type: virtio-rnd}\n", service_vm)
    data = json.loads(json.dumps(compiled.to_dict()))
    assert data["devices"][0]["backend"] == "vbs-u" and data["argv"] == compiled.argv
    assert dataclasses.is_dataclass(compiled.devices[0])


def test_modern_vbs_u_blk_is_an_acrn_plan_error_and_a_qemu_device(tmp_path, service_vm, plain_box):
    """Validation used to refuse this for every engine; QEMU's virtio-blk gives any mode."""
    body = BASIC + "  devices:\n    - {type: virtio-blk, path: disk.img, backend: vbs-u, mode: modern}\n"
    acrn = compile_body(tmp_path, body, service_vm)
    assert [e.message for e in acrn.errors] == ["acrn-dm's virtio-blk is legacy-only; it cannot give mode: modern"]
    qemu = compile_body(tmp_path, body, plain_box, engine="qemu")
    assert qemu.ok and [(d.backend, d.slot) for d in qemu.devices] == [("vbs-u", 3)]
    from acrnmgr.lifecycle.qemu_argv import compile_qemu
    argv = compile_qemu(make_spec(tmp_path, body), plain_box, tmp_path).argv
    assert any(a.startswith("virtio-blk-pci,drive=dev3,addr=0x3,disable-legacy=on,disable-modern=off,") for a in argv)


def test_virtio_gpu_without_a_display_is_refused_for_acrn_dm(tmp_path, service_vm):
    body = BASIC + "  devices:\n    - {type: virtio-gpu}\n"
    compiled = compile_body(tmp_path, body, service_vm)
    assert any("at least one display" in d.message for d in compiled.errors)
    ok = compile_body(tmp_path, BASIC + "  devices:\n    - {type: virtio-gpu, displays: [{fullscreen: true}]}\n",
                      service_vm)
    assert ok.ok and "3:0,virtio-gpu,geometry=fullscreen" in ok.argv


def test_mac_seed_follows_acrn_dms_parser(tmp_path, service_vm):
    """virtio_net.c: mac_seed= counts only right after the tap name and takes the rest of the string;
    vhost and mac= are honoured anywhere, the seed included."""
    seeded = parse_argv(["acrn-dm", "-m", "1G", "--cpu_affinity", "1", "-s", "4,virtio-net,tap=t0,mac_seed=a,vhost",
                         "vm"]).slots[0].params
    assert seeded["macSeed"] == "a,vhost" and seeded["vhost"] is True
    late = parse_argv(["acrn-dm", "-m", "1G", "--cpu_affinity", "1", "-s", "4,virtio-net,tap=t0,vhost,mac_seed=a",
                       "vm"]).slots[0].params
    assert "macSeed" not in late and late["vhost"] is True and late["ignored"] == ["mac_seed=a"]
    # auto keeps the seed's MAC (user-space virtio-net); an explicit vhost follows the seed, as acrn-dm reads it
    body = BASIC + "  devices:\n    - {type: virtio-net, tap: t0, macSeed: s1}\n"
    assert "tap=t0,mac_seed=s1" in " ".join(compile_body(tmp_path, body, service_vm).argv)
    vhost = compile_body(tmp_path, body.replace("macSeed: s1", "macSeed: s1, backend: vhost"), service_vm)
    assert "tap=t0,mac_seed=s1,vhost" in " ".join(vhost.argv)
    imported = parse_argv(vhost.argv).slots[-1].params
    assert (imported["macSeed"], imported["vhost"]) == ("s1,vhost", True)
