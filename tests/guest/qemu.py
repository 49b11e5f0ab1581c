"""Run the test guest under QEMU: argv construction, accelerator choice, a boot-and-wait runner, and a small QMP
client for service-mode guests.

Machine: q35. A virtio-pci device on q35's root bus (pcie.0) is transitional by default (legacy + modern, device
ID 0x1000 + type, e.g. 0x1001 for blk); `disable-legacy=on` makes it modern-only (0x1040 + type, 0x1042 for blk)
and `disable-modern=on` legacy-only (0x1001). Devices placed behind a pcie-root-port would default to modern-only,
so keep them on the root bus (the default) when the transitional mode is wanted.

Guest RAM is a shared memfd backend, which vhost-user backends need to map the rings and buffers.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .build import DEFAULT_CMDLINE, GuestImage, build_guest_image, cache_root, initrd_with_script

QEMU = "qemu-system-x86_64"
EXIT_RE = re.compile(r"^ACRNMGR-GUEST-EXIT=(\d+)\s*$", re.M)
READY_MARKER = "ACRNMGR-GUEST-READY"
POWERDOWN_MARKER = "ACRNMGR-GUEST-POWERDOWN"


class GuestError(RuntimeError):
    """The guest did not behave: timeout, QEMU failure. The message carries the console tail."""


@dataclass
class GuestResult:
    rc: int | None  # the test script's exit status from ACRNMGR-GUEST-EXIT=, None if it never printed it
    output: str  # the guest's serial console
    qemu_rc: int | None = None  # QEMU's own exit status
    qemu_stderr: str = ""

    @property
    def powered_down(self) -> bool:
        """The guest was stopped by the ACPI power button (service mode)."""
        return POWERDOWN_MARKER in self.output


# ---------------------------------------------------------------------------------------------- accelerator


def _kvm_opens() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def _probe_kvm_boots(kernel: Path) -> bool:
    """Some hosts expose a /dev/kvm that cannot run an ordinary guest (e.g. a PVM-only nested hypervisor: real-mode
    code runs, the kernel hangs when it leaves real mode). Boot the real kernel far enough to print its banner."""
    argv = [QEMU, "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "128", "-nodefaults",
            "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
            "-append", "console=ttyS0 earlyprintk=serial panic=-1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read() or b""
            seen += chunk
            if b"Linux version" in seen:
                return True
            time.sleep(0.05)
        return b"Linux version" in seen + (proc.stdout.read() or b"")
    finally:
        proc.kill()
        proc.wait()


_accel_cache: str | None = None


def pick_accel(image: GuestImage | None = None) -> str:
    """"kvm" when /dev/kvm opens and really boots a Linux guest, else "tcg". ACRNMGR_GUEST_ACCEL overrides.

    The boot probe (up to 15 s when KVM is broken) is remembered per host boot in the guest cache."""
    global _accel_cache
    forced = os.environ.get("ACRNMGR_GUEST_ACCEL")
    if forced:
        return forced
    if _accel_cache:
        return _accel_cache
    if not _kvm_opens():
        _accel_cache = "tcg"
        return _accel_cache
    image = image or build_guest_image()
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    qemu = Path(shutil.which(QEMU) or QEMU)
    stamp = f"{boot_id}:{qemu.stat().st_mtime_ns}:{image.kernel_version}"
    memo = cache_root() / "kvm-probe.json"
    try:
        known = json.loads(memo.read_text())
        if known.get("stamp") == stamp:
            _accel_cache = known["accel"]
            return _accel_cache
    except (OSError, ValueError, KeyError):
        pass
    _accel_cache = "kvm" if _probe_kvm_boots(image.kernel) else "tcg"
    tmp = memo.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps({"stamp": stamp, "accel": _accel_cache}))
    os.replace(tmp, memo)
    return _accel_cache


# ---------------------------------------------------------------------------------------------- argv


def qemu_base_argv(kernel: Path | str, initrd: Path | str, memory_mb: int = 512, cmdline_extra: str = "",
                   accel: str | None = None, smp: int = 1, machine: str = "q35") -> list[str]:
    """QEMU argv booting `kernel`+`initrd` with shared memfd RAM, no default devices, no display, no reboot.

    The caller adds the serial console (e.g. `-serial file:PATH` or `-serial stdio`), QMP and devices."""
    accel = accel or pick_accel()
    cpu = "host" if accel == "kvm" else "max"
    cmdline = DEFAULT_CMDLINE + (" " + cmdline_extra if cmdline_extra else "")
    return [
        QEMU,
        "-machine", machine,
        "-accel", accel,
        "-cpu", cpu,
        "-smp", str(smp),
        "-m", f"{memory_mb}M",
        "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
        "-numa", "node,memdev=mem",
        "-nodefaults",
        "-display", "none",
        "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", cmdline,
    ]


# ---------------------------------------------------------------------------------------------- running

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Child-side: get SIGKILL when the test process dies, so no QEMU outlives a killed pytest."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class QMP:
    """A minimal QMP client: greeting, qmp_capabilities, then execute() commands; events are collected."""

    def __init__(self, path: Path | str, timeout: float = 10) -> None:
        self.events: list[dict] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(str(path))
        self._buf = b""
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise GuestError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments) -> object:
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise GuestError(f"QMP {command}: {reply['error']}")
            elif "return" in reply:
                return reply["return"]

    def close(self) -> None:
        self._sock.close()


class Guest:
    """A running guest. Use as a context manager: leaving it always kills and reaps QEMU.

        with Guest(script, extra_args) as g:
            g.wait_for(READY_MARKER)
            g.qmp.execute("system_powerdown")
            result = g.wait(timeout=60)
    """

    def __init__(self, script: str, extra_args: list[str] = (), memory_mb: int = 512, smp: int = 1,
                 image: GuestImage | None = None, qmp: bool = True, cmdline_extra: str = "",
                 fio: bool | None = None, gpio_i2c: bool = False) -> None:
        self.image = image or build_guest_image()
        self._tmp = tempfile.TemporaryDirectory(prefix="acrnmgr-guest-")
        tmp = Path(self._tmp.name)
        self.console_path = tmp / "console.log"
        self.stderr_path = tmp / "qemu.stderr"
        self.qmp_path = tmp / "qmp.sock"
        initrd = initrd_with_script(script, tmp, image=self.image, fio=fio, gpio_i2c=gpio_i2c)
        argv = qemu_base_argv(self.image.kernel, initrd, memory_mb, cmdline_extra, pick_accel(self.image), smp)
        argv += ["-chardev", f"file,id=console,path={self.console_path}", "-serial", "chardev:console"]
        if qmp:
            argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        self.argv = argv + list(extra_args)
        self.qmp: QMP | None = None
        self._qmp_wanted = qmp
        self.proc: subprocess.Popen | None = None
        self._final: tuple[str, str] | None = None  # console and stderr, kept when the temp dir goes

    def __enter__(self) -> Guest:
        try:
            self.start()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def start(self) -> None:
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         preexec_fn=_die_with_parent)
        if self._qmp_wanted:
            deadline = time.monotonic() + 10
            while not self.qmp_path.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise GuestError(self._failure("QEMU did not open its QMP socket"))
                time.sleep(0.01)
            self.qmp = QMP(self.qmp_path)

    @property
    def output(self) -> str:
        if self._final is not None:
            return self._final[0]
        try:
            return self.console_path.read_text(errors="replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    @property
    def stderr(self) -> str:
        if self._final is not None:
            return self._final[1]
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _failure(self, what: str) -> str:
        tail = "\n".join(self.output.splitlines()[-40:])
        return (f"{what}\n--- qemu: {' '.join(self.argv)}\n--- qemu stderr:\n{self.stderr.strip()}"
                f"\n--- guest console (tail):\n{tail}")

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Wait until `text` appears on the console; GuestError if QEMU exits or the timeout passes first."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                raise GuestError(self._failure(f"QEMU exited ({self.proc.returncode}) before {text!r}"))
            if time.monotonic() > deadline:
                raise GuestError(self._failure(f"timed out after {timeout}s waiting for {text!r}"))
            time.sleep(0.05)

    def wait(self, timeout: float = 120) -> GuestResult:
        """Wait for QEMU to exit (the guest powers off after its script); GuestError on timeout."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            message = self._failure(f"guest did not power off within {timeout}s")
            self.kill()
            raise GuestError(message) from None
        m = EXIT_RE.search(self.output)
        return GuestResult(rc=int(m.group(1)) if m else None, output=self.output, qemu_rc=self.proc.returncode,
                           qemu_stderr=self.stderr)

    def kill(self) -> None:
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait()
        if self._final is None:
            self._final = (self.output, self.stderr)
        self._tmp.cleanup()


def run_guest(script: str, extra_args: list[str] = (), timeout: float = 120, memory_mb: int = 512,
              smp: int = 1, image: GuestImage | None = None, cmdline_extra: str = "",
              fio: bool | None = None, gpio_i2c: bool = False) -> GuestResult:
    """Boot the guest, run `script` (busybox sh) in it, and return its exit status and console once it powers
    off. fio is in the guest when `fio` is true, by default when the script mentions it; the gpio-i2c layer
    (virtio-gpio/i2c drivers, i2c-dev, at24, lm75: acrnmgr/images/gpio_i2c.py) when `gpio_i2c`. Raises GuestError
    (with QEMU's stderr and the console tail) if QEMU fails or the timeout passes; QEMU is always reaped."""
    with Guest(script, extra_args, memory_mb, smp, image, qmp=False, cmdline_extra=cmdline_extra,
               fio=fio, gpio_i2c=gpio_i2c) as guest:
        result = guest.wait(timeout)
        if result.rc is None:
            what = "the guest powered off" if result.qemu_rc == 0 else f"QEMU exited with status {result.qemu_rc}"
            raise GuestError(guest._failure(f"{what} before the test script finished (no ACRNMGR-GUEST-EXIT)"))
    return result
