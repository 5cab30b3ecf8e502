#!/usr/bin/env bash
# The test command: a virtual environment with slimwheel and its test tools,
# then lint (ruff), types (mypy --strict) and the test suite (pytest).
# Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check slimwheel tests bench profiles
.venv/bin/ruff format --check slimwheel
.venv/bin/mypy
exec .venv/bin/pytest "$@"
