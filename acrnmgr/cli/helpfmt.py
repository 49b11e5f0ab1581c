"""Help text in the conventions of the tools people know (git, kubectl, systemctl): an argument is `FILE...` or
`[NAME]...`, an option's value is `PATH`, `SECONDS`, `auto|acrn|qemu` or a given metavar, and a flag shows no
value at all. Typer 0.2x prints Python type names instead (`<bool>`, `<list[Path]>`, `{files}...`); this module
replaces the methods that produce them (and rewraps docstring paragraphs, where Typer keeps every line
break), once, when the CLI is imported. If a Typer release renames them,
help falls back to Typer's own format; nothing else depends on it."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, get_args, get_origin

import typer.core

_NAMES = {bool: "", int: "N", float: "NUMBER", str: "TEXT", Path: "PATH"}


def _label(annotation: Any) -> str:
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (str,)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(m.value) for m in annotation)
    return _NAMES.get(annotation, "VALUE")


def _display_type(self, ctx) -> str:  # noqa: ANN001 - Typer's signature
    if isinstance(self, typer.core.TyperArgument):
        return ""  # the name column already says it: FILE...
    if self.metavar is not None:
        return self.metavar
    if getattr(self, "is_flag", False) or getattr(self, "count", False):
        return ""
    desc = self.type_descriptor
    if desc.is_choice and desc.choices:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices)
    return _label(desc.annotation)


def _usage_display_name(self) -> str:
    name = (self.metavar or self.name or "ARG").upper()
    if not self.required:
        name = f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def _rich_display_name(self) -> str:
    return (self.metavar or self.name or "ARG").upper() + ("..." if self.nargs != 1 else "")


def _fix_linebreaks(paragraphs: list[str], markup_mode: Any = None) -> str:
    """Docstring paragraphs are rewrapped to the terminal: a single newline is a space (a paragraph starting
    with \\b keeps its lines, as in click)."""
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split("\n")) for p in paragraphs)


def _error_msg(exc: Any) -> str:
    """A bad option value, said plainly: pydantic's messages (which Typer shows) start with `Value error, ` or
    `Input should be`."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return str(exc)
    err = errors[0]
    kind, ctx, value = err.get("type", ""), err.get("ctx") or {}, err.get("input")
    if kind in ("float_parsing", "float_type"):
        return f"{value!r} is not a number"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{value!r} is not a whole number"
    for key, words in (("le", "at most"), ("ge", "at least"), ("lt", "less than"), ("gt", "more than")):
        if key in ctx:
            return f"{value!r} is out of range: it must be {words} {ctx[key]}"
    msg = str(err.get("msg", exc))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg.replace("Input should be", "it should be")


def install() -> None:
    for cls in (getattr(typer.core, "TyperOption", None), getattr(typer.core, "TyperArgument", None)):
        if cls is not None and hasattr(cls, "display_type"):
            cls.display_type = _display_type
    arg = getattr(typer.core, "TyperArgument", None)
    if arg is not None and hasattr(arg, "_usage_display_name") and hasattr(arg, "_rich_display_name"):
        arg._usage_display_name = _usage_display_name
        arg._rich_display_name = _rich_display_name
        arg.display_name_raw = property(lambda self: (self.metavar or self.name or "ARG").upper())
    for module in ("typer._coercion", "typer._param_types"):
        try:
            mod = __import__(module, fromlist=["get_error_msg"])
        except ImportError:
            continue
        if hasattr(mod, "get_error_msg"):
            setattr(mod, "get_error_msg", _error_msg)  # noqa: B010  (an attribute only some typer versions have)
    try:
        import typer.rich_utils as rich_utils
    except ImportError:  # no rich: click's formatter rewraps by itself
        return
    if hasattr(rich_utils, "_fix_linebreaks"):
        rich_utils._fix_linebreaks = _fix_linebreaks
