"""The benchmark programs written with DSPy: the same stages as ``programs.py``, in DSPy's idiom.

Importing this module imports ``dspy`` (the ``bench`` extra); nothing else in ``bench.tasks`` does.
"""

from __future__ import annotations

from typing import Any

import dspy

from bench.tasks.stages import (
    CLASSIFY_INTENT,
    CLASSIFY_WITH_GOAL,
    COUNT,
    COUNT_ITEMS,
    DESCRIBE_GOAL,
    DSPY_MARKER_TOKENS,
    FIND_VERB,
    LIST_ITEMS,
    NEGATE,
    NEGATE_WITH_VERB,
    Stage,
)


def signature(stage: Stage) -> type[dspy.Signature]:
    fields: dict[str, Any] = {name: (str, dspy.InputField(desc=desc)) for name, desc in stage.inputs}
    fields.update({name: (kind, dspy.OutputField(desc=desc)) for name, kind, desc in stage.outputs})
    return dspy.Signature(fields, stage.instruction)


def predictor(stage: Stage) -> dspy.Predict:
    return dspy.Predict(signature(stage), temperature=0.0, max_tokens=stage.max_tokens + DSPY_MARKER_TOKENS)


class ClassifyIntent(dspy.Module):
    """One predictor: utterance -> intent."""

    def __init__(self) -> None:
        super().__init__()
        self.classify = predictor(CLASSIFY_INTENT)

    def forward(self, utterance: str) -> dspy.Prediction:
        return self.classify(utterance=utterance)


class GoalThenIntent(dspy.Module):
    """Two stages: state the user's goal, then classify the utterance with it."""

    def __init__(self) -> None:
        super().__init__()
        self.describe_goal = predictor(DESCRIBE_GOAL)
        self.classify = predictor(CLASSIFY_WITH_GOAL)

    def forward(self, utterance: str) -> dspy.Prediction:
        goal = self.describe_goal(utterance=utterance)
        return self.classify(utterance=utterance, goal=goal.goal)


class CountObjects(dspy.Module):
    """One predictor: question -> answer (an integer)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = predictor(COUNT)

    def forward(self, question: str) -> dspy.Prediction:
        return self.count(question=question)


class ListThenCount(dspy.Module):
    """Two stages: list the objects asked about, then count the list."""

    def __init__(self) -> None:
        super().__init__()
        self.list_items = predictor(LIST_ITEMS)
        self.count = predictor(COUNT_ITEMS)

    def forward(self, question: str) -> dspy.Prediction:
        listed = self.list_items(question=question)
        return self.count(question=question, objects=listed.objects)


class Negate(dspy.Module):
    """One predictor: sentence -> negated."""

    def __init__(self) -> None:
        super().__init__()
        self.negate = predictor(NEGATE)

    def forward(self, sentence: str) -> dspy.Prediction:
        return self.negate(sentence=sentence)


class VerbThenNegate(dspy.Module):
    """Two stages: find the main verb phrase, then negate the sentence with it."""

    def __init__(self) -> None:
        super().__init__()
        self.find_verb = predictor(FIND_VERB)
        self.negate = predictor(NEGATE_WITH_VERB)

    def forward(self, sentence: str) -> dspy.Prediction:
        found = self.find_verb(sentence=sentence)
        return self.negate(sentence=sentence, verb=found.verb)


PROGRAMS = {
    "intent": ClassifyIntent,
    "intent_goal": GoalThenIntent,
    "count": CountObjects,
    "count_listed": ListThenCount,
    "negate": Negate,
    "negate_twostep": VerbThenNegate,
}


def examples(task: Any, records: Any) -> list[dspy.Example]:
    """DSPy examples of ``records`` for ``task`` (a :class:`bench.tasks.Task`)."""
    return [
        dspy.Example(**{task.input_name: task.to_input(r), task.answer_name: task.to_label(r)}).with_inputs(
            task.input_name
        )
        for r in records
    ]


def metric(task: Any) -> Any:
    """``metric(example, prediction, trace=None)`` scoring the final answer with the task's scorer."""

    def score(example: dspy.Example, prediction: Any, trace: Any = None, *args: Any) -> float:
        value = getattr(prediction, task.answer_name, None)
        return task.score(value, example[task.answer_name])

    return score
