"""Several VMs in one YAML stream: `load_specs` and `validate` take them, `load_spec` does not."""

from __future__ import annotations

import pytest

from acrnmgr.spec.diagnostics import SpecError
from acrnmgr.spec.loader import parse_documents
from acrnmgr.spec.validation import load_spec, load_specs

from .helpers import devices_text


def _two(cid_a=3, cid_b=4, name_b="t2"):
    a = devices_text(f"- type: vhost-vsock\n  cid: {cid_a}")
    b = devices_text(f"- type: vhost-vsock\n  cid: {cid_b}").replace("name: t1", f"name: {name_b}")
    return a, b


def test_load_specs_reads_every_document(tmp_path):
    a, b = _two()
    f = tmp_path / "fleet.yaml"
    f.write_text(a + "---\n" + b + "---\n")  # trailing empty document is fine
    specs = load_specs(f, check_paths=False)
    assert [s.name for s in specs] == ["t1", "t2"]
    assert specs[1].locate(("spec", "devices", 0, "cid")) == (str(f), 14 + a.count("\n") + 1, 12)
    with pytest.raises(SpecError) as exc:
        load_spec(f, check_paths=False)
    assert "more than one YAML document" in exc.value.diagnostics[0].message


def test_duplicates_between_documents_of_one_file(tmp_path):
    a, b = _two(cid_b=3, name_b="t1")
    f = tmp_path / "fleet.yaml"
    f.write_text(a + "---\n" + b)
    with pytest.raises(SpecError) as exc:
        load_specs(f, check_paths=False)
    offset = a.count("\n") + 1
    got = {(d.json_path, d.line) for d in exc.value.diagnostics}
    assert got == {("metadata.name", 4 + offset), ("spec.devices[0].cid", 14 + offset)}
    assert all(f"({f}:" in d.message for d in exc.value.diagnostics)


def test_problems_of_every_document_are_reported():
    a, b = _two()
    text = a.replace("memory: 1G", "memory: 1X") + "---\n- not a mapping\n---\n" + b.replace("kind: VM", "kind: [")
    with pytest.raises(SpecError) as exc:
        parse_documents(text, "f.yaml")
    # a YAML syntax error stops the stream; what was parsed before is still reported
    messages = [d.message for d in exc.value.diagnostics]
    assert any("top level must be a mapping" in m for m in messages)
    assert any(m.startswith("invalid YAML") for m in messages)
