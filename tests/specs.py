"""Spec and host-profile helpers shared by the render, plan and CLI tests."""

from __future__ import annotations

from pathlib import Path

from acrnmgr.render.acrndm import compile_spec
from acrnmgr.host import HostProfile
from acrnmgr.spec.validation import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HOSTS = EXAMPLES / "hosts"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


SPEC_HEAD = """\
apiVersion: acrnmgr/v1
kind: VM
metadata: {name: t1}
spec:
"""


def make_spec(tmp_path: Path, body: str, name: str = "vm.yaml"):
    """A spec from an indented `spec:` body, with disk.img/bzImage present in tmp_path."""
    for f in ("disk.img", "bzImage", "OVMF.fd"):
        (tmp_path / f).write_bytes(b"\0" * 512)
    text = SPEC_HEAD + body
    path = tmp_path / name
    path.write_text(text)
    return load_spec(path)


def compile_body(tmp_path: Path, body: str, host: HostProfile, version: str = "3.x", engine: str = "acrn"):
    return compile_spec(make_spec(tmp_path, body), host, version, engine)


BASIC = """\
  cpu: {affinity: [2]}
  memory: 512M
  boot: {kernel: {path: bzImage}}
"""
