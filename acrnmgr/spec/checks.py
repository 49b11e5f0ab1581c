"""Semantic checks: what the schema cannot say."""

from __future__ import annotations


def run_checks(doc, host=None, check_paths=True, schema_ok=True) -> list:
    return []


def cross_file_checks(docs) -> list:
    return []
