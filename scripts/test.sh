#!/usr/bin/env bash
# Installs everything (scripts/install.sh), lints (ruff), type-checks (scripts/typecheck.py: mypy) and runs
# the whole test suite, slow tests included.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/python scripts/typecheck.py
exec .venv/bin/python -m pytest "$@"
