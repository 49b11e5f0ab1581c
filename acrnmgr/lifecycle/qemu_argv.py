"""Compile a VM spec to a QEMU argv (the qemu engine), using the same slot assignment and backend
choice as the acrn-dm compiler so the guest sees the same PCI layout.

- KVM when /dev/kvm is usable, TCG otherwise; i440fx machine ("pc") so slot N is addr=N on pci.0.
- Guest RAM is a shared memfd (memory-backend-memfd,share=on + -numa node,memdev=mem) so
  vhost-user device models can map it.
- backend vbs-u -> QEMU's own device; vhost -> vhost=on; embedded -> a vhost-user device whose
  backend is an `acrnmgr devmodel serve` helper process (started before QEMU by the supervisor).
- mode legacy|transitional|modern -> disable-legacy / disable-modern.
- stdio consoles become unix sockets in the state folder (for `acrnmgr console`), logged to
  console.log; QMP listens on qmp.sock there too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from acrnmgr.lifecycle.engine import ProcessSpec

MAX_SOCKET_PATH = 107
_MODES = {
    "legacy": ("off", "on"),  # disable-legacy, disable-modern
    "transitional": ("off", "off"),
    "modern": ("on", "off"),
}
_COM_INDEX = {"com1": 0, "com2": 1, "com3": 2, "com4": 3}


@dataclass
class QemuPlan:
    argv: list[str]
    helpers: list[ProcessSpec] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)  # every unix socket to remove after stop
    consoles: list[dict] = field(default_factory=list)  # {"name", "kind": socket|pty|tty, "path"}
    devices: list[dict] = field(default_factory=list)  # {"name", "type", "slot", "backend", "reason"}
    copies: list[tuple[str, str]] = field(default_factory=list)  # (source, per-run copy) made before start
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def esc(value: object) -> str:
    """QEMU's key=value option syntax: a comma inside a value is written twice."""
    return str(value).replace(",", ",,")


def devmodel_command() -> list[str]:
    script = Path(sys.executable).with_name("acrnmgr")
    return [str(script) if script.exists() else (shutil.which("acrnmgr") or "acrnmgr"), "devmodel", "serve"]


def device_name(device: dict, slot: int | None) -> str:
    return device.get("name") or f"{device['type']}-{slot}"


def compile_qemu(spec, host, state_dir: Path) -> QemuPlan:
    from acrnmgr.compiler.backends import choose
    from acrnmgr.compiler.slots import assign_slots
    from acrnmgr.spec.units import parse_size

    s = spec.spec
    qemu = host.qemu or shutil.which("qemu-system-x86_64")
    plan = QemuPlan(argv=[])
    if not qemu:
        plan.errors.append("qemu-system-x86_64 not found: install QEMU (Debian: qemu-system-x86)")
        qemu = "qemu-system-x86_64"
    mib = -(-parse_size(s.get("memory", "128M")) // (1 << 20))
    cpus = max(1, len(s.get("cpu", {}).get("affinity", [])))
    qmp = state_dir / "qmp.sock"
    a = [
        qemu,
        "-name", f"guest={spec.name},debug-threads=on",
        "-machine", "pc,accel=kvm" if host.kvm else "pc,accel=tcg",
        "-cpu", "host" if host.kvm else "max",
        "-smp", str(cpus),
        "-m", f"{mib}M",
        "-object", f"memory-backend-memfd,id=mem,size={mib}M,share=on",
        "-numa", "node,memdev=mem",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-chardev", f"socket,id=qmp,path={esc(qmp)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]
    plan.sockets.append(str(qmp))
    _boot(spec, a, plan, state_dir)
    _lpc(s.get("console", {}).get("lpc", []), a, plan, state_dir)

    devices = spec.devices
    slots, problems = assign_slots(devices)
    for p in problems:
        plan.errors.append(f"spec.devices[{p.index}].{p.field}: {p.message}")
    for index, (device, slot) in enumerate(zip(devices, slots)):
        if slot is None:
            continue
        choice = choose(device, host, engine="qemu")
        backend, reason = choice.backend, choice.reason
        where = f"spec.devices[{index}] ({device_name(device, slot)})"
        if backend is None:
            plan.errors.append(f"{where}: {choice.error}" + (f" ({choice.suggestion})" if choice.suggestion else ""))
            continue
        before = len(plan.errors)
        _device(spec, device, slot, backend, a, plan, state_dir, where, host)
        if len(plan.errors) == before:
            plan.devices.append({"name": device_name(device, slot), "type": device["type"], "slot": slot,
                                 "backend": backend, "reason": reason})

    for sock in plan.sockets:
        if len(sock) > MAX_SOCKET_PATH:
            plan.errors.append(f"socket path too long for AF_UNIX ({len(sock)} > {MAX_SOCKET_PATH}): {sock}")
    if s.get("extraArgs"):
        plan.warnings.append("spec.extraArgs are acrn-dm arguments; the qemu engine ignores them")
    plan.argv = a
    return plan


def _boot(spec, a: list[str], plan: QemuPlan, state_dir: Path) -> None:
    boot = spec.spec.get("boot", {})
    if "kernel" in boot:
        k = boot["kernel"]
        a += ["-kernel", str(spec.resolve_path(k["path"]))]
        if k.get("initrd"):
            a += ["-initrd", str(spec.resolve_path(k["initrd"]))]
        if k.get("cmdline"):
            a += ["-append", k["cmdline"]]
    elif "elf" in boot:
        a += ["-kernel", str(spec.resolve_path(boot["elf"]["path"]))]  # multiboot ELF
    elif "ovmf" in boot:
        o = boot["ovmf"]
        writeback = o.get("writeback", False)
        if "image" in o:
            image = spec.resolve_path(o["image"])
            a += ["-drive", f"if=pflash,format=raw,unit=0,file={esc(_vars_copy(image, writeback, state_dir, plan))}"]
        else:
            code, nvram = spec.resolve_path(o["code"]), spec.resolve_path(o["vars"])
            a += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={esc(code)}"]
            a += ["-drive", f"if=pflash,format=raw,unit=1,file={esc(_vars_copy(nvram, writeback, state_dir, plan))}"]


def _vars_copy(path: Path, writeback: bool, state_dir: Path, plan: QemuPlan) -> Path:
    """Without writeback the guest's NV variable changes must not reach the original file
    (acrn-dm's default), so QEMU gets a per-run copy in the state folder."""
    if writeback:
        return path
    copy = state_dir / f"{path.name}.run"
    plan.copies.append((str(path), str(copy)))
    return copy


def _stdio_socket(name: str, plan: QemuPlan, state_dir: Path) -> str:
    path = state_dir / f"{name}.console.sock"
    plan.sockets.append(str(path))
    plan.consoles.append({"name": name, "kind": "socket", "path": str(path)})
    log = state_dir / "console.log"
    return f"socket,id={name},path={esc(path)},server=on,wait=off,logfile={esc(log)},logappend=on"


def _lpc(ports: list[dict], a: list[str], plan: QemuPlan, state_dir: Path) -> None:
    for port in ports:
        name = port["port"]
        if name not in _COM_INDEX:
            plan.errors.append(f"spec.console.lpc {name}: the ACRN S5 UART (com5) has no QEMU equivalent")
            continue
        backend = port.get("backend", "stdio")
        if backend == "stdio":
            chardev = _stdio_socket(name, plan, state_dir)
        elif backend == "tty":
            chardev = f"tty,id={name},path={esc(port['path'])}"
            plan.consoles.append({"name": name, "kind": "tty", "path": port["path"]})
        else:
            chardev = f"socket,id={name},host=127.0.0.1,port={port['tcpPort']},server=on,wait=off,telnet=off"
        a += ["-chardev", chardev, "-device", f"isa-serial,chardev={name},index={_COM_INDEX[name]}"]


def _mode_props(device: dict) -> str:
    mode = device.get("mode")
    if not mode:
        return ""
    legacy, modern = _MODES[mode]
    return f",disable-legacy={legacy},disable-modern={modern}"


def vhost_socket_path(state_dir: Path, name: str) -> Path:
    """Where the embedded device model of device `name` listens (the libvirt domain export names the same)."""
    return state_dir / f"{name}.vhost.sock"


def _helper_socket(name: str, plan: QemuPlan, state_dir: Path) -> Path:
    path = vhost_socket_path(state_dir, name)
    plan.sockets.append(str(path))
    return path


def _device(spec, dev: dict, slot: int, backend: str, a: list[str], plan: QemuPlan, state_dir: Path, where: str, host) -> None:
    kind = dev["type"]
    name = device_name(dev, slot)
    nid = f"dev{slot}"
    addr = f"addr={slot:#x}"
    mode = _mode_props(dev)
    if kind == "virtio-blk":
        image = spec.resolve_path(dev["path"])
        ro = bool(dev.get("readOnly"))
        if backend == "embedded":
            sock = _helper_socket(name, plan, state_dir)
            queues = dev.get("mq", 1)
            cmd = [*devmodel_command(), "--device", "blk", "--socket", str(sock), "--image", str(image),
                   "--queues", str(queues)] + (["--read-only"] if ro else [])
            plan.helpers.append(ProcessSpec(f"devmodel-{name}", cmd, wait_socket=str(sock), device=name))
            a += ["-chardev", f"socket,id=c{nid},path={esc(sock)}",
                  "-device", f"vhost-user-blk-pci,chardev=c{nid},num-queues={queues},{addr}{mode}"
                  + (",bootindex=1" if dev.get("boot") else "")]
            return
        cache = dev.get("cache", "writethru")
        node = {
            "driver": "raw", "node-name": nid, "read-only": ro,
            "discard": "unmap" if dev.get("discard") else "ignore",
            "cache": {"direct": cache == "nocache"},
            "file": {"driver": "file", "filename": str(image), "aio": dev.get("aio", "threads")},
        }
        if dev.get("range"):
            node["offset"] = dev["range"]["startLba"] * 512
            node["size"] = dev["range"]["size"] * 512
        props = [f"virtio-blk-pci,drive={nid},{addr}{mode}", f"write-cache={'off' if cache == 'writethru' else 'on'}"]
        if dev.get("mq"):
            props.append(f"num-queues={dev['mq']}")
        if dev.get("sectorSize"):
            props.append(f"logical_block_size={dev['sectorSize']['logical']}")
            props.append(f"physical_block_size={dev['sectorSize'].get('physical', dev['sectorSize']['logical'])}")
        if dev.get("iothread"):
            a += ["-object", f"iothread,id=io{nid}"]
            props.append(f"iothread=io{nid}")
        if dev.get("boot"):
            props.append("bootindex=1")
        a += ["-blockdev", json.dumps(node), "-device", ",".join(props)]
    elif kind == "virtio-net":
        if dev.get("macvtap"):
            plan.errors.append(f"{where}: macvtap is not supported by the qemu engine; use a tap")
            return
        tap = dev["tap"]
        mac = dev.get("mac") or _mac_from_seed(dev.get("macSeed") or f"{spec.name}-{slot}")
        if backend == "embedded":
            sock = _helper_socket(name, plan, state_dir)
            cmd = [*devmodel_command(), "--device", "net", "--socket", str(sock), "--tap", tap, "--mac", mac]
            plan.helpers.append(ProcessSpec(f"devmodel-{name}", cmd, wait_socket=str(sock), device=name))
            a += ["-chardev", f"socket,id=c{nid},path={esc(sock)}", "-netdev", f"vhost-user,id={nid},chardev=c{nid}"]
            # vectors=0 (INTx): Debian's QEMU 7.2 segfaults setting up MSI-X notifiers for any
            # vhost-user netdev (tests/devmodel/e2e/test_net.py); the data path is the same.
            a += ["-device", f"virtio-net-pci,netdev={nid},mac={mac},vectors=0,{addr}{mode}"]
        else:
            vhost = ",vhost=on" if backend == "vhost" else ""
            a += ["-netdev", f"tap,id={nid},ifname={esc(tap)},script=no,downscript=no{vhost}"]
            a += ["-device", f"virtio-net-pci,netdev={nid},mac={mac},{addr}{mode}"]
    elif kind == "virtio-console":
        a += ["-device", f"virtio-serial-pci,id={nid},{addr}{mode}"]
        for i, port in enumerate(dev.get("ports", [])):
            cid = f"{nid}p{i}"
            pkind = port["kind"]
            if pkind == "stdio":
                chardev = _stdio_socket(port["name"], plan, state_dir).replace(f"id={port['name']}", f"id={cid}", 1)
            elif pkind == "pty":
                chardev = f"pty,id={cid}"
                plan.consoles.append({"name": port["name"], "kind": "pty", "path": None})
            elif pkind == "socket":
                server = port.get("socketMode", "server") == "server"
                chardev = f"socket,id={cid},path={esc(port['path'])}" + (",server=on,wait=off" if server else "")
                if server:
                    plan.sockets.append(port["path"])
                plan.consoles.append({"name": port["name"], "kind": "socket", "path": port["path"]})
            elif pkind == "tty":
                chardev = f"tty,id={cid},path={esc(port['path'])}"
            else:
                chardev = f"file,id={cid},path={esc(port['path'])}"
            frontend = "virtconsole" if port.get("console") else "virtserialport"
            a += ["-chardev", chardev, "-device", f"{frontend},bus={nid}.0,chardev={cid},name={esc(port['name'])}"]
    elif kind == "virtio-rnd":
        if backend == "embedded":
            sock = _helper_socket(name, plan, state_dir)
            cmd = [*devmodel_command(), "--device", "rng", "--socket", str(sock)]
            plan.helpers.append(ProcessSpec(f"devmodel-{name}", cmd, wait_socket=str(sock), device=name))
            a += ["-chardev", f"socket,id=c{nid},path={esc(sock)}", "-device", f"vhost-user-rng-pci,chardev=c{nid},{addr}"]
        else:
            a += ["-object", f"rng-random,id={nid},filename=/dev/urandom", "-device", f"virtio-rng-pci,rng={nid},{addr}{mode}"]
    elif kind == "virtio-input":
        if not os.path.exists(dev["device"]):
            plan.errors.append(f"{where}: {dev['device']} does not exist on this host")
            return
        a += ["-device", f"virtio-input-host-pci,evdev={esc(dev['device'])},{addr}"]
    elif kind == "virtio-gpu":
        a += ["-device", f"virtio-gpu-pci,max_outputs={max(1, len(dev.get('displays', [])))},{addr}"]
    elif kind == "vhost-vsock":
        a += ["-device", f"vhost-vsock-pci,guest-cid={dev['cid']},{addr}"]
    elif kind == "passthru":
        bdf = _bdf(dev["bdf"])
        if not os.path.exists(f"/sys/bus/pci/devices/{bdf}"):
            plan.errors.append(f"{where}: host PCI device {bdf} does not exist, so it cannot be passed through")
            return
        a += ["-device", f"vfio-pci,host={bdf},{addr}"]
    elif kind == "ivshmem":
        region = dev["region"]
        if not region.startswith("dm:/"):
            plan.errors.append(f"{where}: {region} is a hypervisor (hv:/) region; only the acrn engine can share it")
            return
        from acrnmgr.spec.units import parse_size

        a += ["-object", f"memory-backend-file,id={nid},share=on,mem-path=/dev/shm/{esc(region[4:])},size={parse_size(dev['size'])}",
              "-device", f"ivshmem-plain,memdev={nid},{addr}"]
    else:
        plan.errors.append(f"{where}: the qemu engine has no mapping for {kind}")


def _bdf(text: str) -> str:
    bus, dev, func = text.replace("/", ":").replace(".", ":").split(":")[-3:]
    return f"0000:{int(bus, 16):02x}:{int(dev, 16):02x}.{int(func, 16)}"


def _mac_from_seed(seed: str) -> str:
    """A stable, locally administered unicast MAC derived from the seed (not acrn-dm's algorithm)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))
