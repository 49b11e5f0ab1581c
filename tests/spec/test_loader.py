"""Parsing YAML and JSON with positions; every kind of bad input is a SpecError with a location."""

from __future__ import annotations

import json

import pytest
import yaml

from acrnmgr.spec.diagnostics import SpecError
from acrnmgr.spec.loader import parse_document, read_document
from acrnmgr.spec.validation import load_spec
from acrnmgr.spec.units import format_size, parse_size

from .helpers import HEAD, pos


def fail(text: str, filename: str = "t.yaml") -> list:
    with pytest.raises(SpecError) as exc:
        parse_document(text, filename)
    return exc.value.diagnostics


def test_yaml_positions_for_every_path():
    doc = parse_document(HEAD + "  devices:\n    - {type: virtio-rnd, slot: 4}\n", "t.yaml")
    p = doc.positions
    assert p.values[("metadata", "name")] == (4, 9)
    assert p.keys[("metadata", "name")] == (4, 3)
    assert p.values[("spec", "cpu", "affinity", 1)] == (7, 19)
    assert p.values[("spec", "devices", 0, "slot")] == (13, 32)
    assert p.locate(("spec", "devices", 0, "nothing", 3)) == (13, 7)


def test_json_positions_match_yaml():
    data = yaml.safe_load(HEAD)
    text = json.dumps(data, indent=2)
    doc = parse_document(text, "t.json")
    assert doc.data == data
    assert doc.positions.values[("metadata", "name")] == pos(text, '"name"', '"t1"')
    assert doc.positions.keys[("spec", "memory")] == pos(text, '"memory"')
    assert doc.positions.values[("spec", "cpu", "affinity", 1)] == pos(text, "2", "2")


def test_json_in_a_yaml_file_with_tabs():
    text = json.dumps(yaml.safe_load(HEAD), indent="\t")
    assert parse_document(text, "vm.yaml").data["metadata"]["name"] == "t1"


@pytest.mark.parametrize("text,filename,line,col,words", [
    ("a: 1\na: 2\n", "t.yaml", 2, 1, "duplicate key `a` (first given at line 1)"),
    ('{"a": {"b": 1,\n "b": 2}}', "t.json", 2, 2, "duplicate key `b` (first given at line 1)"),
    ("a: [1\n", "t.yaml", 2, 1, "invalid YAML: did not find expected ',' or ']'"),
    ('{"a": 1,}', "t.json", 1, 9, "invalid JSON: Expecting property name enclosed in double quotes"),
    ("a:\n\tb: 1\n", "t.yaml", 2, 1, "invalid YAML"),
    ("a: 1\n---\nb: 2\n", "t.yaml", 2, 1, "more than one YAML document"),
    ("- a\n- b\n", "t.yaml", 1, 1, "the top level must be a mapping"),
    ("[1, 2]", "t.json", 1, 1, "the top level must be a mapping"),
    ("just text\n", "t.yaml", 1, 1, "the top level must be a mapping"),
    ("", "t.yaml", 1, 1, "file is empty"),
    ("# only a comment\n\n", "t.yaml", 1, 1, "file is empty"),
    ("  \n", "t.json", 1, 1, "file is empty"),
    ("a: \x07\n", "t.yaml", 1, 4, "invalid character U+0007"),
    ("a: 1\nb: \0\n", "t.yaml", 2, 4, "binary data (NUL byte)"),
    ("a: " + "9" * 5000 + "\n", "t.yaml", 1, 4, "number is far too large"),
    ('{"a": ' + "9" * 5000 + "}", "t.json", 1, 7, "number is far too large"),
    ("a: &x [*x]\n", "t.yaml", 1, 4, "recursive YAML alias"),
    ("a: !!python/object:os.system ls\n", "t.yaml", 1, 4, "unsupported YAML tag"),
    ("a: !custom x\n", "t.yaml", 1, 4, "unsupported YAML tag `!custom`"),
    ("yes: 1\n", "t.yaml", 1, 1, "key `yes` is read by YAML as a boolean (true), not a string"),
    ("3: x\n", "t.yaml", 1, 1, "key `3` is read by YAML as an integer"),
    ("? [a]\n: x\n", "t.yaml", 1, 3, "a mapping key must be a plain string"),
    ("[" * 3000 + "]" * 3000, "t.yaml", 1, 1001, "exceeded maximum nesting depth"),
    ("[" * 100000 + "]" * 100000, "t.json", 1, 1, "nesting is too deep"),
])
def test_bad_text(text, filename, line, col, words):
    d = fail(text, filename)[0]
    assert words in d.message
    assert (d.line, d.col) == (line, col)


def test_alias_bomb_is_bounded():
    text = "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]\n"
    d = fail(text)[0]
    assert "document expands to more than 100000 values" in d.message


def test_merge_keys_and_yaml_quirks_are_handled():
    doc = parse_document("base: &b {x: 1, y: 1}\nc:\n  <<: *b\n  y: 2\nd: 2024-01-01\ne: 00:02.0\n", "t.yaml")
    assert doc.data["c"] == {"x": 1, "y": 2}
    assert doc.data["d"] == "2024-01-01"  # dates stay text
    assert doc.positions.raw[("e",)] == "00:02.0"  # sexagesimal float: kept for the "quote it" hint


@pytest.mark.parametrize("content,words", [
    (b"\xff\xfe\x00a\x00b", "binary data: byte 0xff is not valid UTF-8"),
    ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8 text: byte 0xe9 is not valid UTF-8"),
])
def test_bad_bytes(tmp_path, content, words):
    f = tmp_path / "vm.yaml"
    f.write_bytes(content)
    with pytest.raises(SpecError) as exc:
        read_document(f)
    assert words in exc.value.diagnostics[0].message


def test_utf8_bom_is_accepted(tmp_path):
    f = tmp_path / "vm.yaml"
    f.write_bytes(b"\xef\xbb\xbf" + HEAD.encode())
    assert read_document(f).data["kind"] == "VM"


def test_missing_file_and_directory(tmp_path):
    for target, words in ((tmp_path / "nope.yaml", "no such file"), (tmp_path, "is a directory")):
        with pytest.raises(SpecError) as exc:
            load_spec(target)
        d = exc.value.diagnostics[0]
        assert d.message.startswith(words) and d.file == str(target) and d.json_path == "$"


def test_parse_size():
    assert parse_size(128) == 128 << 20
    assert parse_size("512K") == 512 << 10
    assert parse_size("2g") == 2 << 30
    assert parse_size("1M") == 1 << 20
    for bad in ("1T", "", "M", "1.5G", True, None, -1, "-1M"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(3 << 20) == "3M" and format_size(1 << 30) == "1G" and format_size(1536) == "1536"


def test_integral_floats_become_ints():
    doc = parse_document('{"a": 5.0, "b": 2.5, "c": 1e3}', "t.json")
    assert doc.data == {"a": 5, "b": 2.5, "c": 1000} and type(doc.data["a"]) is int
    doc = parse_document("a: 5.0\nb: .inf\n", "t.yaml")
    assert type(doc.data["a"]) is int and doc.data["b"] == float("inf")
