"""Load a VM spec (YAML or JSON) into a `Spec`, keeping file:line:col for every JSON path.

Parsing never raises anything but SpecError: malformed text, wrong encodings, binary data,
duplicate keys, unsupported YAML tags and absurd numbers all become Diagnostics."""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]  # there at run time; typeshed leaves it out
from pathlib import Path
from typing import Any, Protocol, cast

import yaml

from acrnmgr.spec.diagnostics import Diagnostic, SpecError, format_path, type_name

# Alias expansion can turn a tiny YAML file into a huge tree ("billion laughs"); no VM spec
# comes anywhere near this many nodes.
MAX_NODES = 100_000
MAX_FILE_BYTES = 16 << 20
# No spec number needs more than 64 bits; a bigger one (0x followed by 3,600 hex digits) could not
# even be printed (Python refuses to turn ints of more than 4300 digits into text).
MAX_INT_BITS = 64


@dataclass
class Positions:
    """1-based (line, col) of every value, and of every mapping key, by JSON path tuple."""

    values: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    keys: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    # Plain YAML scalars that did not become strings (yes -> True, 00:02.0 -> 120.0): their
    # source text, so a type error can say "quote it".
    raw: dict[tuple, str] = field(default_factory=dict)

    def locate(self, path: tuple, key: bool = False) -> tuple[int, int]:
        """Position of `path` (its key when `key`), else of its nearest known ancestor."""
        path = tuple(path)
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))


@dataclass
class Document:
    """A parsed file: plain data plus where each part came from."""

    filename: str
    data: Any
    positions: Positions
    base_dir: Path
    path: Path | None = None

    def diag(self, path, message: str, suggestion: str | None = None, *, key: bool = False,
             severity: str = "error") -> Diagnostic:
        line, col = self.positions.locate(tuple(path), key=key)
        return Diagnostic(self.filename, line, col, format_path(path), message, suggestion, severity)


@dataclass(frozen=True, eq=False)
class Spec:
    name: str
    path: Path | None
    base_dir: Path
    data: dict  # the validated document; defaults are NOT injected
    spec: dict  # data["spec"]
    hash: str  # sha256 of the canonical JSON of data
    devices: list[dict]
    warnings: tuple[Diagnostic, ...] = ()
    positions: Positions | None = field(default=None, repr=False)

    def resolve_path(self, p: str) -> Path:
        """A path from the spec: relative ones are relative to the spec file's folder."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def locate(self, json_path) -> tuple[str, int, int]:
        """(file, line, col) of a JSON path in this spec, for consumers' own diagnostics."""
        line, col = self.positions.locate(tuple(json_path)) if self.positions else (0, 0)
        return (str(self.path) if self.path else self.name, line, col)


def canonical_hash(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Public entry points


def spec_from_document(doc: Document, warnings=()) -> Spec:
    """Wrap an already validated document."""
    data = doc.data
    return Spec(
        name=data["metadata"]["name"],
        path=doc.path,
        base_dir=doc.base_dir,
        data=data,
        spec=data["spec"],
        hash=canonical_hash(data),
        devices=data["spec"].get("devices", []),
        warnings=tuple(warnings),
        positions=doc.positions,
    )


def read_document(path: str | Path) -> Document:
    """Read and parse a one-document file (no validation). Raises SpecError for
    unreadable/malformed input."""
    text, name, base_dir = _read_text(path)
    doc = parse_document(text, name, base_dir=base_dir)
    doc.path = Path(path)
    return doc


def read_documents(path: str | Path) -> list[Document]:
    """Like read_document, but a YAML file may hold several `---` separated VMs."""
    text, name, base_dir = _read_text(path)
    docs = parse_documents(text, name, base_dir=base_dir)
    for doc in docs:
        doc.path = Path(path)
    return docs


def _read_text(path: str | Path) -> tuple[str, str, Path]:
    from acrnmgr.inputs import InputError, read_input

    name = str(path)
    try:
        raw = read_input(path, limit=MAX_FILE_BYTES)
    except InputError as exc:
        reason = exc.reason
        if reason.startswith("is a directory"):
            reason = "is a directory, not a spec file"
        raise SpecError([Diagnostic(name, 0, 0, "$", reason)]) from None
    return decode_bytes(raw, name), name, Path(path).resolve().parent


def decode_bytes(raw: bytes, filename: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        what = "binary data" if b"\0" in raw else "not UTF-8 text"
        raise SpecError([Diagnostic(filename, line, col, "$",
                                    f"{what}: byte 0x{raw[exc.start]:02x} is not valid UTF-8",
                                    "save the spec as UTF-8 YAML or JSON")]) from None


def parse_document(text: str, filename: str, base_dir: Path | None = None) -> Document:
    """Parse YAML (or JSON when the file name ends in .json) with positions; the text must hold
    one document whose top level is a mapping. Raises SpecError."""
    return _parse(text, filename, base_dir, multi=False)[0]


def parse_documents(text: str, filename: str, base_dir: Path | None = None) -> list[Document]:
    """Like parse_document, for YAML streams of several `---` separated documents (empty
    documents are skipped). Raises SpecError listing the problems of every document."""
    return _parse(text, filename, base_dir, multi=True)


def _parse(text: str, filename: str, base_dir: Path | None, multi: bool) -> list[Document]:
    if not isinstance(text, str):
        raise SpecError([Diagnostic(filename, 0, 0, "$", f"expected text, got {type(text).__name__}")])
    if text.startswith("\ufeff"):
        text = text[1:]
    nul = text.find("\0")
    if nul >= 0:
        line, col = _offset_to_linecol(text, nul)
        raise SpecError([Diagnostic(filename, line, col, "$", "binary data (NUL byte) in a spec file",
                                    "a spec is UTF-8 YAML or JSON text")])
    if not text.strip() or _only_comments(text):
        raise SpecError([Diagnostic(filename, 1, 1, "$", "file is empty",
                                    "a spec starts with `apiVersion: acrnmgr/v1`")])
    is_json = filename.lower().endswith(".json") or _looks_like_json(text)
    try:
        if is_json:
            results, problems = _JsonParser(text, filename).parse()
        else:
            results, problems = _YamlParser(text, filename).parse(multi)
    except RecursionError:
        raise SpecError([Diagnostic(filename, 1, 1, "$", "nesting is too deep")]) from None
    if multi:
        results = [(data, positions) for data, positions in results if data is not None] or results[:1]
    for data, positions in results:
        if not isinstance(data, dict):
            line, col = positions.locate(())
            kind = type_name(data)
            problems.append(Diagnostic(filename, line, col, "$",
                                       "the top level must be a mapping (apiVersion, kind, metadata, spec), "
                                       f"got {kind}",
                                       "one VM per document; start with `apiVersion: acrnmgr/v1`"
                                       if kind != "nothing (null)" else None))
    if problems:
        raise SpecError(sorted(problems, key=lambda d: (d.line, d.col)))
    return [Document(filename, data, positions, base_dir or Path.cwd()) for data, positions in results]


def _integral(value):
    """5.0 -> 5. JSON Schema counts 5.0 as an integer, so without this `slot: 5.0` would pass
    validation and reach acrn-dm's argv as "5.0"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _too_big(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS


_KEY_LIKE = re.compile(r"[A-Za-z0-9_./-]{1,63}")


def _shown_key(key: str) -> str:
    """A key as a message quotes it; one that no spec could hold (a line of /etc/shadow) is not shown."""
    return f"`{key}`" if _KEY_LIKE.fullmatch(key) else "(a key that is not a name; not shown)"


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.split("\n", line + 1)
    return lines[line][column:column + 1] if line < len(lines) else ""


def _looks_like_json(text: str) -> bool:
    """A JSON document in a .yaml file: parse it as JSON (YAML chokes on JSON's tabs)."""
    if not text.lstrip().startswith("{"):
        return False
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _only_comments(text: str) -> bool:
    return all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines())


def _offset_to_linecol(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


# ---------------------------------------------------------------------------------------------
# YAML: compose a node graph (C parser when available) and build plain data from it ourselves,
# recording each node's mark and rejecting duplicate keys, odd keys and unknown tags.

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _YamlParser:
    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.positions = Positions()
        self.problems: list[Diagnostic] = []
        self.count = 0
        self.active: set[int] = set()

    def _problem(self, mark, message: str, path=(), suggestion=None):
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        self.problems.append(Diagnostic(self.filename, line, col, format_path(path), message, suggestion))

    def parse(self, multi: bool = False):
        """[(data, positions)] per document, and the problems found."""
        self.yaml = yaml
        self.constructor = yaml.constructor.SafeConstructor()
        loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        loader = loader_cls(self.text)
        results = []
        try:
            if not multi:
                node = loader.get_single_node()
                if node is None:
                    self.problems.append(Diagnostic(self.filename, 1, 1, "$", "file is empty",
                                                    "a spec starts with `apiVersion: acrnmgr/v1`"))
                else:
                    results.append((self._build(node, ()), self.positions))
            else:
                while loader.check_node():
                    self.positions = Positions()
                    self.active.clear()
                    node = loader.get_node()
                    results.append((self._build(node, ()), self.positions))
        except yaml.MarkedYAMLError as exc:
            self._yaml_error(exc)
        except yaml.reader.ReaderError as exc:
            line, col = _offset_to_linecol(self.text, max(0, min(exc.position, len(self.text))))
            char = exc.character if isinstance(exc.character, str) else chr(exc.character)
            self.problems.append(Diagnostic(self.filename, line, col, "$",
                                            f"invalid character U+{ord(char):04X} ({exc.reason})",
                                            "a spec is printable UTF-8 text"))
        except yaml.YAMLError as exc:
            self.problems.append(Diagnostic(self.filename, 1, 1, "$", f"invalid YAML: {exc}"))
        finally:
            loader.dispose()
        return results, self.problems

    def _yaml_error(self, exc) -> None:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if "expected a single document" in str(exc):
            self._problem(mark, "more than one YAML document in this file; a spec file holds one VM",
                          suggestion="split the documents into separate files")
            return
        message = f"invalid YAML: {problem}"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        hint = None
        if mark is not None and _char_at(self.text, mark.line, mark.column) == "\t":
            hint = "indent with spaces; YAML does not allow tabs"
        elif "mapping values are not allowed" in problem:
            hint = "a value containing `: ` must be quoted"
        self._problem(mark, message, suggestion=hint)

    def _build(self, node, path):
        self.count += 1
        if self.count > MAX_NODES:
            if self.count == MAX_NODES + 1:
                self._problem(node.start_mark, f"document expands to more than {MAX_NODES} values (YAML aliases?)",
                              path)
            return None
        self.positions.values.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        kind = node.id
        if kind == "scalar":
            return self._scalar(node, path)
        if id(node) in self.active:
            self._problem(node.start_mark, "recursive YAML alias", path)
            return None
        self.active.add(id(node))
        try:
            if kind == "sequence":
                return [self._build(child, path + (i,)) for i, child in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node, path) -> dict:
        out: dict = {}
        first_seen: dict[str, Any] = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            kpath = path + (key,)
            if key in first_seen:
                prev = first_seen[key]
                self._problem(key_node.start_mark,
                              f"duplicate key {_shown_key(key)} (first given at line {prev.line + 1})",
                              kpath if _KEY_LIKE.fullmatch(key) else path, "remove one of them")
                continue
            first_seen[key] = key_node.start_mark
            self.positions.keys[kpath] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self._build(value_node, kpath)
        # YAML merge keys (<<: *defaults): explicit keys win, earlier merged mappings win.
        for merge_node in merges:
            sources = merge_node.value if merge_node.id == "sequence" else [merge_node]
            for src in sources:
                if src.id != "mapping":
                    self._problem(src.start_mark, "a merge key (<<) needs a mapping or a list of mappings", path)
                    continue
                merged = self._build(src, path)
                if isinstance(merged, dict):
                    for k, v in merged.items():
                        out.setdefault(k, v)
        return out

    def _key(self, key_node, path):
        if key_node.id != "scalar":
            self._problem(key_node.start_mark, "a mapping key must be a plain string, not a list or mapping", path)
            return None
        if key_node.tag == _STR_TAG:
            return key_node.value
        value = self._scalar(key_node, path, record=False)
        if isinstance(value, str):
            return value
        shown = key_node.value or "(empty)"
        self._problem(key_node.start_mark, f"key `{shown}` is read by YAML as {type_name(value)}, not a string",
                      path + (key_node.value,), f'quote it: "{key_node.value}"')
        return None

    def _scalar(self, node, path, record=True):
        if node.tag == _STR_TAG:
            return node.value
        try:
            value = self.constructor.construct_object(node, deep=True)
        except self.yaml.constructor.ConstructorError as exc:
            tag = node.tag
            self._problem(node.start_mark,
                          f"unsupported YAML tag `{tag}`" if "tag" in str(exc) else f"invalid value: {exc.problem}",
                          path, "remove the tag; specs hold plain strings, numbers, booleans, lists and mappings")
            return None
        except (ValueError, OverflowError):
            # Python refuses to build ints of more than 4300 digits; no spec value is that big.
            self._problem(node.start_mark, "number is far too large", path)
            return None
        if isinstance(value, (bool, int, float)) or value is None:
            value = _integral(value)
            if _too_big(value):
                self._problem(node.start_mark, f"number is far too large (more than {MAX_INT_BITS} bits)", path)
                return None
            if record and not node.style and node.value:
                self.positions.raw[path] = node.value
            return value
        if isinstance(value, str):
            return value
        # dates, timestamps, binary, sets...: keep the source text; the schema decides.
        return node.value


# ---------------------------------------------------------------------------------------------
# JSON: strict json.loads for syntax errors and messages, then a small walk over the (now known
# valid) text to find positions and duplicate keys.

class _Matches(Protocol):
    """A pattern that always matches where the walk uses it: _WS matches the empty string, and _NUMBER
    is only tried where valid JSON has a number."""

    def match(self, string: str, pos: int = 0) -> re.Match[str]: ...


_WS = cast(_Matches, re.compile(r"[ \t\n\r]*"))
_NUMBER = cast(_Matches, re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"))
_LITERALS = {"true": True, "false": False, "null": None, "NaN": float("nan"),
             "Infinity": float("inf"), "-Infinity": float("-inf")}


class _JsonParser:
    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.positions = Positions()
        self.problems: list[Diagnostic] = []
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def _linecol(self, offset: int) -> tuple[int, int]:
        i = bisect.bisect_right(self._line_starts, offset) - 1
        return i + 1, offset - self._line_starts[i] + 1

    def parse(self):
        try:
            json.loads(self.text)
        except json.JSONDecodeError as exc:
            self.problems.append(Diagnostic(self.filename, exc.lineno, exc.colno, "$", f"invalid JSON: {exc.msg}"))
            return [], self.problems
        except ValueError:
            # int() digit limit: locate the offending number ourselves
            pass

        self._scanstring = scanstring
        value, _ = self._value(_WS.match(self.text, 0).end(), ())
        return [(value, self.positions)], self.problems

    def _value(self, i: int, path):
        s = self.text
        self.positions.values[path] = self._linecol(i)
        c = s[i]
        if c == "{":
            return self._object(i + 1, path)
        if c == "[":
            out: list[Any] = []
            i = _WS.match(s, i + 1).end()
            if s[i] == "]":
                return out, i + 1
            while True:
                v, i = self._value(i, path + (len(out),))
                out.append(v)
                i = _WS.match(s, i).end()
                if s[i] == "]":
                    return out, i + 1
                i = _WS.match(s, i + 1).end()  # skip ","
        if c == '"':
            return self._scanstring(s, i + 1)
        for lit, val in _LITERALS.items():
            if s.startswith(lit, i):
                return val, i + len(lit)
        m = _NUMBER.match(s, i)
        token = m.group(0)
        try:
            value = _integral(float(token)) if "." in token or "e" in token or "E" in token else int(token)
        except ValueError:
            value = None
        if value is None or _too_big(value):
            line, col = self._linecol(i)
            self.problems.append(Diagnostic(self.filename, line, col, format_path(path),
                                            f"number is far too large (more than {MAX_INT_BITS} bits)"))
            return None, m.end()
        return value, m.end()

    def _object(self, i: int, path):
        s = self.text
        out: dict = {}
        first: dict[str, tuple[int, int]] = {}
        i = _WS.match(s, i).end()
        if s[i] == "}":
            return out, i + 1
        while True:
            key_pos = self._linecol(i)
            key, i = self._scanstring(s, i + 1)
            i = _WS.match(s, i).end() + 1  # skip ":"
            i = _WS.match(s, i).end()
            kpath = path + (key,)
            if key in first:
                self.problems.append(Diagnostic(
                    self.filename, *key_pos, format_path(kpath if _KEY_LIKE.fullmatch(key) else path),
                    f"duplicate key {_shown_key(key)} (first given at line {first[key][0]})", "remove one of them"))
                saved = self.positions.values.get(kpath)
                _, i = self._value(i, kpath)
                if saved:
                    self.positions.values[kpath] = saved
            else:
                first[key] = key_pos
                self.positions.keys[kpath] = key_pos
                out[key], i = self._value(i, kpath)
            i = _WS.match(s, i).end()
            if s[i] == "}":
                return out, i + 1
            i = _WS.match(s, i + 1).end()  # skip ","
