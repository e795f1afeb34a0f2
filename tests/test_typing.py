"""The public API's types, checked by running mypy (strict) on ``tests/typing_check.py``, and the code the
docs give users to copy, checked the same way."""

from __future__ import annotations

import re
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


def test_the_quick_start_and_the_examples_type_check_strictly(tmp_path: Path) -> None:
    """What a user copies into a project checked with ``mypy --strict`` passes as it is."""
    quickstart = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", quickstart, flags=re.DOTALL | re.MULTILINE)
    count, count_server = blocks[:2]
    (tmp_path / "count.py").write_text(count, encoding="utf-8")
    (tmp_path / "count_server.py").write_text(count_server, encoding="utf-8")
    examples = sorted(str(path) for path in (ROOT / "docs" / "examples").glob("*.py"))
    stdout, stderr, status = mypy_api.run(
        [
            "--strict",
            "--python-version",
            "3.11",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(tmp_path / "count_server.py"),
            *examples,
        ]
    )
    assert status == 0, stdout + stderr
