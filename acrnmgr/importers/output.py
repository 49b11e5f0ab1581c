"""Write imported specs as YAML (with what could not be mapped as a comment on top), and check
that each one validates."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from acrnmgr.importers.common import ImportedSpec, ImportResult
from acrnmgr.spec.diagnostics import Diagnostic, SpecError
from acrnmgr.spec.validation import load_spec_text


def spec_yaml(imported: ImportedSpec, source: str) -> str:
    lines = [f"# Imported by `acrnmgr import` from {source}"]
    if imported.warnings:
        lines.append("# Not mapped / changed on import:")
        lines += [f"#   - {w}" for w in imported.warnings]
    body = yaml.safe_dump(imported.data, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)
    return "\n".join(lines) + "\n" + body


def validate(imported: ImportedSpec, base_dir: Path | None = None, source: str | None = None) -> list[str]:
    """Schema + semantic errors of the imported spec (image paths are not required to exist:
    they are paths on the machine the source came from). Nothing is written when a spec does not
    validate, so each error cites the source (``source``, and the element a device came from when the
    importer knows it), not a line of a YAML file that does not exist."""
    try:
        load_spec_text(yaml.safe_dump(imported.data, sort_keys=False), f"{imported.name}.yaml",
                       check_paths=False, base_dir=base_dir)
    except SpecError as exc:
        return [_cite(d, imported, source) for d in exc.diagnostics if d.is_error]
    return []


_LINE_REF = re.compile(r"(spec(?:\.[A-Za-z0-9_]+|\[\d+\])*) \((?:line \d+|[^()\s]*:\d+(?::\d+)?)\)")


def _cite(d: Diagnostic, imported: ImportedSpec, source: str | None) -> str:
    if source is None:
        return str(d)
    origin = next((o for prefix, o in imported.origins.items()
                   if d.json_path == prefix or d.json_path.startswith((prefix + ".", prefix + "["))), None)
    def where(m: re.Match[str]) -> str:  # "spec.devices[0] (line 17)": the element, not a line of no file
        prefix = m.group(1).split(".", 2)
        found = imported.origins.get(".".join(prefix[:2])) if len(prefix) >= 2 else None
        return f"{m.group(1)} ({found})" if found else m.group(1)

    message = _LINE_REF.sub(where, d.message)
    text = f"{source}{': ' + origin if origin else ''}: {d.severity}: {d.json_path}: {message}"
    return text + (f" (hint: {d.suggestion})" if d.suggestion else "")


def write_specs(result: ImportResult, out_dir: Path, force: bool = False) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for imported in result.specs:
        path = out_dir / f"{imported.name}.yaml"
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists (use --force to overwrite)")
        paths.append(path)
    for imported, path in zip(result.specs, paths, strict=True):
        path.write_text(spec_yaml(imported, result.source))
    return paths
