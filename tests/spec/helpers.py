"""Helpers: build specs as YAML text and find where things are in it."""

from __future__ import annotations

import textwrap

from acrnmgr.spec.diagnostics import Diagnostic, SpecError
from acrnmgr.spec.validation import load_spec_text

HEAD = """\
apiVersion: acrnmgr/v1
kind: VM
metadata:
  name: t1
spec:
  cpu:
    affinity: [1, 2]
  memory: 1G
  boot:
    kernel:
      path: bzImage
"""


def spec_text(body: str = "", head: str = HEAD) -> str:
    """HEAD plus more `spec:` content (given at spec level indentation, i.e. 2 spaces)."""
    return head + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n" if body else head


def devices_text(devices: str, extra: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(devices).strip("\n"), "  ")
    return spec_text("devices:\n" + body + "\n" + textwrap.dedent(extra))


def diagnostics(text: str, filename: str = "t.yaml", **kw) -> list[Diagnostic]:
    """All diagnostics of a spec text ([] when it loads cleanly, warnings included)."""
    kw.setdefault("check_paths", False)
    try:
        spec = load_spec_text(text, filename, **kw)
    except SpecError as exc:
        return exc.diagnostics
    return list(spec.warnings)


def pos(text: str, line_has: str, value: str | None = None, nth: int = 1) -> tuple[int, int]:
    """(line, col), 1-based, of `value` (default: `line_has` itself) on the nth line containing `line_has`."""
    count = 0
    for i, line in enumerate(text.splitlines(), 1):
        if line_has in line:
            count += 1
            if count == nth:
                return i, line.index(value if value is not None else line_has) + 1
    raise AssertionError(f"{line_has!r} not in text")


def only(diags: list[Diagnostic], json_path: str) -> Diagnostic:
    found = [d for d in diags if d.json_path == json_path]
    assert len(found) == 1, f"expected one diagnostic at {json_path}, got: " + "\n".join(map(str, diags))
    return found[0]
