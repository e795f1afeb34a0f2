#!/usr/bin/env bash
# Runs the whole test suite (set-up included): lint, types, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check aprompt tests bench
.venv/bin/ruff format --check aprompt tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
