"""The guest build: cached, atomic under concurrency, and the per-test initrd is the base plus one archive."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guest import build_guest_image, initrd_with_script
from tests.guest.cpio import script_archive

ROOT = Path(__file__).resolve().parents[2]


def test_cached_build_is_reused(guest_image):
    manifest = guest_image.directory / "manifest.json"
    inode = manifest.stat().st_ino
    again = build_guest_image()
    assert again == guest_image
    assert manifest.stat().st_ino == inode  # not rebuilt
    assert json.loads(manifest.read_text())["modules"] == list(guest_image.modules)


def test_initrd_with_script_is_the_base_plus_a_script_archive(guest_image, tmp_path):
    base = guest_image.initrd_base.read_bytes()
    fio = guest_image.fio_layer.read_bytes()
    assert guest_image.initrd.read_bytes() == base + fio
    plain = initrd_with_script("echo hi\n", tmp_path, image=guest_image)
    assert plain.read_bytes() == base + script_archive("echo hi\n")
    assert initrd_with_script("echo hi\n", tmp_path, image=guest_image) == plain  # content-addressed
    with_fio = initrd_with_script("fio --version\n", tmp_path, image=guest_image)  # mentions fio: included
    assert with_fio.read_bytes() == base + fio + script_archive("fio --version\n")
    forced = initrd_with_script("echo hi\n", tmp_path, image=guest_image, fio=True)
    assert forced != plain and forced.stat().st_size == len(base) + len(fio) + len(script_archive("echo hi\n"))


def test_modules_come_after_their_dependencies(guest_image):
    order = list(guest_image.modules)
    for module, dependency in [("virtio_pci", "virtio"), ("virtio_blk", "virtio_ring"),
                               ("virtio_net", "net_failover"), ("net_failover", "failover")]:
        assert order.index(dependency) < order.index(module)


@pytest.mark.slow
def test_concurrent_cold_builds_agree(tmp_path):
    """Two processes building into an empty cache: one builds, the other waits on the lock and reuses it."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.guest"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    first, second = (json.loads(out) for out, _ in outputs)
    assert first == second
    assert sum("writing initramfs" in err for _, err in outputs) == 1  # built once
    guests = list((tmp_path / "acrnmgr" / "guest").glob("linux-image-*"))
    leftovers = [p for p in guests[0].parent.glob(".linux-image-*") if p.is_dir()]
    assert len(guests) == 1 and not leftovers  # no temporary build directory left
