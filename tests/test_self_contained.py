"""The repository is self-contained: nothing it runs reads files from beside the clone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from bench.tasks import TASKS
from bench.tasks.data import DEFAULT_DATA_DIR, task_file

ROOT = Path(__file__).resolve().parents[1]

# A path that leaves the repository towards the sibling folder of given data, written either as a
# relative path or as `parent / "<name>"`; the name is assembled so this file does not match itself.
SIBLING = "sha" + "red"
OUTSIDE = re.compile(rf"""\.\./{SIBLING}|parents?(\[\d\])?\s*/\s*["']{SIBLING}["']""")


def tracked_sources() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.py", "*.sh", "*.toml", "*.yml", ".ci/*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_task_data_lives_inside_the_repository() -> None:
    assert DEFAULT_DATA_DIR.resolve().is_relative_to(ROOT)
    for task in TASKS.values():
        assert task_file(DEFAULT_DATA_DIR, task.source).is_file()


def test_task_data_states_its_source_and_license() -> None:
    readme = (DEFAULT_DATA_DIR.parent / "README.md").read_text(encoding="utf-8")
    assert "Apache License 2.0" in readme and "BIG-bench" in readme


def test_no_tracked_file_reads_beside_the_clone() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in tracked_sources()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []
