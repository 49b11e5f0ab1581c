"""Write imported specs as YAML (with what could not be mapped as a comment on top), and check
that each one validates."""

from __future__ import annotations

from pathlib import Path

import yaml

from acrnmgr.importers.common import ImportedSpec, ImportResult
from acrnmgr.spec.diagnostics import SpecError
from acrnmgr.spec.validation import load_spec_text


def spec_yaml(imported: ImportedSpec, source: str) -> str:
    lines = [f"# Imported by `acrnmgr import` from {source}"]
    if imported.warnings:
        lines.append("# Not mapped / changed on import:")
        lines += [f"#   - {w}" for w in imported.warnings]
    body = yaml.safe_dump(imported.data, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)
    return "\n".join(lines) + "\n" + body


def validate(imported: ImportedSpec, base_dir: Path | None = None) -> list[str]:
    """Schema + semantic errors of the imported spec (image paths are not required to exist:
    they are paths on the machine the source came from)."""
    try:
        load_spec_text(yaml.safe_dump(imported.data, sort_keys=False), f"{imported.name}.yaml",
                       check_paths=False, base_dir=base_dir)
    except SpecError as exc:
        return [str(d) for d in exc.diagnostics if d.is_error]
    return []


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
