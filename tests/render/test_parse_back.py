"""Rendered argv parse back, with the acrn-dm grammar, to the devices and settings of the spec."""

from __future__ import annotations

import os

import pytest

from acrnmgr.render.acrndm import compile_spec
from acrnmgr.render.grammar import parse_argv, parse_cpu_affinity, parse_memsize
from acrnmgr.spec.validation import load_spec
from acrnmgr.spec.units import parse_size

from tests.specs import EXAMPLE_FILES, make_spec


def _abs(spec, p):
    return os.path.normpath(str(spec.resolve_path(p)))


def expected_params(spec, device: dict, backend: str, family: str) -> dict:
    """The grammar's parse of a device's config, predicted from the spec alone."""
    kind = device["type"]
    if kind == "virtio-blk":
        out = {"path": _abs(spec, device["path"]), "cache": device.get("cache", "writethru"),
               "readOnly": device.get("readOnly", False)}
        for key in ("discard", "range", "mq", "aio"):
            if device.get(key):
                out[key] = device[key]
        if device.get("sectorSize"):
            ss = device["sectorSize"]
            out["sectorSize"] = {"logical": ss["logical"], "physical": ss.get("physical", ss["logical"])}
        it = device.get("iothread")
        if it:
            out["iothread"] = ({"count": 1, "cpus": []} if it is True
                               else {"count": it["count"], "cpus": it.get("cpus", [])})
        return out
    if kind == "virtio-net":
        out = {"tap": device.get("tap") or device.get("macvtap"), "vhost": backend == "vhost"}
        if device.get("mac"):
            out["mac"] = device["mac"].lower()
        if device.get("macSeed") and family == "3":
            out["macSeed"] = device["macSeed"]
        return out
    if kind == "virtio-console":
        ports = []
        for p in device["ports"]:
            port = {"kind": p["kind"], "name": p["name"], "console": p.get("console", False)}
            if p.get("path"):
                port["path"] = _abs(spec, p["path"])
            if p["kind"] == "socket":
                port["socketMode"] = p.get("socketMode", "server")
            ports.append(port)
        return {"ports": ports}
    if kind == "passthru":
        opts = dict(device.get("options", {}))
        for key in ("romfile", "dsdt"):
            if key in opts:
                opts[key] = _abs(spec, opts[key])
        return {"bdf": device["bdf"].lower().replace("/", ":", 1).replace("/", "."), "options": opts}
    if kind == "ivshmem":
        out = {"region": device["region"], "sizeMb": parse_size(device["size"]) >> 20}
        if "regionId" in device:
            out["regionId"] = device["regionId"]
        return out
    if kind == "vhost-vsock":
        return {"cid": device["cid"]}
    if kind == "virtio-rnd":
        return {"kernel": False}
    if kind == "virtio-input":
        return {"device": device["device"], **({"serial": device["serial"]} if device.get("serial") else {})}
    if kind == "virtio-gpu":
        return {"displays": device.get("displays", [])}
    if kind == "xhci":
        out = {"ports": device.get("ports", [])}
        for key in ("tablet", "log", "cap"):
            if device.get(key):
                out[key] = device[key]
        return out
    if kind == "ahci":
        return {k: [_abs(spec, device[k])] if device.get(k) else [] for k in ("hd", "cd")}
    if kind == "uart":
        return {"vuartIdx": device.get("vuartIdx", 0)}
    if kind == "virtio-i2c" and "args" not in device:
        buses: dict[int, list[dict]] = {}
        for c in device.get("devices", []):
            node = {"acpiNode": c["acpiNode"]} if "acpiNode" in c else {}
            buses.setdefault(c["bus"], []).append({"address": c["address"], **node})
        args = ",".join(":".join([str(b), *(f"{c['address']:X}" + (f"@{c['acpiNode']}" if "acpiNode" in c else "")
                                          for c in cs)]) for b, cs in buses.items())
        return {"args": args, "adapters": [{"bus": b, "clients": cs} for b, cs in buses.items()], "skipped": []}
    if kind == "virtio-i2c":
        return {"args": device.get("args", "")}
    if kind == "virtio-gpio":  # in the guest's order, as acrn-dm numbers them
        return {"lines": [(ln.get("name"), None, 0, ln["host"]) for ln in device["lines"]], "ignored": []}
    return {}


def assert_parses_back(spec, compiled, version):
    family = version[0]
    cmd = parse_argv(compiled.argv, version)
    s = spec.spec
    assert cmd.vm_name == spec.name
    assert parse_memsize(cmd.get("memsize")) == parse_size(s["memory"])
    cpus = parse_cpu_affinity(cmd.get("cpu_affinity"), family)
    assert len(cpus) == len(s["cpu"]["affinity"])
    if family == "3":
        assert cpus == s["cpu"]["affinity"]
    assert cmd.has("rtvm") == (s.get("vmType") == "rtvm")
    assert cmd.slot(0).emul == "hostbridge"
    assert (cmd.slot(1) is not None) == (s.get("vmType") != "rtvm")
    assert sorted(cmd.lpc) == sorted(p["port"] for p in s.get("console", {}).get("lpc", []))
    planned = [p for p in compiled.devices]
    assert len(cmd.slots) == len(planned) + (1 if s.get("vmType") == "rtvm" else 2)
    for plan in planned:
        device = spec.devices[plan.index]
        parsed = cmd.slot(plan.slot)
        assert parsed is not None, plan
        assert parsed.emul == plan.emulation
        assert parsed.boot == bool(device.get("boot"))
        assert parsed.params == expected_params(spec, device, plan.backend, family), plan.name


# The *-qemu examples are meant for the qemu engine: acrn-dm refuses them (their plan tests say why).
@pytest.mark.parametrize("example", [p for p in EXAMPLE_FILES if not p.stem.endswith("-qemu")], ids=lambda p: p.stem)
@pytest.mark.parametrize("version", ["3.x", "2.7"])
def test_examples_parse_back(example, version, service_vm):
    spec = load_spec(example)
    compiled = compile_spec(spec, service_vm, version)
    if not compiled.ok:
        # v2.7 refuses v3-only settings (cmd_monitor, ssram): the plan says so, nothing to parse
        assert version == "2.7" and all("v2.7" in d.message for d in compiled.errors)
        return
    assert_parses_back(spec, compiled, version)


KITCHEN_SINK = """\
  vmType: standard
  osType: windows
  cpu: {affinity: [2, 4]}
  memory: 3072
  boot: {ovmf: {image: OVMF.fd, writeback: true}}
  console:
    lpc:
      - {port: com1, backend: stdio}
      - {port: com2, backend: tty, path: /dev/pts/3}
      - {port: com3, backend: tcp, tcpPort: 4444}
      - {port: com5, path: /run/s5.sock, tcpPort: 5000, irq: 12}
  devices:
    - {type: virtio-blk, name: a, path: disk.img, boot: true, cache: nocache, readOnly: true,
       discard: {maxSectors: 8, maxSegments: 1, alignment: 1}, sectorSize: {logical: 512, physical: 4096},
       range: {startLba: 0, size: 1048576}, iothread: {count: 2, cpus: [[0, 1], [2]]}, mq: 2, aio: threads}
    - {type: virtio-blk, name: b, path: disk.img, slot: 20, iothread: true}
    - {type: virtio-net, name: n1, tap: tap_a, mac: "00:16:3E:00:00:01"}
    - {type: virtio-net, name: n2, macvtap: macvtap0, macSeed: seed1}
    - type: virtio-console
      name: c
      ports:
        - {kind: pty, name: hvc0, console: true}
        - {kind: socket, name: agent, path: /run/agent.sock, socketMode: client}
        - {kind: tty, name: t0, path: /dev/ttyS1}
        - {kind: file, name: f0, path: /var/log/vm.log}
    - {type: virtio-rnd}
    - {type: virtio-input, device: /dev/input/event0, serial: kbd0}
    - {type: virtio-gpu, displays: [{geometry: "1920x1080+0+0"}, {fullscreen: true, monitor: 1}]}
    - {type: vhost-vsock, cid: 42}
    - {type: virtio-gpio, lines: [{name: reset, host: "gpiochip0:17"}, {host: "gpiochip1:LED"}, {host: "gpiochip0:2"}]}
    - {type: passthru, bdf: "00:1f.3", options: {keepGsi: true, noReset: true, d3hotReset: true,
       vmsixOnMsi: 2, enablePtm: true, irq: 5, dsdt: disk.img}}
    - {type: passthru, bdf: "00/02/0", gpu: true, options: {romfile: disk.img}}
    - {type: ivshmem, region: "dm:/shm_region_0", size: 2M, regionId: 0}
    - {type: xhci, ports: ["1-2", "2-2"], tablet: true, log: /tmp/xhci.log, cap: apl}
    - {type: ahci, hd: disk.img, cd: disk.img}
    - {type: wdt}
    - {type: uart, vuartIdx: 1}
  settings:
    virtioPoll: 1000
    acpiDevPt: [{hid: MSFT0101, uid: "1"}]
    mmioDevPt: [{base: "0xFED40000", length: "0x5000"}]
    intrMonitor: {threshold: 20000, period: 5, delayMs: 2, durationMs: 50}
    logger: {console: 4, kmsg: 3, disk: 5}
    windows: true
    pmNotifyChannel: power_button
    enableTrusty: true
    debugexit: true
    virtioMsi: true
    ssram: "L2,vcpu=0,1,size=4K;L3,vcpu=all,size=2M"
    cmdMonitor: /run/acrn/t1.sock
"""


def test_kitchen_sink_parses_back(tmp_path, service_vm):
    spec = make_spec(tmp_path, KITCHEN_SINK)
    compiled = compile_spec(spec, service_vm)
    assert compiled.ok, compiled.errors
    assert_parses_back(spec, compiled, "3.x")
    cmd = parse_argv(compiled.argv)
    for option, value in [("virtio_poll", "1000"), ("acpidev_pt", "MSFT0101,1"),
                          ("mmiodev_pt", "0xFED40000,0x5000"), ("intr_monitor", "20000,5,2,50"),
                          ("pm_notify_channel", "power_button"), ("cmd_monitor", "/run/acrn/t1.sock"),
                          ("ovmf", f"w,{tmp_path}/OVMF.fd"),
                          ("logger_setting", "console,level=4;kmsg,level=3;disk,level=5")]:
        assert cmd.get(option) == value, option
    for flag in ("windows", "enable_trusty", "debugexit", "virtio_msi", "ssram"):
        assert cmd.has(flag)
    assert cmd.lpc == {"com1": {"backend": "stdio"}, "com2": {"backend": "tty", "path": "/dev/pts/3"},
                       "com3": {"backend": "tcp", "port": 4444},
                       "com5": {"backend": "s5", "path": "/run/s5.sock", "port": 5000, "irq": 12}}
    assert cmd.get("memsize") == "3072M"


def test_kitchen_sink_v27_minus_v3_only_settings(tmp_path, service_vm):
    body = "\n".join(line for line in KITCHEN_SINK.splitlines()
                     if not line.strip().startswith(("virtioMsi", "ssram", "cmdMonitor")))
    spec = make_spec(tmp_path, body + "\n")
    compiled = compile_spec(spec, service_vm, "2.7")
    assert compiled.ok, compiled.errors
    assert_parses_back(spec, compiled, "2.7")
    assert parse_argv(compiled.argv, "2.7").get("mac_seed") == "seed1"
