"""The compiled validity predicate agrees with jsonschema, keyword by keyword, and refuses
schemas it does not fully implement."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from acrnmgr.spec.fastcheck import compile_schema
from acrnmgr.spec.validation import _fast_validators

SCHEMAS = [
    {"type": "integer"}, {"type": ["boolean", "object"]}, {"type": "number"},
    {"enum": [512, 1024]}, {"enum": ["a", "b"]}, {"const": True}, {"const": 1},
    {"pattern": "^[0-9]+[KMG]$"}, {"minimum": 3, "maximum": 10},
    {"minLength": 1, "maxLength": 3}, {"minItems": 1, "uniqueItems": True},
    {"required": ["a"], "properties": {"a": {"type": "string"}}, "additionalProperties": False},
    {"additionalProperties": {"type": "string"}}, {"minProperties": 1, "maxProperties": 1},
    {"items": {"type": "integer"}}, {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]},
    {"anyOf": [{"required": ["a"]}, {"required": ["b"]}]}, {"not": {"required": ["a", "b"]}},
    {"if": {"properties": {"k": {"const": "x"}}, "required": ["k"]}, "then": {"required": ["p"]},
     "else": {"not": {"required": ["p"]}}},
    {"$defs": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/s", "minLength": 2}}},
]
VALUES = [None, True, False, 0, 1, 1.0, 2.5, 3, 512, 512.0, 11, float("nan"), float("inf"), "", "x", "12M", "abcd",
          [], [1], [1, 1], [1, 1.0], [True, 1], [1, "1"], {}, {"a": "s"}, {"a": 1}, {"b": 2}, {"a": "s", "b": 1},
          {"k": "x"}, {"k": "x", "p": 1}, {"p": 1}, {"a": "ab"}]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: ",".join(k for k in s if k != "$defs"))
def test_agrees_with_jsonschema(schema):
    fast = compile_schema(schema)
    full = Draft202012Validator(schema)
    assert fast is not None
    for value in VALUES:
        assert fast(value) == full.is_valid(value), value


@pytest.mark.parametrize("schema", [
    {"patternProperties": {"^x": {}}, "additionalProperties": False}, {"prefixItems": [{}]},
    {"$ref": "https://example.com/other.json"}, {"unevaluatedProperties": False}, {"format": "ipv4"},
])
def test_refuses_what_it_does_not_implement(schema):
    assert compile_schema(schema) is None


def test_the_project_schema_compiles():
    assert _fast_validators() is not None
