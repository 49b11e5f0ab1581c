"""Schema validation (schemas/vm.schema.json) turned into plain, located messages, followed by
the semantic checks. Every problem is reported, never only the first."""

from __future__ import annotations

import difflib
import json
import math
from functools import cache
from pathlib import Path
from typing import Any, Iterable

from acrnmgr.resources import schema_text
from acrnmgr.spec import checks
from acrnmgr.spec.diagnostics import Diagnostic, SpecError, type_name
from acrnmgr.spec.fastcheck import compile_schema
from acrnmgr.spec.loader import (
    Document,
    Spec,
    decode_bytes,
    parse_document,
    parse_documents,
    read_document,
    read_documents,
    spec_from_document,
)


TOP_LEVEL_KEYS = {"apiVersion", "kind", "metadata", "spec"}


@cache
def schema() -> dict:
    return json.loads(schema_text())


@cache
def validator():
    """Built once per process: the schema is checked and its $refs resolved a single time."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def validate_document(doc: Document, host=None, check_paths: bool = True) -> list[Diagnostic]:
    """Schema problems (sorted by position) then semantic ones, for one parsed document."""
    if isinstance(doc.data, dict) and not (set(doc.data) & TOP_LEVEL_KEYS):
        # Not a spec at all (say /etc/shadow): its keys would be quoted as unknown; never show them.
        return [Diagnostic(doc.filename, 1, 1, "$", "not a VM spec (it has none of apiVersion, kind, metadata, "
                                                    "spec); its content is not shown",
                           "a spec starts with `apiVersion: acrnmgr/v1`")]
    problems = schema_diagnostics(doc)
    semantic = checks.run_checks(doc, host=host, check_paths=check_paths, schema_ok=not problems)
    semantic.sort(key=lambda d: (d.line, d.col))
    return problems + semantic


def validate_files(paths: Iterable[str | Path], host=None, check_paths: bool = True):
    """Validate several files (each may hold several `---` separated VMs) together: each VM on
    its own, then the cross-VM checks (names, vsock CIDs, MACs, taps unique on one host). Returns (documents,
    diagnostics); a file that could not be parsed contributes its diagnostics and no document."""
    docs: list[Document] = []
    diagnostics: list[Diagnostic] = []
    for path in paths:
        try:
            found = _stdin_documents() if str(path) == "-" else read_documents(path)
        except SpecError as exc:
            diagnostics.extend(exc.diagnostics)
            continue
        for doc in found:
            diagnostics.extend(validate_document(doc, host=host, check_paths=check_paths))
            docs.append(doc)
    if len(docs) > 1:
        diagnostics.extend(checks.cross_file_checks(docs))
    return docs, diagnostics


def _stdin_documents() -> list[Document]:
    """`-` names standard input; its relative paths resolve against the working directory."""
    from acrnmgr.inputs import InputError, read_input

    try:
        raw = read_input("-", stdin=True)
    except InputError as exc:
        raise SpecError([Diagnostic(STDIN_NAME, 0, 0, "$", exc.reason)]) from None
    return parse_documents(decode_bytes(raw, STDIN_NAME), STDIN_NAME, base_dir=Path.cwd())


STDIN_NAME = "<stdin>"


# ---------------------------------------------------------------------------------------------
# jsonschema errors -> Diagnostics

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean (true/false)",
               "object": "a mapping", "array": "a list", "null": "null"}


def show(value: Any, limit: int = 60) -> str:
    """A short, safe rendering of a user value for messages."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"`{text}`"


def _norm(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def did_you_mean(word: Any, choices: Iterable[Any]) -> str | None:
    """'did you mean `x`?' for a near miss (case/underscore differences count as a match)."""
    if not isinstance(word, str):
        return None
    choices = [c for c in choices if isinstance(c, str)]
    for c in choices:
        if _norm(c) == _norm(word):
            return f"did you mean `{c}`?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        by_norm = {_norm(c): c for c in choices}
        close = [by_norm[m] for m in difflib.get_close_matches(_norm(word), list(by_norm), n=1, cutoff=0.6)]
    return f"did you mean `{close[0]}`?" if close else None


def _one_of(choices: Iterable[Any]) -> str:
    return ", ".join(f"`{c}`" if isinstance(c, str) else json.dumps(c) for c in choices)


@cache
def _fast_validators():
    """The compiled validity predicate for schema() (see fastcheck), or None if it cannot be."""
    return compile_schema(schema())


def _valid_fast(data: Any) -> bool:
    """True only if `data` is valid (False means: run the full, message-producing validation)."""
    check = _fast_validators()
    return check is not None and check(data)


def _non_finite(doc: Document) -> list[Diagnostic]:
    """NaN and infinities (YAML's .nan/.inf, JSON's NaN): JSON Schema has no such numbers, and a NaN passes every
    `minimum`/`maximum` (each comparison is false), so they are refused here, wherever they stand."""
    out: list[Diagnostic] = []
    stack: list[tuple[tuple, Any]] = [((), doc.data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((path + (k,), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((path + (i,), v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(doc.diag(path, f"`{value}` is not a finite number", "give a number"))
    return out


def schema_diagnostics(doc: Document) -> list[Diagnostic]:
    out: list[Diagnostic] = _non_finite(doc)
    if not out and _valid_fast(doc.data):
        return []
    seen: set[tuple] = {(d.json_path, d.message) for d in out}
    for error in validator().iter_errors(doc.data):
        for d in _convert(doc, error):
            key = (d.json_path, d.message)
            if key not in seen:
                seen.add(key)
                out.append(d)
    out.sort(key=lambda d: (d.line, d.col))
    return out


def _convert(doc: Document, error) -> list[Diagnostic]:
    path = tuple(error.absolute_path)
    kw = error.validator
    value = error.instance
    sch = error.schema if isinstance(error.schema, dict) else {}
    custom = sch.get("x-message")

    if kw in ("additionalProperties", "unevaluatedProperties"):
        allowed = list(sch.get("properties", {}))
        out = []
        for key in value:
            if key in allowed:
                continue
            hint = did_you_mean(key, allowed) or (f"allowed keys here: {_one_of(allowed)}" if allowed else None)
            if path[-2:-1] == ("devices",) and allowed and "type" in allowed:
                dev = sch.get("properties", {}).get("type", {}).get("const")
                out.append(doc.diag(path + (key,), f"unknown key `{key}` for a {dev} device", hint, key=True))
            else:
                out.append(doc.diag(path + (key,), f"unknown key `{key}`", hint, key=True))
        return out
    if custom and kw in ("oneOf", "anyOf", "not", "minProperties", "maxProperties", "required"):
        return [doc.diag(path, custom)]
    if kw == "required":
        return [doc.diag(path, f"missing required key `{k}`", _required_hint(path, k))
                for k in error.validator_value if isinstance(value, dict) and k not in value]
    if kw == "type":
        expected = error.validator_value
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in ([expected] if isinstance(expected, str) else expected))
        hint = None
        raw = doc.positions.raw.get(path)
        if raw is not None and "string" in expected:
            hint = f'YAML reads `{raw}` as {type_name(value).split(" (")[0]}; quote it: "{raw}"'
        return [doc.diag(path, f"expected {names}, got {type_name(value)}", hint)]
    if kw == "enum":
        choices = error.validator_value
        hint = did_you_mean(value, choices) or f"use one of {_one_of(choices)}"
        if path and path[-1] == "type" and path[-3:-2] == ("devices",):
            return [doc.diag(path, f"unknown device type {show(value)}", hint)]
        return [doc.diag(path, f"{show(value)} is not an allowed value", hint)]
    if kw == "const":
        want = error.validator_value
        return [doc.diag(path, f"expected `{want}`, got {show(value)}", f"use `{want}`")]
    if kw == "pattern":
        what = sch.get("description") or f"the pattern {error.validator_value}"
        return [doc.diag(path, f"{show(value)} is not valid here", f"expected {what}")]
    if kw in ("minimum", "exclusiveMinimum"):
        return [doc.diag(path, f"{show(value)} is below the minimum {error.validator_value}",
                         sch.get("description"))]
    if kw in ("maximum", "exclusiveMaximum"):
        return [doc.diag(path, f"{show(value)} is above the maximum {error.validator_value}",
                         sch.get("description"))]
    if kw == "minLength":
        return [doc.diag(path, "must not be empty" if error.validator_value == 1
                         else f"must be at least {error.validator_value} characters")]
    if kw == "maxLength":
        return [doc.diag(path, f"is {len(value)} characters long; at most {error.validator_value} allowed")]
    if kw == "minItems":
        return [doc.diag(path, "must not be empty" if error.validator_value == 1
                         else f"needs at least {error.validator_value} entries")]
    if kw == "maxItems":
        return [doc.diag(path, f"allows at most {error.validator_value} entries")]
    if kw == "uniqueItems":
        first: dict[str, int] = {}
        for i, item in enumerate(value):
            k = json.dumps(item, sort_keys=True)
            if k in first:
                return [doc.diag(path + (i,), f"{show(item)} is listed twice (also at index {first[k]})",
                                 "remove the duplicate")]
            first[k] = i
        return [doc.diag(path, "entries must be unique")]
    if kw in ("oneOf", "anyOf") and error.context:
        from jsonschema.exceptions import best_match

        return _convert(doc, best_match(error.context))
    if kw in ("minProperties", "maxProperties"):
        return [doc.diag(path, f"needs {'at least' if kw == 'minProperties' else 'at most'} "
                               f"{error.validator_value} keys")]
    return [doc.diag(path, error.message)]


def _required_hint(path: tuple, key: str) -> str | None:
    if key == "type" and path[-2:-1] == ("devices",):
        return f"add `type:` with one of {_one_of(schema()['$defs']['device']['properties']['type']['enum'])}"
    if path == () and key == "apiVersion":
        return "add `apiVersion: acrnmgr/v1`"
    if path == () and key == "kind":
        return "add `kind: VM`"
    return None


# ---------------------------------------------------------------------------------------------
# Loading validated specs


def load_spec(path: str | Path, host=None, *, check_paths: bool = True) -> Spec:
    """Read, parse and fully validate one spec file. Raises SpecError with every problem."""
    doc = read_document(path)
    return _finish(doc, host, check_paths)


def load_spec_text(text: str, filename: str = "<string>", host=None, *, check_paths: bool = True,
                   base_dir: str | Path | None = None) -> Spec:
    """Parse and fully validate an in-memory spec; `filename` picks JSON (.json) or YAML and
    names the source in diagnostics; relative paths resolve against `base_dir` (default cwd)."""
    doc = parse_document(text, filename, base_dir=Path(base_dir) if base_dir else Path.cwd())
    return _finish(doc, host, check_paths)


def _finish(doc: Document, host, check_paths: bool) -> Spec:
    diagnostics = validate_document(doc, host=host, check_paths=check_paths)
    if any(d.is_error for d in diagnostics):
        raise SpecError(diagnostics)
    return spec_from_document(doc, warnings=diagnostics)


def load_specs(path: str | Path, host=None, *, check_paths: bool = True) -> list[Spec]:
    """Every VM of a file (YAML may hold several `---` separated documents), validated alone and
    against each other (unique names, CIDs, MACs, taps). Raises SpecError with every problem."""
    docs, diagnostics = validate_files([path], host=host, check_paths=check_paths)
    if any(d.is_error for d in diagnostics):
        raise SpecError(diagnostics)
    return [spec_from_document(doc, warnings=_within(doc, diagnostics)) for doc in docs]


def _within(doc: Document, diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """The diagnostics that point into `doc`'s lines of the file."""
    lines = [line for line, _ in doc.positions.values.values()]
    first, last = min(lines), max(lines)
    return [d for d in diagnostics if d.line and first <= d.line <= last]
