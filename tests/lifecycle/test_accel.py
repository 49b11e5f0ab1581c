"""The KVM usability probe of the qemu engine."""

import shutil
import sys
import textwrap

import pytest

from acrnmgr.lifecycle.accel import CACHE_NAME, kvm_usable, probe

QEMU = shutil.which("qemu-system-x86_64")


def _standin(tmp_path, body: str):
    """A stand-in QEMU: the real one can only show this machine's own verdict."""
    path = tmp_path / "qemu"
    path.write_text(f"#!{sys.executable}\nimport sys\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def test_a_qmp_greeting_means_usable(tmp_path):
    qemu = _standin(tmp_path, """\
        assert sys.argv[1:5] == ["-accel", "kvm", "-cpu", "host"], sys.argv
        print('{"QMP": {"version": {}, "capabilities": []}}', flush=True)
        sys.stdin.read()
        """)
    assert probe(qemu) == (True, "QEMU ran a KVM vCPU with -cpu host")


def test_an_abort_when_the_vcpu_runs_means_unusable_and_says_why(tmp_path):
    qemu = _standin(tmp_path, """\
        print('{"QMP": {"version": {}, "capabilities": []}}', flush=True)
        sys.stderr.write("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\\n")
        sys.exit(134)
        """)
    usable, reason = probe(qemu)
    assert not usable
    assert reason == ("QEMU cannot run a KVM vCPU with -cpu host: "
                      "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69")


def test_silence_is_unusable_after_the_timeout(tmp_path):
    qemu = _standin(tmp_path, "import time\ntime.sleep(60)\n")
    assert probe(qemu, timeout=0.5) == (False,
                                        "QEMU cannot run a KVM vCPU with -cpu host: no QMP greeting within 0.5 s")


def test_missing_qemu_is_unusable(tmp_path):
    usable, reason = probe(str(tmp_path / "nope"))
    assert not usable and reason.startswith(f"cannot run {tmp_path / 'nope'}")


def test_the_verdict_is_cached_per_state_root(tmp_path):
    qemu = _standin(tmp_path, "sys.exit(1)\n")
    cache = tmp_path / "state"
    first = kvm_usable(qemu, cache)
    assert first[0] is False and (cache / CACHE_NAME).read_text().startswith("unusable\n")
    # a cached verdict does not run QEMU again
    assert kvm_usable(str(tmp_path / "nope"), cache) == first


@pytest.mark.guest
def test_the_probe_agrees_with_booting_linux(tmp_path, monkeypatch):
    """On this machine's real QEMU, the probe's verdict matches whether the test guest boots under KVM."""
    from tests.guest import pick_accel

    monkeypatch.delenv("ACRNMGR_GUEST_ACCEL", raising=False)
    usable, reason = probe(QEMU)
    assert usable == (pick_accel() == "kvm"), reason


def test_an_unusable_kvm_turns_into_tcg_with_a_warning(tmp_path):
    from acrnmgr.host import HostProfile
    from acrnmgr.lifecycle.accel import with_usable_kvm

    broken = _standin(tmp_path, "sys.exit(1)\n")
    host, warning = with_usable_kvm(HostProfile(kvm=True, qemu=broken), tmp_path / "state")
    assert host.kvm is False and host.qemu == broken
    assert warning == ("KVM is not usable here (QEMU cannot run a KVM vCPU with -cpu host: it exited with status 1); "
                       "running under TCG")
    tcg = HostProfile(kvm=False, qemu=broken)
    assert with_usable_kvm(tcg, tmp_path / "other") == (tcg, None)
    assert not (tmp_path / "other").exists()  # no probe when KVM is not asked for
