#!/usr/bin/env bash
# The main job: runs aprompt on the embedded local model (no API key needed), set-up included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m aprompt.demo "$@"
