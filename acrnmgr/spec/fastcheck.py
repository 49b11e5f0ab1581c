"""A fast yes/no answer to "is this document valid against the schema?".

jsonschema is the authority and writes every message, but it costs ~2 ms per spec, most of the
validate+render budget (> 500 specs/s). Valid documents are the common case, so this module
compiles the same schema file into plain Python closures that only answer valid/invalid; any
"invalid" answer is handed to jsonschema for the full report. It implements exactly the keyword
subset our schema uses, with jsonschema's draft 2020-12 semantics (bool is not an integer, 1.0
is), and refuses (returns None from compile_schema) a schema that uses anything else, so a schema
change can never make it silently disagree. tests/spec/test_fuzz.py checks the agreement."""

from __future__ import annotations

import re
from typing import Any, Callable

Check = Callable[[Any], bool]

_ANNOTATIONS = {"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples", "x-message"}


class Unsupported(Exception):
    """The schema uses a keyword (or form) this checker does not implement."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "number": _is_number,
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer()),
}


def _equal(a: Any, b: Any) -> bool:
    """jsonschema's equality: True is not 1, 1 is 1.0, containers compare deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
        return False
    return a == b


class _Compiler:
    def __init__(self, root: dict):
        self.root = root
        self.defs = root.get("$defs", {})
        self.compiled: dict[str, Check] = {}

    def ref(self, ref: str) -> Check:
        if not (isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in self.defs):
            raise Unsupported(f"$ref {ref!r}")
        name = ref[8:]
        if name not in self.compiled:
            self.compiled[name] = _lazy  # placeholder while compiling (recursive refs)
            self.compiled[name] = self.compile(self.defs[name])
        fn = self.compiled[name]
        if fn is _lazy:  # recursive: look it up at call time
            return lambda x: self.compiled[name](x)
        return fn

    def compile(self, schema: Any) -> Check:
        if schema is True or schema == {}:
            return _true
        if schema is False:
            return _false
        if not isinstance(schema, dict):
            raise Unsupported(f"schema {schema!r}")
        checks: list[Check] = []
        for key, value in schema.items():
            if key in _ANNOTATIONS or key in ("then", "else"):
                continue
            method = getattr(self, "kw_" + key.lstrip("$"), None)
            if method is None:
                raise Unsupported(key)
            checks.append(method(value, schema))
        if not checks:
            return _true
        if len(checks) == 1:
            return checks[0]

        def check_all(x: Any) -> bool:
            for c in checks:
                if not c(x):
                    return False
            return True

        return check_all

    # --- keywords -------------------------------------------------------------------------------

    def kw_ref(self, value, schema) -> Check:
        return self.ref(value)

    def kw_type(self, value, schema) -> Check:
        names = [value] if isinstance(value, str) else list(value)
        tests = [_TYPES[n] for n in names]
        return lambda x: any(t(x) for t in tests)

    def kw_enum(self, value, schema) -> Check:
        choices = list(value)
        if all(isinstance(c, str) for c in choices):
            strings = frozenset(choices)
            return lambda x: isinstance(x, str) and x in strings
        return lambda x: any(_equal(x, c) for c in choices)

    def kw_const(self, value, schema) -> Check:
        if isinstance(value, str):
            return lambda x: isinstance(x, str) and x == value
        return lambda x: _equal(x, value)

    def kw_pattern(self, value, schema) -> Check:
        rx = re.compile(value)
        return lambda x: not isinstance(x, str) or rx.search(x) is not None

    def kw_minimum(self, value, schema) -> Check:
        return lambda x: not _is_number(x) or not x < value

    def kw_maximum(self, value, schema) -> Check:
        return lambda x: not _is_number(x) or not x > value

    def kw_minLength(self, value, schema) -> Check:
        return lambda x: not isinstance(x, str) or len(x) >= value

    def kw_maxLength(self, value, schema) -> Check:
        return lambda x: not isinstance(x, str) or len(x) <= value

    def kw_minItems(self, value, schema) -> Check:
        return lambda x: not isinstance(x, list) or len(x) >= value

    def kw_maxItems(self, value, schema) -> Check:
        return lambda x: not isinstance(x, list) or len(x) <= value

    def kw_minProperties(self, value, schema) -> Check:
        return lambda x: not isinstance(x, dict) or len(x) >= value

    def kw_maxProperties(self, value, schema) -> Check:
        return lambda x: not isinstance(x, dict) or len(x) <= value

    def kw_uniqueItems(self, value, schema) -> Check:
        if not value:
            return _true

        def unique(x: Any) -> bool:
            if not isinstance(x, list):
                return True
            return all(not _equal(x[i], x[j]) for i in range(len(x)) for j in range(i + 1, len(x)))

        return unique

    def kw_required(self, value, schema) -> Check:
        keys = list(value)
        return lambda x: not isinstance(x, dict) or all(k in x for k in keys)

    def kw_properties(self, value, schema) -> Check:
        props = {k: self.compile(v) for k, v in value.items()}

        def properties(x: Any) -> bool:
            if isinstance(x, dict):
                for k, check in props.items():
                    if k in x and not check(x[k]):
                        return False
            return True

        return properties

    def kw_additionalProperties(self, value, schema) -> Check:
        if "patternProperties" in schema:
            raise Unsupported("patternProperties")
        known = frozenset(schema.get("properties", {}))
        if value is False:
            return lambda x: not isinstance(x, dict) or known.issuperset(x)
        extra = self.compile(value)
        return lambda x: not isinstance(x, dict) or all(extra(v) for k, v in x.items() if k not in known)

    def kw_items(self, value, schema) -> Check:
        if "prefixItems" in schema or not isinstance(value, (dict, bool)):
            raise Unsupported("prefixItems / array-form items")
        item = self.compile(value)
        return lambda x: not isinstance(x, list) or all(item(v) for v in x)

    def kw_allOf(self, value, schema) -> Check:
        subs = [self.compile(s) for s in value]
        return lambda x: all(s(x) for s in subs)

    def kw_anyOf(self, value, schema) -> Check:
        subs = [self.compile(s) for s in value]
        return lambda x: any(s(x) for s in subs)

    def kw_oneOf(self, value, schema) -> Check:
        subs = [self.compile(s) for s in value]
        return lambda x: sum(1 for s in subs if s(x)) == 1

    def kw_not(self, value, schema) -> Check:
        sub = self.compile(value)
        return lambda x: not sub(x)

    def kw_if(self, value, schema) -> Check:
        cond = self.compile(value)
        then = self.compile(schema.get("then", True))
        other = self.compile(schema.get("else", True))
        return lambda x: then(x) if cond(x) else other(x)


def _true(x: Any) -> bool:
    return True


def _false(x: Any) -> bool:
    return False


def _lazy(x: Any) -> bool:  # marker for a $def that is still being compiled
    raise AssertionError("unreachable")


def compile_schema(schema: dict) -> Check | None:
    """A validity predicate for `schema`, or None if it uses anything not implemented here."""
    try:
        return _Compiler(schema).compile(schema)
    except (Unsupported, KeyError, TypeError, re.error):
        return None
