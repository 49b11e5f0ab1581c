"""The acrn engine: acrn-dm on an ACRN Service VM.

Not yet run on ACRN hardware: it is tested against a stand-in acrn-dm that speaks the monitor
protocol of acrn-dm's management socket (devicemodel/core/monitor.c in ACRN's sources)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from acrnmgr.devices.virtio_console import VirtioConsole
from acrnmgr.devices.virtio_input import resolve_argv_word
from acrnmgr.devices.virtio_net import HOST_MAC, VirtioNet, read_host_mac, resolve_host_mac
from acrnmgr.host import HostProfile
from acrnmgr.lifecycle import cmdmonitor, monitor
from acrnmgr.lifecycle.engine import LaunchPlan, Running, send_signal
from acrnmgr.lifecycle.errors import LifecycleError, PlanError
from acrnmgr.lifecycle.manager import SupervisedEngine
from acrnmgr.lifecycle.state import ProcessSpec, VmState
from acrnmgr.model import VmSpec
from acrnmgr.plan import make_plan
from acrnmgr.plan.acrn import offline_cpus

HUGEPAGE_SIZE = 2 << 20


@dataclass(frozen=True)
class AcrnPaths:
    """Host paths the engine touches; each can be redirected by an environment variable (tests)."""

    mngr_dir: str = monitor.DEFAULT_MNGR_DIR
    remove_cpu: str = "/sys/devices/virtual/misc/acrn_hsm/remove_cpu"
    cpu_sysfs: str = "/sys/devices/system/cpu"
    cpuinfo: str = "/proc/cpuinfo"
    life_mngr: str = "/var/lib/life_mngr/monitor.sock"
    net_sysfs: str = "/sys/class/net"

    @classmethod
    def from_env(cls) -> "AcrnPaths":
        env = {
            "mngr_dir": "ACRNMGR_ACRN_MNGR_DIR",
            "remove_cpu": "ACRNMGR_HSM_REMOVE_CPU",
            "cpu_sysfs": "ACRNMGR_CPU_SYSFS",
            "cpuinfo": "ACRNMGR_CPUINFO",
            "life_mngr": "ACRNMGR_LIFE_MNGR_SOCKET",
        }
        return cls(**{field: os.environ[var] for field, var in env.items() if var in os.environ})


class AcrnEngine(SupervisedEngine):
    name = "acrn"

    def __init__(self) -> None:
        super().__init__()
        self.paths = AcrnPaths.from_env()

    # plan ----------------------------------------------------------------------------------
    def plan(self, vm: VmSpec, host: HostProfile, state: VmState) -> LaunchPlan:
        plan = make_plan(vm, host, "acrn")
        if plan.errors or plan.acrn is None:
            raise PlanError("the spec cannot be compiled for acrn-dm:\n" + "\n".join(f"  {d}" for d in plan.errors))
        acrn_dm = shutil.which("acrn-dm") or host.acrn_dm
        if not acrn_dm:
            raise PlanError("acrn-dm not found on PATH: install ACRN's device model, or use --engine qemu")
        host_mac = read_host_mac(self.paths.net_sysfs) if any(HOST_MAC in a for a in plan.acrn.argv) else ""
        words = [resolve_host_mac(a, host_mac) for a in plan.acrn.argv[1:]]
        argv, missing_inputs = [acrn_dm], []
        for word in words:  # a virtio-input by evdev name: found now, or left out (ACRN's template)
            resolved = resolve_argv_word(word, Path(self.paths.net_sysfs).parent.parent)
            if resolved is None:
                argv.pop()  # its -s
                missing_inputs.append(word)
            else:
                argv.append(resolved)
        channel = vm.settings.pm_notify_channel or ""
        info = {
            "vm": vm.name,
            "mngr_dir": self.paths.mngr_dir,
            "life_mngr": self.paths.life_mngr,
            "cmd_monitor": vm.settings.cmd_monitor,
            "power_button": channel == "power_button",
            "rtvm": vm.rtvm,
            "consoles": _consoles(vm),
            "inputs_not_found": missing_inputs,
        }
        # acrn-dm removes its monitor socket on a clean exit, not when it is killed.
        socket = str(Path(self.paths.mngr_dir) / monitor.socket_name(vm.name, 0))
        cleanup = [socket.replace(".monitor.0.", ".monitor.{pid}.")]
        if info["cmd_monitor"]:
            cleanup.append(str(info["cmd_monitor"]))
        return LaunchPlan("acrn", [ProcessSpec("acrn-dm", argv, role="main")], cleanup=cleanup, info=info)

    # prepare -------------------------------------------------------------------------------
    def prepare(self, vm: VmSpec, host: HostProfile, plan: LaunchPlan, progress) -> None:
        _check_iasl(vm, host)
        need = -(-vm.memory // HUGEPAGE_SIZE)
        if host.hugepages_free < need:
            raise LifecycleError(
                f"acrn-dm backs guest memory with 2M hugepages: {vm.name} needs {need} free, the host has "
                f"{host.hugepages_free} free of {host.hugepages_total}; reserve more with "
                f"`echo {host.hugepages_total + need - host.hugepages_free} > /proc/sys/vm/nr_hugepages`"
            )
        Path(self.paths.mngr_dir).mkdir(parents=True, exist_ok=True)  # acrn-dm does not create it (#2798)
        for word in plan.info.get("inputs_not_found", []):
            progress(f"warning: -s {word}: no evdev with that name and physical path; the device is left out")
        prepare_taps(vm, plan, progress, self.paths.net_sysfs)
        self._offline_cpus(offline_cpus(vm), progress)  # ACRN's template: an RTVM's CPUs only

    def _offline_cpus(self, lapic_ids: list[int], progress) -> None:
        """Take the VM's CPUs away from the Service VM: offline each, then hand it to the HSM.
        The spec names LAPIC IDs (v3.x); Linux numbers CPUs by processor index."""
        if not lapic_ids:
            return
        if not Path(self.paths.remove_cpu).exists():
            raise LifecycleError(f"{self.paths.remove_cpu} is missing: this is not an ACRN Service VM "
                                 "(use --engine qemu)")
        mapping = _lapic_to_processor(self.paths.cpuinfo)
        for lapic in lapic_ids:
            cpu = mapping.get(lapic)
            if cpu is None:  # as ACRN's template: acrn-dm itself refuses a CPU it cannot have
                progress(f"warning: no CPU with LAPIC ID {lapic} in {self.paths.cpuinfo}; not offlined")
                continue
            if cpu == 0:
                progress("warning: processor 0 cannot be offlined; leaving it to the Service VM")
                continue
            online = Path(self.paths.cpu_sysfs) / f"cpu{cpu}" / "online"
            if online.exists():
                if online.read_text().strip() == "1":
                    progress(f"offlining cpu{cpu} (LAPIC ID {lapic})")
                    online.write_text("0")
                try:
                    Path(self.paths.remove_cpu).write_text(str(cpu))
                except OSError as exc:
                    progress(f"warning: {self.paths.remove_cpu} refused cpu{cpu}: {exc.strerror}")

    # query and stop ------------------------------------------------------------------------
    def _monitor_socket(self, vm: Running) -> Path | None:
        ident = vm.main
        if not ident:
            return None
        for pid, path in monitor.find_sockets(vm.info["vm"], vm.info["mngr_dir"]):
            if pid == ident.pid:
                return path
        return None

    def query(self, vm: Running) -> str | None:
        path = self._monitor_socket(vm)
        if path is None:
            return None
        try:
            answer = monitor.request(path, monitor.query_request(monitor.now_stamp()))
        except (OSError, monitor.MonitorProtocolError):
            return None
        return "running" if answer.state == 0 else f"state {answer.state}"

    def graceful_actions(self, vm: Running):
        return [self._life_mngr, self._dm_stop_soft, send_signal(signal.SIGTERM)]

    def force_actions(self, vm: Running):
        return [self._dm_stop_force, send_signal(signal.SIGINT)]

    def _life_mngr(self, vm: Running) -> str | None:
        path = vm.info["life_mngr"]
        if not os.path.exists(path):
            return None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                sock.sendall(f"user_vm_shutdown:{vm.info['vm']}".encode())
                reply = sock.recv(1024).decode(errors="replace").strip()
        except OSError:
            return None
        return f"asked life_mngr to shut {vm.info['vm']} down ({reply or 'no reply'})"

    def _dm_stop_soft(self, vm: Running) -> str | None:
        # Only a guest listening on the power-button channel can act on a non-force DM_STOP.
        path = self._monitor_socket(vm)
        if not vm.info.get("power_button") or path is None:
            return None
        try:
            answer = monitor.request(path, monitor.stop_request(monitor.now_stamp(), force=False))
        except (OSError, monitor.MonitorProtocolError):
            return None
        return "sent DM_STOP (power button)" if answer.err == 0 else None

    def _dm_stop_force(self, vm: Running) -> str | None:
        path = self._monitor_socket(vm)
        if path is not None:
            try:
                answer = monitor.request(path, monitor.stop_request(monitor.now_stamp(), force=True))
                if answer.err == 0:
                    return "sent DM_STOP force=1 on the monitor socket"
            except (OSError, monitor.MonitorProtocolError):
                pass
        cmd = vm.info.get("cmd_monitor")
        if cmd and not vm.info.get("rtvm") and os.path.exists(cmd):
            try:
                if cmdmonitor.destroy(cmd) == 0:
                    return "sent destroy on the command monitor"
            except (OSError, ValueError, ConnectionError):
                pass
        return None


def prepare_taps(vm: VmSpec, plan: LaunchPlan, progress, net_sysfs: str = "/sys/class/net") -> None:
    """Create each virtio-net tap of the VM and attach it to the VM's bridge (default acrn-br0), as ACRN's
    launch scripts do. Taps we create are deleted after the VM stops."""
    bridge = vm.bridge
    net = Path(net_sysfs)
    for dev in vm.devices_of(VirtioNet):
        tap = dev.tap
        if not tap:
            continue
        if (net / tap).exists():
            progress(f"tap {tap} exists, using it as is")
            continue
        if not (net / bridge / "bridge").exists():
            raise LifecycleError(
                f"bridge {bridge} does not exist: create it (ip link add {bridge} type bridge) "
                "or set spec.network.bridge"
            )
        progress(f"creating tap {tap} on bridge {bridge}")
        for argv in (
            ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
            ["ip", "link", "set", "dev", tap, "master", bridge],
            ["ip", "link", "set", "dev", tap, "up"],
        ):
            _run(argv)
        plan.post_stop.append(["ip", "link", "del", "dev", tap])


def _consoles(vm: VmSpec) -> list[dict]:
    """Consoles `acrnmgr console` can attach to: socket ports, pty ports with a link path
    (acrn-dm links the pty there), tty LPC ports."""
    out = []
    for dev in vm.devices_of(VirtioConsole):
        for port in dev.ports:
            if port.kind == "socket" and port.socket_mode == "server":
                out.append({"name": port.name, "kind": "socket", "path": port.path})
            elif port.kind == "pty" and port.path:
                out.append({"name": port.name, "kind": "pty", "path": port.path})
    for lpc in vm.lpc:
        if lpc.backend == "tty" and lpc.path:
            out.append({"name": lpc.port, "kind": "tty", "path": lpc.path})
    return out


def _check_iasl(vm: VmSpec, host: HostProfile) -> None:
    configured = vm.settings.iasl
    if configured:
        if not os.access(configured, os.X_OK):
            raise LifecycleError(f"spec.settings.iasl {configured} is not an executable file")
        return
    if not (shutil.which("iasl") or host.iasl):
        raise LifecycleError(
            "iasl not found: acrn-dm (v3.2+) compiles the guest's ACPI tables with it and exits without it; "
            "install acpica-tools or set spec.settings.iasl"
        )


def _lapic_to_processor(cpuinfo: str) -> dict[int, int]:
    mapping = {}
    processor = None
    for line in Path(cpuinfo).read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            processor = int(value)
        elif key == "apicid" and processor is not None:
            mapping[int(value)] = processor
    return mapping


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LifecycleError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
