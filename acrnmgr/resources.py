"""The package data: the VM spec's JSON Schema and the launch-script templates.

In the repository they are the top-level schemas/ and templates/ folders; pyproject's package-dir ships
them as the subpackages acrnmgr.schemas and acrnmgr.templates, read here through importlib.resources,
so a wheel, `pip install --target DIR`, and an editable install all find them the same way."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2

SCHEMAS = "acrnmgr.schemas"
TEMPLATES = "acrnmgr.templates"


def schema_text(name: str = "vm.schema.json") -> str:
    """The text of the JSON Schema `name` in acrnmgr.schemas."""
    return files(SCHEMAS).joinpath(name).read_text(encoding="utf-8")


def template_loader() -> "jinja2.BaseLoader":
    """A Jinja2 loader for the templates in acrnmgr.templates (also from a zip or another importer)."""
    import jinja2

    return jinja2.PackageLoader(TEMPLATES, ".")
