"""Run-reliability tests: the secret scan of the whole suite runs last."""

from __future__ import annotations

import pytest

SECRET_SCAN = "test_zz_secret_scan.py"


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Move the secret scan after every other test: it reads the files they all left behind (pytest
    orders a folder's files and subfolders by name, so ``tests/tpe/`` would otherwise come after it)."""
    scan = [item for item in items if item.path.name == SECRET_SCAN]
    if scan:
        items[:] = [item for item in items if item.path.name != SECRET_SCAN] + scan
