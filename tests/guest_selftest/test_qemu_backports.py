"""The test-only QEMU from bookworm-backports: it is cached, it runs with its own data, and nothing unsigned or
unmatched gets in (a tampered InRelease, a .deb whose SHA256 is not the index's)."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from tests.guest import qemu_backports
from tests.guest.qemu_backports import QemuBackportsError, backports_qemu


def test_it_is_a_newer_qemu_that_runs_here_and_is_cached():
    wrapper = backports_qemu()
    version = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.split("QEMU emulator version ", 1)[1].split(".", 1)[0])
    assert major >= 9  # vhost-user-gpio-pci on vhost-user-base
    assert backports_qemu() == wrapper  # warm: the same unpacked folder
    # Its own option ROMs and BIOS, not the system QEMU's (PVH boot loads pvh.bin from the first -L).
    root = wrapper.parent / "root"
    assert (root / "usr/share/qemu/pvh.bin").is_file() and (root / "usr/share/seabios/bios-256k.bin").is_file()
    words = shlex.split(wrapper.read_text().splitlines()[-1])
    assert words[words.index("-L") + 1] == str(root / "usr/share/qemu")
    # A machine starts and stops (TCG; no guest needed).
    proc = subprocess.run([str(wrapper), "-machine", "pc,accel=tcg", "-nodefaults", "-display", "none",
                           "-device", "vhost-user-gpio-pci,help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "chardev" in proc.stdout, proc.stderr


def test_a_tampered_release_file_is_refused():
    signed = qemu_backports._fetch(f"{qemu_backports.MIRROR}/dists/{qemu_backports.SUITE}/InRelease", 1 << 20)
    tampered = signed.replace(b"main/binary-amd64/Packages.xz", b"main/binary-amd64/Packages.xy", 1)
    assert tampered != signed
    with pytest.raises(QemuBackportsError, match="bad signature"):
        qemu_backports._verified_release(tampered)


def test_a_deb_that_does_not_match_the_index_is_refused(tmp_path):
    seabios = qemu_backports.package_stanzas()["seabios"]  # the smallest (160 KiB)
    with pytest.raises(QemuBackportsError, match="SHA256 mismatch"):
        qemu_backports._unpack({**seabios, "SHA256": "0" * 64}, tmp_path / "root", lambda msg: None)
    assert not (tmp_path / "root").exists()
