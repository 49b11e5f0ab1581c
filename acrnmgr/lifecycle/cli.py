"""CLI commands for the lifecycle concept."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this concept's commands to the root app."""
