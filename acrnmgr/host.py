"""What the host offers a VM: read from the live machine, or from a YAML file so CI can plan
for a target it is not running on (e.g. an ACRN Service VM with vhost-net)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_VERSION_RE = re.compile(r"DM version is:\s*v?(\d+\.\d+(?:\.\d+)?)")
_QEMU_VERSION_RE = re.compile(r"QEMU emulator version (\d+\.\d+(?:\.\d+)?)")


class HostProfileError(ValueError):
    """A host profile file that cannot be used (bad YAML, unknown key, wrong type)."""


@dataclass(frozen=True)
class HostProfile:
    is_service_vm: bool = False
    hsm_device: str | None = None
    acrn_dm: str | None = None
    acrn_dm_version: str | None = None
    vhost_net: bool = False
    vhost_vsock: bool = False
    net_tun: bool = False
    cpu_count: int = 1
    lapic_ids: list[int] = field(default_factory=list)
    hugepages_total: int = 0
    hugepages_free: int = 0
    kvm: bool = False
    qemu: str | None = None
    qemu_version: str | None = None  # "7.2.22" (`qemu --version`); what a device's QEMU front-end can do
    iasl: str | None = None

    @property
    def default_engine(self) -> str:
        """What `--engine auto` means here: acrn-dm on an ACRN Service VM, QEMU anywhere else."""
        return "acrn" if self.is_service_vm else "qemu"

    @classmethod
    def detect(cls) -> "HostProfile":
        """Read the profile of the machine we run on."""
        hsm = next((d for d in ("/dev/acrn_hsm", "/dev/acrn_vhm") if os.path.exists(d)), None)
        acrn_dm = shutil.which("acrn-dm")
        lapic_ids = _lapic_ids()
        hp_total, hp_free = _hugepages()
        qemu = shutil.which("qemu-system-x86_64")
        return cls(
            is_service_vm=hsm is not None,
            hsm_device=hsm,
            acrn_dm=acrn_dm,
            acrn_dm_version=_acrn_dm_version(acrn_dm) if acrn_dm else None,
            vhost_net=os.path.exists("/dev/vhost-net"),
            vhost_vsock=os.path.exists("/dev/vhost-vsock"),
            net_tun=os.path.exists("/dev/net/tun"),
            cpu_count=os.cpu_count() or 1,
            lapic_ids=lapic_ids,
            hugepages_total=hp_total,
            hugepages_free=hp_free,
            kvm=os.access("/dev/kvm", os.R_OK | os.W_OK),
            qemu=qemu,
            qemu_version=probe_qemu_version(qemu) if qemu else None,
            iasl=shutil.which("iasl"),
        )

    @classmethod
    def from_dict(cls, data: object, source: str = "<host profile>") -> "HostProfile":
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise HostProfileError(f"{source}: a host profile must be a mapping, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, data)) - set(known))
        if unknown:
            # Only keys that look like names are quoted: a file that is not a host profile at all
            # (say /etc/shadow) must not have its content echoed.
            hints = []
            for key in (k for k in unknown if _NAME_RE.fullmatch(k)):
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            hidden = sum(1 for k in unknown if not _NAME_RE.fullmatch(k))
            if hidden:
                hints.append(f"{hidden} key(s) that are not names (not shown)")
            raise HostProfileError(
                f"{source}: unknown key(s) {', '.join(hints)}; known keys: {', '.join(known)}"
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            kwargs[name] = _check_type(source, name, str(known[name].type), value)
        if "lapic_ids" not in kwargs and "cpu_count" in kwargs:
            # A profile that only says how many CPUs: assume LAPIC IDs 0..n-1 (the common case).
            kwargs["lapic_ids"] = list(range(kwargs["cpu_count"]))
        if "cpu_count" not in kwargs and "lapic_ids" in kwargs:
            kwargs["cpu_count"] = max(1, len(kwargs["lapic_ids"]))
        if "is_service_vm" not in kwargs and kwargs.get("hsm_device"):
            kwargs["is_service_vm"] = True
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> "HostProfile":
        import yaml  # only for a profile file: the CLI must not pay for it at start-up

        from acrnmgr.inputs import InputError, read_input_text

        try:
            text = read_input_text(path)
        except InputError as exc:
            raise HostProfileError(f"{path}: cannot read host profile: {exc.reason}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise HostProfileError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        except RecursionError:
            raise HostProfileError(f"{path}: invalid YAML: nesting is too deep") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")

_TYPES = {
    "bool": (bool,),
    "int": (int,),
    "str | None": (str, type(None)),
    "list[int]": (list,),
}


def _check_type(source: str, name: str, annotation: str, value: Any) -> Any:
    expected = _TYPES[annotation]
    ok = isinstance(value, expected) and not (annotation == "int" and isinstance(value, bool))
    if ok and annotation == "list[int]":
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if ok and annotation == "int":
        ok = value >= 0
    if not ok:
        raise HostProfileError(f"{source}: {name} must be {annotation.replace(' | None', ' or null')}, got {value!r}")
    return list(value) if annotation == "list[int]" else value


def _lapic_ids() -> list[int]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return list(range(os.cpu_count() or 1))
    ids = [int(m) for m in re.findall(r"^apicid\s*:\s*(\d+)", text, re.M)]
    return ids or list(range(os.cpu_count() or 1))


def _hugepages() -> tuple[int, int]:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return 0, 0
    total = re.search(r"^HugePages_Total:\s*(\d+)", text, re.M)
    free = re.search(r"^HugePages_Free:\s*(\d+)", text, re.M)
    return (int(total.group(1)) if total else 0, int(free.group(1)) if free else 0)


def _acrn_dm_version(acrn_dm: str) -> str | None:
    """Parse `acrn-dm --version` ("DM version is: 3.2-unstable-... (daily tag: ...)")."""
    try:
        proc = subprocess.run([acrn_dm, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_dm_version(proc.stdout + proc.stderr)


def probe_qemu_version(qemu: str) -> str | None:
    """The version `qemu --version` prints ("QEMU emulator version 7.2.22 (Debian ...)"), None if it cannot run."""
    try:
        proc = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _QEMU_VERSION_RE.search(proc.stdout)
    return match.group(1) if proc.returncode == 0 and match else None


def qemu_version_tuple(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a QEMU version string ("10.0.2" -> (10, 0)), None if it is not one."""
    match = re.match(r"(\d{1,4})\.(\d{1,4})(?!\d)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_dm_version(text: str) -> str | None:
    match = _VERSION_RE.search(text)
    return match.group(1) if match else None
