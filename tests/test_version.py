"""One version string: pyproject takes it from acrnmgr.__version__ (setuptools' dynamic version)."""

import importlib.metadata
import re

from typer.testing import CliRunner

import acrnmgr
from acrnmgr.cli import app


def test_installed_metadata_carries_the_package_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", acrnmgr.__version__)
    assert importlib.metadata.version("acrnmgr") == acrnmgr.__version__


def test_cli_prints_the_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"acrnmgr {acrnmgr.__version__}\n"
