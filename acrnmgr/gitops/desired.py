"""Desired state: every VM spec under a directory (recursively), multi-document YAML, and
kustomization-style overlays.

A directory holding a `kustomization.yaml` is an overlay:

    resources: [../base/web.yaml, ../base/db.yaml]   # spec files (or directories) to take
    patches:                                          # JSON merge patches (RFC 7386)
      - path: host-a.yaml                             # a partial spec; metadata.name picks the VM
      - patch: {metadata: {name: web}, spec: {memory: 2G}}

Only the resources it names (patched) come from that directory; its other YAML files are
patches, not specs. A directory some overlay names as a resource is not also loaded on its own
when it sits under the applied directory (the overlay wins).

Every error names its file and line; documents of a multi-document file keep their real line
numbers.

YAML that is not a VM spec (a `kind` other than VM, or neither `kind` nor `spec`, as host profiles) is
skipped, and said so in one line. An `.acrnmgrignore` file at the top of the directory names paths to
leave out, in gitignore syntax."""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from acrnmgr.devices import vm_from_spec
from acrnmgr.model import VmSpec
from acrnmgr.spec.diagnostics import Diagnostic, SpecError

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
KUSTOMIZATION = ("kustomization.yaml", "kustomization.yml")
_DOC_SEP = re.compile(r"^---(?:\s.*)?$")


@dataclass
class Desired:
    name: str
    vm: VmSpec  # what the engine's `up` takes
    source: str  # "file.yaml" or "file.yaml#2" (document 2) or "overlay/kustomization.yaml:name"


IGNORE_FILE = ".acrnmgrignore"


@dataclass
class DesiredSet:
    vms: list[Desired] = field(default_factory=list)
    errors: list[Diagnostic] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: why", for files and documents that are not VM specs


def _gitignore_regex(pattern: str) -> tuple[re.Pattern[str], bool, bool] | None:
    """(regex over a /-separated relative path, negated, directory only) for one gitignore line."""
    pattern = pattern.rstrip("\n")
    if not pattern.strip() or pattern.startswith("#"):
        return None
    pattern = pattern.rstrip(" ")
    negated = pattern.startswith("!")
    pattern = pattern[1:] if negated else pattern
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
        i += 1
    body = "".join(out)
    return re.compile(("^" if anchored else "^(?:.*/)?") + body + "(?:/.*)?$"), negated, dir_only


def ignore_matcher(root: Path):
    """A predicate over paths under root, from root/.acrnmgrignore (gitignore syntax); None without the file."""
    try:
        lines = (root / IGNORE_FILE).read_text().splitlines()
    except OSError:
        return None
    rules = [r for r in map(_gitignore_regex, lines) if r is not None]

    def ignored(path: Path) -> bool:
        rel = path.relative_to(root).as_posix()
        result = False
        for regex, negated, dir_only in rules:
            if dir_only and not (path.is_dir() or "/" in rel):
                continue
            if regex.match(rel):
                result = not negated
        return result

    return ignored


def _not_a_vm(doc: str, suffix: str) -> str | None:
    """Why a document is not a VM spec (None when it is one, or may be: the validator then says what is wrong)."""
    import json

    import yaml

    try:
        data = json.loads(doc) if suffix == ".json" else yaml.safe_load(doc)
    except (ValueError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    if "kind" in data:
        return None if data["kind"] == "VM" else f"kind {data['kind']!r} is not a VM spec"
    return None if "spec" in data or "apiVersion" in data else "no kind: VM (a host profile or other YAML)"


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def split_documents(text: str) -> list[tuple[int, str]]:
    """[(first line number (0-based), text padded so line numbers match the file)]."""
    docs: list[tuple[int, list[str]]] = []
    start, current = 0, []
    for n, line in enumerate(text.split("\n")):
        if _DOC_SEP.match(line):
            docs.append((start, current))
            start, current = n + 1, []
        elif line.strip() == "...":
            continue
        else:
            current.append(line)
    docs.append((start, current))
    return [(s, "\n" * s + "\n".join(lines)) for s, lines in docs
            if any(ln.strip() and not ln.lstrip().startswith("#") for ln in lines)]


_PATH_KEYS = {("boot", "kernel"): ("path", "initrd"), ("boot", "ovmf"): ("code", "vars", "image"),
              ("boot", "elf"): ("path",)}


def absolutize(data: dict, base_dir: Path) -> dict:
    """The spec with every relative file path made absolute, so it can live in another folder."""
    data = copy.deepcopy(data)
    s = data.get("spec", {})

    def fix(obj: dict, key: str) -> None:
        value = obj.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            obj[key] = os.path.normpath(str(base_dir / Path(value).expanduser()))

    for (a, b), keys in _PATH_KEYS.items():
        node = s.get(a, {}).get(b)
        if isinstance(node, dict):
            for k in keys:
                fix(node, k)
    for port in s.get("console", {}).get("lpc", []):
        fix(port, "path")
    for d in s.get("devices", []):
        for k in ("path", "hd", "cd", "device"):
            fix(d, k)
        for k in ("romfile", "dsdt"):
            fix(d.get("options", {}), k)
        for port in d.get("ports", []) if isinstance(d.get("ports"), list) else []:
            if isinstance(port, dict):
                fix(port, "path")
    settings = s.get("settings", {})
    for k in ("iasl", "cmdMonitor"):
        fix(settings, k)
    if isinstance(settings.get("vtpm2"), dict):
        fix(settings["vtpm2"], "sockPath")
    return data


def _load_docs(path: Path, host, out: DesiredSet) -> list[tuple[str, object]]:
    """[(source label, Spec)] for one file."""
    from acrnmgr.spec.loader import decode_bytes
    from acrnmgr.spec.validation import load_spec_text

    try:
        text = decode_bytes(path.read_bytes(), str(path))
    except SpecError as exc:
        out.errors += exc.diagnostics
        return []
    except OSError as exc:
        out.errors.append(Diagnostic(str(path), 0, 0, "$", f"cannot read: {exc.strerror or exc}"))
        return []
    docs = split_documents(text) if path.suffix != ".json" else [(0, text)]
    result = []
    for n, (_, doc) in enumerate(docs, start=1):
        why = _not_a_vm(doc, path.suffix)
        if why is not None:
            out.skipped.append(f"{path if len(docs) == 1 else f'{path}#{n}'}: skipped, {why}")
            continue
        try:
            spec = load_spec_text(doc, str(path), host=host, base_dir=path.resolve().parent)
        except SpecError as exc:
            out.errors += exc.diagnostics
            continue
        result.append((str(path) if len(docs) == 1 else f"{path}#{n}", spec))
    return result


def _overlay(kfile: Path, host, out: DesiredSet, claimed: set[Path]) -> list[Desired]:
    import yaml

    from acrnmgr.spec.validation import load_spec_text

    def err(message: str, line: int = 1) -> None:
        out.errors.append(Diagnostic(str(kfile), line, 1, "$", message))

    try:
        conf = yaml.safe_load(kfile.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        err(f"invalid kustomization: {exc}", mark.line + 1 if mark else 1)
        return []
    if not isinstance(conf, dict):
        err("a kustomization is a mapping with `resources` and `patches`")
        return []
    unknown = set(conf) - {"resources", "patches", "apiVersion", "kind"}
    if unknown:
        err(f"unknown kustomization keys: {', '.join(sorted(unknown))} (supported: resources, patches)")
    base = kfile.parent
    bases: list[tuple[str, object]] = []
    for res in conf.get("resources", []) or []:
        p = (base / str(res)).resolve()
        files = sorted(f for f in p.rglob("*") if f.suffix in SPEC_SUFFIXES and f.name not in KUSTOMIZATION) \
            if p.is_dir() else [p]
        if not p.exists():
            err(f"resource {res} does not exist")
            continue
        claimed.update(files)
        for f in files:
            bases += _load_docs(f, None, out)
    patches: dict[str, list[dict]] = {}
    for item in conf.get("patches", []) or []:
        if not isinstance(item, dict) or not ({"path", "patch"} & set(item)):
            err("each patch is {path: FILE} or {patch: {...}}")
            continue
        if "path" in item:
            try:
                patch = yaml.safe_load((base / item["path"]).read_text())
            except (OSError, yaml.YAMLError) as exc:
                err(f"patch {item['path']}: {exc}")
                continue
        else:
            patch = item["patch"]
        target = (item.get("target") or {}).get("name") or ((patch or {}).get("metadata") or {}).get("name")
        if not target:
            err("a patch needs metadata.name (or target: {name: ...}) to pick its VM")
            continue
        patches.setdefault(target, []).append(patch)
    result = []
    names = {spec.name for _, spec in bases}
    for target in patches:
        if target not in names:
            err(f"patch for {target}: no such VM among the resources ({', '.join(sorted(names)) or 'none'})")
    for label, spec in bases:
        data = absolutize(spec.data, spec.base_dir)
        for patch in patches.get(spec.name, []):
            data = merge_patch(data, patch)
        import json

        try:
            patched = load_spec_text(json.dumps(data), f"{kfile} ({spec.name}, patched from {label})", host=host,
                                     base_dir=spec.base_dir)
        except SpecError as exc:
            out.errors += exc.diagnostics
            continue
        result.append(Desired(patched.name, vm_from_spec(patched), f"{kfile}:{spec.name}"))
    return result


def load_desired(root: str | Path, host=None) -> DesiredSet:
    root = Path(root)
    out = DesiredSet()
    if not root.is_dir():
        out.errors.append(Diagnostic(str(root), 0, 0, "$", "not a directory"))
        return out
    claimed: set[Path] = set()
    ignored = ignore_matcher(root) or (lambda _: False)
    overlays = sorted(p for name in KUSTOMIZATION for p in root.rglob(name) if not ignored(p))
    overlay_dirs = {k.parent for k in overlays}
    for kfile in overlays:
        out.vms += _overlay(kfile, host, out, claimed)
    for path in sorted(root.rglob("*")):
        if path.suffix not in SPEC_SUFFIXES or not path.is_file() or path.name.startswith("."):
            continue
        if ignored(path):
            continue
        if path.parent in overlay_dirs or any(d in path.parents for d in overlay_dirs) or path.resolve() in claimed:
            continue
        out.vms += [Desired(spec.name, vm_from_spec(spec), label) for label, spec in _load_docs(path, host, out)]
    seen: dict[str, str] = {}
    for vm in out.vms:
        if vm.name in seen:
            out.errors.append(Diagnostic(vm.source.split("#")[0].split(":")[0], 0, 0, "$.metadata.name",
                                         f"VM {vm.name} is defined twice ({seen[vm.name]} and {vm.source})"))
        seen.setdefault(vm.name, vm.source)
    return out
