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

The applied folder is the boundary: resources and patches must lie inside it once symlinks are
resolved (no absolute paths, no `..` out of it), and so must every spec file and folder found in
it. Anything under it that cannot be read (a folder that cannot be listed, a dangling or looping
symlink, a FIFO or device named like a spec) is an error, so `apply` changes nothing rather than
prune a VM whose spec it failed to read. A file that is not a VM spec is reported as such, never
quoted.

YAML that is not a VM spec (a `kind` other than VM, or neither `kind` nor `spec`, as host profiles) is
skipped, and said so in one line. An `.acrnmgrignore` file at the top of the directory names paths to
leave out, in gitignore syntax."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from acrnmgr.devices import vm_from_spec
from acrnmgr.host import HostProfile
from acrnmgr.inputs import InputError, read_input, read_input_text
from acrnmgr.model import VmSpec
from acrnmgr.spec.diagnostics import Diagnostic, SpecError, type_name
from acrnmgr.spec.loader import Spec, decode_bytes
from acrnmgr.spec.validation import load_spec_text

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
KUSTOMIZATION = ("kustomization.yaml", "kustomization.yml")
_DOC_SEP = re.compile(r"^---(?:\s.*)?\Z")
# A document that says it is an acrnmgr spec, in YAML or JSON; only such a document's problems are
# shown (they may quote its keys and values), so a file that is not a spec is never echoed.
_HOST_PROFILE_KEYS = {f.name for f in dataclasses.fields(HostProfile)}
_SPEC_MARK = re.compile(r"""\bapiVersion["']?\s*:\s*["']?acrnmgr/""")


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
    """Why a document is clearly no VM spec, so a folder may hold it (a `kind` other than VM, or a host
    profile); None for anything else, which must then be a VM spec (and is an error, never quoted, if not)."""
    import yaml  # only for folders that hold other YAML: plain spec folders never parse twice

    try:
        data = json.loads(doc) if suffix == ".json" else yaml.safe_load(doc)
    except (ValueError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or not data:
        return None
    if "kind" in data:
        return None if data["kind"] == "VM" else "its kind is not VM"
    if set(data) <= _HOST_PROFILE_KEYS:
        return "a host profile, not a VM spec"
    return None


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
    start = 0
    current: list[str] = []
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


class _Folder:
    """The applied folder: what lies inside its boundary (the folder itself, or a --root that holds it, as a
    repository holds a per-host overlay and its base), and every entry under it that cannot be read."""

    def __init__(self, root: Path, out: DesiredSet, boundary: Path | None = None):
        self.root = boundary if boundary is not None else root
        self.real = Path(os.path.realpath(self.root))
        self.out = out

    def error(self, path: Path | str, message: str, line: int = 0) -> None:
        self.out.errors.append(Diagnostic(str(path), line, 1 if line else 0, "$", message))

    def inside(self, path: Path) -> bool:
        real = Path(os.path.realpath(path))
        return real == self.real or self.real in real.parents

    def confined(self, base: Path, given, what: str, where: Path) -> Path | None:
        """`given` (a resource or patch path from a kustomization in `base`) if it is a relative
        path that stays inside the folder once symlinks are resolved; else an error, and None."""
        if not isinstance(given, str) or not given:
            self.error(where, f"each {what} is a path relative to the kustomization, not {_kind(given)}", 1)
            return None
        if os.path.isabs(given) or given.startswith("~"):
            self.error(where, f"{what} {given}: an absolute path; {what}s are relative paths inside {self.root}", 1)
            return None
        path = base / given
        if not self.inside(path):
            self.error(where, f"{what} {given} lies outside the applied folder {self.root} "
                              "(apply a folder that holds both, or give --root a folder that does)", 1)
            return None
        return path

    def walk(self, top: Path) -> list[Path]:
        """Every file under `top`, recursively and sorted, following symlinks that stay inside the
        folder; what cannot be read is an error."""
        files: list[Path] = []
        seen: set[str] = set()

        def visit(d: Path) -> None:
            real = os.path.realpath(d)
            if real in seen:
                return
            seen.add(real)
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.error(d, f"cannot list this folder: {_why(exc)}")
                return
            for entry in entries:
                path = Path(entry.path)
                try:
                    mode = os.stat(path).st_mode
                except OSError as exc:
                    if not entry.name.startswith("."):  # hidden files are not read (an editor's .#x.yaml lock)
                        self.error(path, "cannot read: " + ("a dangling symlink" if isinstance(exc, FileNotFoundError)
                                                            else _why(exc)))
                    continue
                relevant = stat.S_ISDIR(mode) or path.suffix in SPEC_SUFFIXES
                if relevant and entry.is_symlink() and not self.inside(path):
                    self.error(path, f"a symlink that leads outside the applied folder {self.root}")
                elif stat.S_ISDIR(mode):
                    visit(path)
                else:
                    files.append(path)

        visit(top)
        return files


MAX_PATCH_VALUES = 100_000


def _patch_problem(obj) -> str | None:
    """Why a patch cannot be applied: more than MAX_PATCH_VALUES values (counting a value each time
    an alias repeats it), or a number that could not even be printed."""
    count, stack = 0, [obj]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_PATCH_VALUES:
            return f"a patch expands to more than {MAX_PATCH_VALUES} values (YAML aliases?)"
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, int) and node.bit_length() > 64:
            return "a patch holds a number that is far too large (more than 64 bits)"
    return None


def _why(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


def _kind(value) -> str:
    return type_name(value)


def _load_docs(path: Path, host, out: DesiredSet, named: bool = False) -> list[tuple[str, Spec]]:
    """[(source label, Spec)] for one file; `named`: a kustomization names it, so it must be a VM spec."""
    try:
        text = decode_bytes(read_input(path), str(path))
    except SpecError:
        out.errors.append(Diagnostic(str(path), 0, 0, "$", "not a VM spec (not UTF-8 text); its content is not shown"))
        return []
    except InputError as exc:
        out.errors.append(Diagnostic(str(path), 0, 0, "$", f"cannot read: {exc.reason}"))
        return []
    docs = split_documents(text) if path.suffix != ".json" else [(0, text)]
    result = []
    for n, (start, doc) in enumerate(docs, start=1):
        why = None if named else _not_a_vm(doc, path.suffix)
        if why is not None:
            out.skipped.append(f"{path if len(docs) == 1 else f'{path}#{n}'}: skipped, {why}")
            continue
        if not _SPEC_MARK.search(doc):
            out.errors.append(Diagnostic(str(path), start + 1, 1, "$", "not a VM spec (it has no "
                                         "`apiVersion: acrnmgr/v1`); its content is not shown"))
            continue
        try:
            spec = load_spec_text(doc, str(path), host=host, base_dir=path.resolve().parent)
        except SpecError as exc:
            out.errors += exc.diagnostics
            continue
        result.append((str(path) if len(docs) == 1 else f"{path}#{n}", spec))
    return result


def _yaml_error(exc) -> tuple[str, int]:
    """A YAML error's problem and line, without the snippet of the file that str(exc) quotes."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "not valid YAML"
    return problem, (mark.line + 1 if mark is not None else 1)


def _read_yaml(path: Path):
    """(data, None) or (None, (message, line)) for a kustomization or a patch file."""
    import yaml


    try:
        return yaml.safe_load(read_input_text(path)), None
    except InputError as exc:
        return None, (f"cannot read: {exc.reason}", 0)
    except yaml.YAMLError as exc:
        problem, line = _yaml_error(exc)
        return None, (f"invalid YAML: {problem}", line)
    except RecursionError:
        return None, ("nesting is too deep", 1)


def _overlay(kfile: Path, host, out: DesiredSet, claimed: set[Path], folder: _Folder) -> list[Desired]:
    def err(message: str, line: int = 1) -> None:
        out.errors.append(Diagnostic(str(kfile), line, 1, "$", message))

    conf, problem = _read_yaml(kfile)
    if problem:
        err(f"invalid kustomization: {problem[0]}", problem[1])
        return []
    conf = {} if conf is None else conf
    if not isinstance(conf, dict):
        err("a kustomization is a mapping with `resources` and `patches`")
        return []
    unknown = [k for k in conf if k not in ("resources", "patches", "apiVersion", "kind")]
    if unknown:
        shown = ", ".join(sorted(str(k)[:40] for k in unknown))
        err(f"unknown kustomization keys: {shown} (supported: resources, patches)")
    lists = {}
    for key in ("resources", "patches"):
        value = conf.get(key)
        if value is not None and not isinstance(value, list):
            err(f"`{key}` is a list, not {_kind(value)}")
            return []
        lists[key] = value or []
    base = kfile.parent
    bases: list[tuple[str, Spec]] = []
    for res in lists["resources"]:
        p = folder.confined(base, res, "resource", kfile)
        if p is None:
            continue
        if not p.exists():
            err(f"resource {res} does not exist")
            continue
        files = [f for f in folder.walk(p) if f.suffix in SPEC_SUFFIXES and f.name not in KUSTOMIZATION] \
            if p.is_dir() else [p]
        claimed.update(f.resolve() for f in files)
        for f in files:
            bases += _load_docs(f, None, out, named=True)
    patches: dict[str, list[dict]] = {}
    for item in lists["patches"]:
        if not isinstance(item, dict) or not ({"path", "patch"} & set(item)) or ({"path", "patch"} <= set(item)):
            err("each patch is {path: FILE} or {patch: {...}}")
            continue
        if "path" in item:
            ppath = folder.confined(base, item["path"], "patch", kfile)
            if ppath is None:
                continue
            patch, problem = _read_yaml(ppath)
            if problem:
                err(f"patch {item['path']}: {problem[0]}" + (f" (line {problem[1]})" if problem[1] else ""))
                continue
        else:
            patch = item["patch"]
        if not isinstance(patch, dict):
            err(f"a patch is a mapping (a partial spec), not {_kind(patch)}")
            continue
        problem = _patch_problem(patch)
        if problem:
            err(problem)
            continue
        target_conf = item.get("target")
        if target_conf is not None and not (isinstance(target_conf, dict) and isinstance(target_conf.get("name"), str)):
            err("a patch's `target` is {name: VM}")
            continue
        metadata = patch.get("metadata")
        target = (target_conf or {}).get("name") or (metadata.get("name") if isinstance(metadata, dict) else None)
        if not isinstance(target, str) or not target:
            err("a patch needs metadata.name (or target: {name: ...}) to pick its VM")
            continue
        patches.setdefault(target, []).append(patch)
    result = []
    names = {spec.name for _, spec in bases}
    for target in patches:
        if target not in names:
            err(f"patch for {target[:40]}: no such VM among the resources ({', '.join(sorted(names)) or 'none'})")
    for label, spec in bases:
        data = absolutize(spec.data, spec.base_dir)
        for patch in patches.get(spec.name, []):
            data = merge_patch(data, patch)
        try:
            patched = load_spec_text(json.dumps(data, default=str), f"{kfile} ({spec.name}, patched from {label})",
                                     host=host, base_dir=spec.base_dir)
        except SpecError as exc:
            out.errors += exc.diagnostics
            continue
        result.append(Desired(patched.name, vm_from_spec(patched), f"{kfile}:{spec.name}"))
    return result


def load_desired(root: str | Path, host=None, boundary: str | Path | None = None) -> DesiredSet:
    """The VMs the specs under `root` describe. Kustomization resources and patches may reach anything inside
    `boundary` (default: `root` itself), never outside it."""
    root = Path(root)
    out = DesiredSet()
    if not root.is_dir():
        out.errors.append(Diagnostic(str(root), 0, 0, "$", "not a directory"))
        return out
    folder = _Folder(root, out, Path(boundary) if boundary is not None else None)
    if not folder.inside(root):
        out.errors.append(Diagnostic(str(root), 0, 0, "$", f"not inside --root {boundary}"))
        return out
    every = folder.walk(root)
    claimed: set[Path] = set()
    ignored = ignore_matcher(root) or (lambda _: False)
    overlays = sorted(p for p in every if p.name in KUSTOMIZATION and not ignored(p))
    overlay_dirs = {k.parent for k in overlays}
    for kfile in overlays:
        out.vms += _overlay(kfile, host, out, claimed, folder)
    for path in every:
        if path.suffix not in SPEC_SUFFIXES or path.name.startswith("."):
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
