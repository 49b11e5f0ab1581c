"""Host profiles: detected from this machine, or loaded from YAML with strict keys."""

from __future__ import annotations

import os

import pytest

from acrnmgr.host import HostProfile, HostProfileError, parse_dm_version, probe_qemu_version, qemu_version_tuple

from tests.specs import HOSTS


def test_detect_reads_this_machine():
    host = HostProfile.detect()
    assert host.cpu_count == os.cpu_count()
    assert len(host.lapic_ids) == host.cpu_count
    assert host.net_tun == os.path.exists("/dev/net/tun")
    assert host.kvm == os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert host.is_service_vm == (host.hsm_device is not None)
    assert HostProfile.from_dict(host.to_dict()) == host  # round trip
    if host.qemu:  # Debian 12's QEMU, as scripts/setup.sh installs it
        assert qemu_version_tuple(host.qemu_version) == (7, 2)


def test_example_profiles_load():
    sos = HostProfile.from_file(HOSTS / "acrn-service-vm.yaml")
    assert sos.is_service_vm and sos.vhost_net and sos.vhost_vsock and sos.lapic_ids[:3] == [0, 2, 4]
    box = HostProfile.from_file(HOSTS / "plain-box.yaml")
    assert not box.is_service_vm and not box.vhost_net and box.cpu_count == 16


def test_partial_profile_fills_in(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("cpu_count: 4\nhsm_device: /dev/acrn_hsm\n")
    host = HostProfile.from_file(path)
    assert host.lapic_ids == [0, 1, 2, 3] and host.is_service_vm


@pytest.mark.parametrize("text, message", [
    ("vhostnet: true\n", "unknown key(s) 'vhostnet' (did you mean 'vhost_net'?)"),
    ("cpu_count: many\n", "cpu_count must be int"),
    ("vhost_net: 1\n", "vhost_net must be bool"),
    ("lapic_ids: [0, x]\n", "lapic_ids must be list[int]"),
    ("- a\n- b\n", "must be a mapping"),
    ("a: [\n", "invalid YAML"),
])
def test_bad_profiles_fail_clearly(tmp_path, text, message):
    path = tmp_path / "h.yaml"
    path.write_text(text)
    with pytest.raises(HostProfileError) as err:
        HostProfile.from_file(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_profile_file(tmp_path):
    with pytest.raises(HostProfileError, match="cannot read"):
        HostProfile.from_file(tmp_path / "nope.yaml")


def test_acrn_dm_version_parsing():
    assert parse_dm_version("DM version is: 3.2-unstable-a1b2c3 (daily tag:acrn-2023w01), build by me@2023") == "3.2"
    assert parse_dm_version("DM version is: 2.7 (daily tag: x)") == "2.7"
    assert parse_dm_version("garbage") is None


def test_qemu_version_probe(tmp_path):
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)'\n")
    fake.chmod(0o755)
    assert probe_qemu_version(str(fake)) == "10.0.2"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 10.0.2'; exit 1\n")
    assert probe_qemu_version(str(fake)) is None  # a QEMU that fails is no version
    assert probe_qemu_version(str(tmp_path / "missing")) is None
    assert qemu_version_tuple("10.0.2") == (10, 0) and qemu_version_tuple("9.0") == (9, 0)
    assert qemu_version_tuple("7") is None and qemu_version_tuple("x7.2") is None and qemu_version_tuple(None) is None
