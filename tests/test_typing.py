"""The public API's types, checked by running mypy (strict) on ``tests/typing_check.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[1]


def test_optimize_optimize_events_optimize_sync_and_load_keep_the_program_type() -> None:
    stdout, stderr, status = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(ROOT / "tests" / "typing_check.py"),
        ]
    )
    assert status == 0, stdout + stderr
