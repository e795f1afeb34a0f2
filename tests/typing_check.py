"""Checked by mypy (``tests/test_typing.py``), never run: the public API keeps the program's type.

Each ``assert_type`` is an error for mypy when the type it infers differs, so a return type that loses
the program's type (``OptimizeResult`` of ``Any`` or of ``object``) fails the test.
"""

from __future__ import annotations

from typing import assert_type

import aprompt


class QA:
    answer = aprompt.Predict("question -> answer")

    async def __call__(self, question: str) -> aprompt.Prediction:
        return await self.answer(question=question)


def exact(example: aprompt.Example, prediction: aprompt.Prediction) -> bool:
    return bool(prediction.answer == example.labels["answer"])


TRAINSET = [{"question": "2+2?", "answer": "4"}]


async def optimize_keeps_the_program_type(lm: aprompt.LM) -> None:
    result = await aprompt.optimize(QA(), TRAINSET, exact, lm=lm, input_fields=["question"])
    assert_type(result, aprompt.OptimizeResult[QA])
    assert_type(result.program, QA)


async def optimize_events_keeps_the_program_type(lm: aprompt.LM) -> None:
    async with aprompt.optimize_events(QA(), TRAINSET, exact, lm=lm, input_fields=["question"]) as events:
        async for _event in events:
            pass
    assert_type(events.result, aprompt.OptimizeResult[QA])
    assert_type(events.result.program, QA)


def optimize_sync_keeps_the_program_type(lm: aprompt.LM) -> None:
    result = aprompt.optimize_sync(QA(), TRAINSET, exact, lm=lm, input_fields=["question"])
    assert_type(result, aprompt.OptimizeResult[QA])
    assert_type(result.program, QA)


def load_returns_the_program_it_was_given() -> None:
    assert_type(aprompt.load(QA(), "optimized.json"), QA)
