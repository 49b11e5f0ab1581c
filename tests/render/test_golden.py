"""Golden files pin the plan, argv and launch script of every example.

Regenerate (and review the diff) with ACRNMGR_UPDATE_GOLDEN=1 pytest tests/render/test_golden.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from acrnmgr.devices import vm_from_spec
from acrnmgr.plan import make_plan
from acrnmgr.render.acrndm import compile_spec, render_acrndm
from acrnmgr.cli.render import format_plan
from acrnmgr.render.script import render_script
from acrnmgr.spec.validation import load_spec

from tests.specs import EXAMPLE_FILES, EXAMPLES

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ACRNMGR_UPDATE_GOLDEN") == "1"


def _portable(text: str) -> str:
    """Goldens must not depend on where the checkout lives."""
    return text.replace(str(EXAMPLES), "@EXAMPLES@")


def _check(name: str, actual: str) -> None:
    path = GOLDEN / name
    actual = _portable(actual)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"missing golden {path}; run with ACRNMGR_UPDATE_GOLDEN=1"
    assert actual == path.read_text(), f"{name} differs from its golden (ACRNMGR_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("version", ["3.x", "2.7"])
def test_example_golden(example, version, service_vm):
    the_plan = make_plan(vm_from_spec(load_spec(example)), service_vm, "acrn", version)
    compiled = render_acrndm(the_plan)
    suffix = "" if version == "3.x" else ".v27"
    plan = format_plan(the_plan) + "".join(f"\n{d}" for d in compiled.warnings + compiled.errors) + "\n"
    _check(f"{example.stem}{suffix}.plan.txt", plan)
    if compiled.ok:
        _check(f"{example.stem}{suffix}.argv.json", json.dumps(compiled.argv, indent=1) + "\n")
        if version == "3.x":
            _check(f"{example.stem}.sh", render_script(compiled))


def test_every_acrn_example_but_the_qemu_ones_compiles(service_vm):
    bad = {p.stem for p in EXAMPLE_FILES if not compile_spec(load_spec(p), service_vm).ok}
    assert bad == {"linux-qemu", "industrial-qemu"}  # meant for the qemu engine: acrn-dm has no vhost-user frontend


def test_render_is_reproducible(service_vm):
    for example in EXAMPLE_FILES:
        first = compile_spec(load_spec(example), service_vm)
        again = compile_spec(load_spec(example), service_vm)
        assert first.argv == again.argv
        if first.ok:
            assert render_script(first) == render_script(again)
