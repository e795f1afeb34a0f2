"""BIG-bench task files: read the examples, and split them into fixed train / validation / test parts.

A task file is JSON with ``examples``, each with ``input`` and either ``target`` (a string or a list of
accepted strings) or ``target_scores`` (choice → 1 for correct, 0 otherwise). The split is a seeded
shuffle that depends only on the task and ``split_seed``, never on an optimizer's seed, so every method
and every optimizer seed sees the same parts and the test part is never shown to an optimizer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import attrs

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The task files copied into the repository (source and license: ``bench/data/README.md``).
DEFAULT_DATA_DIR = REPO_ROOT / "bench" / "data" / "bigbench"


@attrs.frozen
class Record:
    """One BIG-bench example: its input, the accepted answers and (for multiple choice) the choices."""

    id: str
    input: str
    targets: tuple[str, ...]
    choices: tuple[str, ...] = ()


@attrs.frozen
class Split:
    """Disjoint train / validation / test records."""

    train: tuple[Record, ...]
    val: tuple[Record, ...]
    test: tuple[Record, ...]


def task_file(data_dir: str | Path, source: str) -> Path:
    """``<data_dir>/<source>/task.json``; ``source`` may be a subtask folder (``multiemo/hotels_text_en``)."""
    path = Path(data_dir) / source / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"no BIG-bench task file at {path} (pass --data-dir)")
    return path


def load_records(data_dir: str | Path, source: str) -> list[Record]:
    """Every example of one task, in file order."""
    data = json.loads(task_file(data_dir, source).read_text(encoding="utf-8"))
    records = []
    for position, item in enumerate(data["examples"]):
        scores = item.get("target_scores") or {}
        if scores:
            targets = tuple(choice for choice, score in scores.items() if score == 1)
        else:
            target = item["target"]
            targets = tuple(str(t) for t in target) if isinstance(target, list) else (str(target),)
        records.append(Record(f"{source}:{position}", str(item["input"]), targets, tuple(scores)))
    return records


def split_records(
    records: Sequence[Record], *, n_train: int, n_val: int, n_test: int, split_seed: int = 0
) -> Split:
    """A seeded shuffle cut into test, then validation, then train (so growing ``n_train`` never
    changes the test part)."""
    needed = n_train + n_val + n_test
    if needed > len(records):
        raise ValueError(f"asked for {needed} examples, the task has {len(records)}")
    shuffled = list(records)
    random.Random(f"split:{split_seed}").shuffle(shuffled)
    test = shuffled[:n_test]
    val = shuffled[n_test : n_test + n_val]
    train = shuffled[n_test + n_val : needed]
    return Split(tuple(train), tuple(val), tuple(test))
