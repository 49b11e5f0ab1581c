"""Hypothesis: whatever goes in, the loader and validator answer with a Spec or a SpecError."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acrnmgr.host import HostProfile
from acrnmgr.spec.diagnostics import Diagnostic, SpecError
from acrnmgr.spec.loader import parse_document, parse_documents
from acrnmgr.spec.validation import load_spec, load_spec_text
from acrnmgr.spec.validation import schema, validate_document

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
VALID = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
HOST = HostProfile(lapic_ids=[0, 1, 2, 3])
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    """One folder for the module: the specs' base folder and the files the tests write (pytest removes it).
    Module scope, since Hypothesis runs each test many times over the same fixture values."""
    return tmp_path_factory.mktemp("fuzz")


def _load(text: str, filename: str, base_dir: Path, **kw) -> None:
    try:
        spec = load_spec_text(text, filename, host=HOST, base_dir=base_dir, **kw)
    except SpecError as exc:
        assert exc.diagnostics, "a SpecError always carries diagnostics"
        for d in exc.diagnostics:
            assert isinstance(d, Diagnostic) and d.message
            str(d)
            json.dumps(d.to_dict())
    else:
        assert spec.name and len(spec.hash) == 64


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

# Keys and values that the schema knows, so random structures reach deep into it.
_KEYS = sorted({part for part in json.dumps(schema()).split('"') if part.isidentifier() or "-" in part})
spec_like_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(_KEYS + ["1G", "2M", "3M", "00:02.0", "com1"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), children, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(st.text(max_size=300))
def test_random_text(tmp, text):
    _load(text, "f.yaml", tmp)
    _load(text, "f.json", tmp)
    try:
        for doc in parse_documents(text, "multi.yaml"):
            validate_document(doc, host=HOST)
    except SpecError as exc:
        assert exc.diagnostics


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(tmp, raw):
    f = tmp / "bytes.yaml"
    f.write_bytes(raw)
    try:
        load_spec(f, host=HOST)
    except SpecError as exc:
        assert exc.diagnostics


@FUZZ
@given(json_values)
def test_random_json_structures(tmp, value):
    _load(json.dumps(value), "f.json", tmp)
    _load(yaml.safe_dump(value), "f.yaml", tmp)


@FUZZ
@given(st.dictionaries(st.sampled_from(["apiVersion", "kind", "metadata", "spec"]), spec_like_values, max_size=4),
       spec_like_values)
def test_spec_shaped_structures(tmp, top, spec_part):
    top.setdefault("spec", spec_part)
    _load(json.dumps(top), "f.json", tmp, check_paths=False)
    _load(json.dumps(top), "f.json", tmp)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_specs(draw):
    data = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        how = draw(st.sampled_from(["delete", "replace", "spec-value", "add-key", "duplicate"]))
        if how == "delete":
            del parent[path[-1]]
        elif how == "replace":
            parent[path[-1]] = draw(json_values)
        elif how == "spec-value":
            parent[path[-1]] = draw(spec_like_values)
        elif how == "add-key" and isinstance(parent, dict):
            parent[draw(st.sampled_from(_KEYS))] = draw(spec_like_values)
        elif how == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    return data


@FUZZ
@given(mutated_specs())
def test_mutated_valid_specs(tmp, data):
    _load(yaml.safe_dump(data, sort_keys=False), "m.yaml", tmp)
    _load(json.dumps(data), "m.json", tmp, check_paths=False)


@FUZZ
@given(st.lists(mutated_specs(), min_size=2, max_size=3))
def test_mutated_specs_across_files(tmp, specs):
    from acrnmgr.spec.validation import validate_files

    files = []
    for i, data in enumerate(specs):
        f = tmp / f"multi{i}.yaml"
        f.write_text(yaml.safe_dump(data))
        files.append(f)
    docs, diags = validate_files(files, host=HOST, check_paths=False)
    for d in diags:
        str(d)


@FUZZ
@given(mutated_specs(), st.integers(0, 2000), st.text(max_size=8))
def test_mutated_text(tmp, data, cut, insert):
    text = yaml.safe_dump(data, sort_keys=False)
    cut = min(cut, len(text))
    _load(text[:cut] + insert + text[cut:], "t.yaml", tmp)
    try:
        parse_documents(text[:cut] + "\n---\n" + insert + text[cut:], "m.yaml")
    except SpecError as exc:
        assert exc.diagnostics


def test_examples_round_trip_through_the_fuzz_helpers():
    for data in VALID:
        doc = parse_document(json.dumps(data), "x.json")
        assert [d for d in validate_document(doc, check_paths=False) if d.is_error] == []


@FUZZ
@given(st.one_of(mutated_specs(), st.dictionaries(st.sampled_from(["apiVersion", "kind", "metadata", "spec"]),
                                                   spec_like_values, max_size=4)))
def test_fast_schema_path_agrees_with_full_validation(data):
    from acrnmgr.spec.validation import _valid_fast, validator

    assert _valid_fast(data) == validator().is_valid(data)
