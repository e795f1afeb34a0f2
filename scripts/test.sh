#!/usr/bin/env bash
# Runs the whole test suite (set-up included): lint, types, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check aprompt tests bench scripts docs/examples
.venv/bin/ruff format --check aprompt tests bench scripts docs/examples
.venv/bin/mypy
# The documentation site, API reference included, built with warnings as errors (and thrown away).
SITE_DIR="$(mktemp -d)"
trap 'rm -rf "$SITE_DIR"' EXIT
.venv/bin/mkdocs build --strict --site-dir "$SITE_DIR"
.venv/bin/python -m pytest -q "$@"
