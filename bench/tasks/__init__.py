"""Benchmark tasks: BIG-bench data, fixed splits, and one program per task for aprompt and for DSPy.

=============  ======================  ===========================================  ====================
task           data                    program                                      metric
=============  ======================  ===========================================  ====================
``intent``     intent_recognition      1 predictor: utterance -> intent (7 labels)  choice accuracy
``count``      object_counting         1 predictor: question -> answer: int         count exact match
``intent_goal`` intent_recognition     2 stages: describe goal -> classify          choice accuracy
``count_listed`` object_counting       2 stages: list the objects -> count          count exact match
``negate``     sentence_negation       1 predictor: sentence -> negated             sentence match
``negate_twostep`` sentence_negation   2 stages: find the verb phrase -> negate     sentence match
=============  ======================  ===========================================  ====================

``sentence_negation`` is BIG-bench's ``linguistic_mappings/sentence_negation_json`` (3,040 sentences in
four forms: simple and perfect, singular and plural); "sentence match" is exact match after lower-casing,
collapsing spaces and dropping a final period.

Example::

    task = TASKS["count"]
    split = task.split(DEFAULT_DATA_DIR, n_train=40, n_val=40, n_test=60)
    trainset = task.examples(split.train)          # aprompt.Example objects
    program, metric = task.program(), task.metric
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

import aprompt
from bench.tasks import programs
from bench.tasks.data import DEFAULT_DATA_DIR, Record, Split, load_records, split_records
from bench.tasks.metrics import as_count, choice_accuracy, count_accuracy, sentence_match

__all__ = ["DEFAULT_DATA_DIR", "TASKS", "Record", "Split", "Task", "load_records", "split_records"]


def _strip_prefix(prefix: str) -> Callable[[Record], str]:
    def to_input(record: Record) -> str:
        text = record.input.strip()
        return text[len(prefix) :].strip() if text.startswith(prefix) else text

    return to_input


def _count_label(record: Record) -> int:
    for target in record.targets:
        value = as_count(target)
        if value is not None:
            return value
    raise ValueError(f"{record.id}: no count among {list(record.targets)}")


@attrs.frozen
class Task:
    """One benchmark task: where its data is, how a record becomes program input and label, how the
    final answer is scored, and which program solves it."""

    name: str
    source: str
    description: str
    input_name: str
    answer_name: str
    n_stages: int
    to_input: Callable[[Record], str]
    to_label: Callable[[Record], Any]
    score: Callable[[object, Any], float]
    program: Callable[[], object]

    def records(self, data_dir: str | Path = DEFAULT_DATA_DIR) -> list[Record]:
        return load_records(data_dir, self.source)

    def split(
        self,
        data_dir: str | Path = DEFAULT_DATA_DIR,
        *,
        n_train: int,
        n_val: int,
        n_test: int,
        split_seed: int = 0,
    ) -> Split:
        return split_records(
            self.records(data_dir), n_train=n_train, n_val=n_val, n_test=n_test, split_seed=split_seed
        )

    def examples(self, records: Sequence[Record]) -> list[aprompt.Example]:
        """aprompt examples: the program input, and the gold answer under the answer field's name."""
        return [
            aprompt.Example(
                inputs={self.input_name: self.to_input(r)},
                labels={self.answer_name: self.to_label(r)},
                id=r.id,
            )
            for r in records
        ]

    def metric(self, example: aprompt.Example, prediction: Any) -> float:
        """aprompt's ``metric(example, prediction)``: the task's scorer on the final answer."""
        return self.score(getattr(prediction, self.answer_name, None), example.labels[self.answer_name])


def _intent_score(value: object, gold: Any) -> float:
    return choice_accuracy(value, [gold])


def _count_score(value: object, gold: Any) -> float:
    return count_accuracy(value, [str(gold)])


def _sentence_score(value: object, gold: Any) -> float:
    return sentence_match(value, [gold])


_INTENT = {
    "source": "intent_recognition",
    "input_name": "utterance",
    "answer_name": "intent",
    "to_input": _strip_prefix("Utterance:"),
    "to_label": lambda r: r.targets[0],
    "score": _intent_score,
}
_COUNT = {
    "source": "object_counting",
    "input_name": "question",
    "answer_name": "answer",
    "to_input": _strip_prefix(""),
    "to_label": _count_label,
    "score": _count_score,
}
_NEGATE: dict[str, Any] = {
    "source": "linguistic_mappings/sentence_negation_json",
    "input_name": "sentence",
    "answer_name": "negated",
    "to_input": _strip_prefix(""),
    "to_label": lambda r: r.targets[0],
    "score": _sentence_score,
}

TASKS: dict[str, Task] = {
    "intent": Task(
        "intent",
        description="1 predictor, classification (7 intents), choice accuracy",
        n_stages=1,
        program=programs.ClassifyIntent,
        **_INTENT,
    ),
    "count": Task(
        "count",
        description="1 predictor, short answer (an integer), count exact match",
        n_stages=1,
        program=programs.CountObjects,
        **_COUNT,
    ),
    "intent_goal": Task(
        "intent_goal",
        description="2 stages: describe the goal -> classify, choice accuracy",
        n_stages=2,
        program=programs.GoalThenIntent,
        **_INTENT,
    ),
    "count_listed": Task(
        "count_listed",
        description="2 stages: list the items -> count them, count exact match",
        n_stages=2,
        program=programs.ListThenCount,
        **_COUNT,
    ),
    "negate": Task(
        "negate",
        description="1 predictor, rewrite (negate a sentence), sentence match",
        n_stages=1,
        program=programs.Negate,
        **_NEGATE,
    ),
    "negate_twostep": Task(
        "negate_twostep",
        description="2 stages: find the verb phrase -> negate, sentence match",
        n_stages=2,
        program=programs.VerbThenNegate,
        **_NEGATE,
    ),
}
