"""A test-only QEMU from Debian's bookworm-backports, beside (never instead of) the system's QEMU 7.2.

Why: QEMU 7.2's vhost-user-gpio-pci never offers VIRTIO_GPIO_F_IRQ to the guest; from QEMU 9.0 on it is built
on vhost-user-base, whose get_features passes on what the back-end offers, so only a newer QEMU lets a guest
test GPIO interrupts.  bookworm-backports builds QEMU against bookworm's own libraries, so its binary runs here.

How: InRelease is checked with gpgv against debian-archive-keyring; it gives the SHA256 of the Packages.xz
index, which gives the SHA256 of each .deb.  The .debs are unpacked with `dpkg-deb -x` (nothing is installed)
into ``${XDG_CACHE_HOME:-~/.cache}/acrnmgr/qemu-backports/<version>/``, next to a wrapper script
``qemu-system-x86_64`` that runs the binary with its own data (`-L`: pvh.bin, linuxboot_dma.bin, SeaBIOS)
and modules (QEMU_MODULE_DIR) rather than 7.2's.  The wrapper is what the qemu engine is given as the host
profile's ``qemu``.  ``python -m tests.guest.qemu_backports`` fetches it and prints the wrapper's path.

A failure raises QemuBackportsError saying which step failed: tests that need this QEMU fail, never skip."""

from __future__ import annotations

import hashlib
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm-backports"
INDEX = "main/binary-amd64/Packages.xz"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# The binary, its modules and BIOS-independent ROMs (common, data), and the SeaBIOS it depends on (>> 1.16.3).
PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios")
MAX_INDEX = 64 << 20  # the decompressed Packages index (about 2 MB today)
MAX_DEB = 256 << 20


class QemuBackportsError(RuntimeError):
    """The backports QEMU could not be fetched, checked or unpacked."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acrnmgr" / "qemu-backports"


def _progress(msg: str) -> None:
    print(f"qemu-backports: {msg}", file=sys.stderr, flush=True)


def _fetch(url: str, limit: int) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            data = resp.read(limit + 1)
    except OSError as exc:
        raise QemuBackportsError(f"cannot download {url}: {exc}") from None
    if len(data) > limit:
        raise QemuBackportsError(f"{url} is larger than {limit} bytes")
    return data


def _verified_release(inrelease: bytes) -> str:
    """The text of InRelease whose signature gpgv accepts against Debian's archive keys."""
    with tempfile.TemporaryDirectory() as tmp:
        signed = Path(tmp) / "InRelease"
        signed.write_bytes(inrelease)
        try:
            proc = subprocess.run(["gpgv", "--keyring", KEYRING, "--output", "-", str(signed)],
                                  capture_output=True, timeout=60)
        except FileNotFoundError:
            raise QemuBackportsError("gpgv not found (Debian: gpgv; run scripts/setup.sh)") from None
    if proc.returncode:
        raise QemuBackportsError(f"{SUITE} InRelease: bad signature: {proc.stderr.decode(errors='replace')[-500:]}")
    return proc.stdout.decode()


def _index_sha256(release: str) -> tuple[str, int]:
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
        elif in_sha256:
            digest, size, name = line.split()
            if name == INDEX:
                return digest, int(size)
    raise QemuBackportsError(f"{SUITE} InRelease lists no SHA256 for {INDEX}")


def _stanzas(index: str, wanted: set[str]) -> dict[str, dict[str, str]]:
    """The newest stanza of each wanted package (an index may hold several versions of one)."""
    found: dict[str, dict[str, str]] = {}
    for block in index.split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in block.splitlines() if ": " in ln and not ln.startswith(" "))
        name = fields.get("Package")
        if name in wanted and fields.get("Architecture") in ("amd64", "all"):
            if name not in found or _newer(fields["Version"], found[name]["Version"]):
                found[name] = fields
    missing = wanted - set(found)
    if missing:
        raise QemuBackportsError(f"{SUITE} has no {', '.join(sorted(missing))} for amd64")
    return found


def _newer(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def _wrapper_text(root: Path) -> str:
    q = shlex.quote
    return (
        "#!/bin/sh\n"
        "# QEMU from bookworm-backports with its own data and modules (tests/guest/qemu_backports.py)\n"
        f"QEMU_MODULE_DIR={q(str(root / 'usr/lib/x86_64-linux-gnu/qemu'))} "
        f"exec {q(str(root / 'usr/bin/qemu-system-x86_64'))} "
        f"-L {q(str(root / 'usr/share/qemu'))} -L {q(str(root / 'usr/share/seabios'))} \"$@\"\n"
    )


def package_stanzas() -> dict[str, dict[str, str]]:
    """PACKAGES' entries (Version, Filename, Size, SHA256, ...) in the signed index of bookworm-backports."""
    release = _verified_release(_fetch(f"{MIRROR}/dists/{SUITE}/InRelease", 1 << 20))
    digest, size = _index_sha256(release)
    packed = _fetch(f"{MIRROR}/dists/{SUITE}/{INDEX}", size)
    if hashlib.sha256(packed).hexdigest() != digest:
        raise QemuBackportsError(f"{SUITE} {INDEX}: SHA256 mismatch with InRelease")
    try:
        index = lzma.LZMADecompressor().decompress(packed, MAX_INDEX).decode()
    except (lzma.LZMAError, UnicodeDecodeError) as exc:
        raise QemuBackportsError(f"{SUITE} {INDEX}: {exc}") from None
    return _stanzas(index, set(PACKAGES))


def backports_qemu(progress=_progress) -> Path:
    """The wrapper script that runs bookworm-backports' qemu-system-x86_64 (fetched and unpacked when needed)."""
    stanzas = package_stanzas()
    version = stanzas["qemu-system-x86"]["Version"]
    dest = cache_dir() / version.replace(":", "_").replace("~", "_")
    wrapper = dest / "qemu-system-x86_64"
    if wrapper.exists():
        return wrapper
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        for pkg in PACKAGES:
            _unpack(stanzas[pkg], work / "root", progress)
        binary = work / "root/usr/bin/qemu-system-x86_64"
        _check_libraries(binary)
        _check_runs(binary, version)
        # The wrapper names the folder the root is renamed to below.
        (work / "qemu-system-x86_64").write_text(_wrapper_text(dest / "root"))
        (work / "qemu-system-x86_64").chmod(0o755)
        shutil.rmtree(dest, ignore_errors=True)  # a folder left without its wrapper (the wrapper is written last)
        try:
            os.replace(work, dest)
        except OSError:
            if not wrapper.exists():  # else another run unpacked the same version meanwhile
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return wrapper


def _unpack(fields: dict[str, str], root: Path, progress) -> None:
    """Download one .deb, check it against the index's SHA256 and unpack it into ``root``."""
    progress(f"downloading {fields['Package']} {fields['Version']} ({int(fields['Size']) >> 10} KiB)")
    deb = _fetch(f"{MIRROR}/{fields['Filename']}", min(int(fields["Size"]), MAX_DEB))
    if hashlib.sha256(deb).hexdigest() != fields["SHA256"]:
        raise QemuBackportsError(f"{fields['Filename']}: SHA256 mismatch with the {SUITE} index")
    with tempfile.NamedTemporaryFile(suffix=".deb") as tmp:
        tmp.write(deb)
        tmp.flush()
        proc = subprocess.run(["dpkg-deb", "-x", tmp.name, str(root)], capture_output=True, text=True)
    if proc.returncode:
        raise QemuBackportsError(f"dpkg-deb -x {fields['Filename']}: {proc.stderr.strip()[-500:]}")


def _check_libraries(binary: Path) -> None:
    """Every shared library the binary needs resolves against this host's (bookworm's) libraries."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    missing = [ln.split()[0] for ln in proc.stdout.splitlines() if "not found" in ln]
    if proc.returncode or missing:
        raise QemuBackportsError(f"{binary.name} from {SUITE} needs libraries this host lacks: "
                                 f"{', '.join(missing) or proc.stderr.strip()}")


def _check_runs(binary: Path, version: str) -> None:
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    upstream = version.split(":", 1)[-1].split("+", 1)[0]
    if proc.returncode or upstream not in proc.stdout:
        raise QemuBackportsError(f"{binary.name} --version: exit {proc.returncode}, "
                                 f"{(proc.stdout + proc.stderr).strip()[-500:]}")


if __name__ == "__main__":
    try:
        print(backports_qemu())
    except QemuBackportsError as exc:
        sys.exit(f"qemu-backports: {exc}")
