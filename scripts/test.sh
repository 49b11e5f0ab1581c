#!/usr/bin/env bash
# Run the whole test suite, installing what it needs first (see scripts/setup.sh): the static checks
# (ruff, mypy, the import-linter layering contract), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: ruff" >&2
.venv/bin/ruff check acrnmgr tests bench
echo "test: mypy" >&2
.venv/bin/mypy acrnmgr
echo "test: import-linter" >&2
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
