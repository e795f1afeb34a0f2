"""After the whole suite: no test API key was written to any file the tests left behind.

Run directories, journals, LM caches, saved results and logs of every test live under this session's
``tmp_path`` folders (pytest's base temporary directory). The keys are :data:`tests.conftest.TEST_API_KEY`
and every ``"sk-..."`` literal in the test sources. ``tests/run/conftest.py`` moves this module's tests
after all others, whatever their order of collection.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.conftest import TEST_API_KEY

TESTS = Path(__file__).resolve().parent
KEY_LITERAL = re.compile(r"""["'](sk-[A-Za-z0-9_-]{5,})["']""")


def keys_used_by_tests() -> set[str]:
    """The API keys the tests use (so far as they are written as literals)."""
    keys = {TEST_API_KEY}
    for source in TESTS.rglob("*.py"):
        keys.update(KEY_LITERAL.findall(source.read_text(encoding="utf-8")))
    return keys


def files_holding(folder: Path, secrets: Iterable[str]) -> dict[str, list[str]]:
    """Files under ``folder`` (relative paths) and the secrets found in each, read as raw bytes."""
    needles = {secret: secret.encode() for secret in secrets}
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits = [secret for secret, needle in needles.items() if needle in data]
        if hits:
            found[str(path.relative_to(folder))] = hits
    return found


def test_the_scan_finds_a_key_written_anywhere_in_a_file() -> None:
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run" / "cache"
        run.mkdir(parents=True)
        (run / "lm.sqlite3").write_bytes(b"\x00\x01 Bearer " + TEST_API_KEY.encode() + b"\x00")
        (run / "clean.json").write_text('{"score": 0.5}')
        assert files_holding(Path(folder), [TEST_API_KEY, "sk-other"]) == {
            str(Path("run") / "cache" / "lm.sqlite3"): [TEST_API_KEY]
        }


def test_no_test_api_key_is_in_any_file_left_by_the_suite(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    keys = keys_used_by_tests()
    assert TEST_API_KEY in keys and "sk-world" in keys
    scanned = sum(1 for path in base.rglob("*") if path.is_file())
    leaks = files_holding(base, keys)
    print(f"\nsecret scan: {len(keys)} test keys, {scanned} files under {base}")
    assert not leaks, f"test API keys written to files under {base}: {leaks}"
