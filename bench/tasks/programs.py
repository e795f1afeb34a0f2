"""The benchmark programs written with aprompt (their DSPy twins are in ``dspy_programs.py``)."""

from __future__ import annotations

import aprompt
from aprompt import Field, Signature
from bench.tasks.stages import (
    CLASSIFY_INTENT,
    CLASSIFY_WITH_GOAL,
    COUNT,
    COUNT_ITEMS,
    DESCRIBE_GOAL,
    FIND_VERB,
    LIST_ITEMS,
    NEGATE,
    NEGATE_WITH_VERB,
    Stage,
)


def signature(stage: Stage) -> Signature:
    return Signature(
        inputs=[Field(name, str, description) for name, description in stage.inputs],
        outputs=[Field(name, kind, description) for name, kind, description in stage.outputs],
        instruction=stage.instruction,
    )


def predictor(stage: Stage) -> aprompt.Predict:
    return aprompt.Predict(signature(stage), temperature=0.0, max_tokens=stage.max_tokens)


class ClassifyIntent:
    """One predictor: utterance -> intent."""

    def __init__(self) -> None:
        self.classify = predictor(CLASSIFY_INTENT)

    async def __call__(self, utterance: str) -> aprompt.Prediction:
        return await self.classify(utterance=utterance)


class GoalThenIntent:
    """Two stages: state the user's goal, then classify the utterance with it."""

    def __init__(self) -> None:
        self.describe_goal = predictor(DESCRIBE_GOAL)
        self.classify = predictor(CLASSIFY_WITH_GOAL)

    async def __call__(self, utterance: str) -> aprompt.Prediction:
        goal = await self.describe_goal(utterance=utterance)
        return await self.classify(utterance=utterance, goal=goal.goal)


class CountObjects:
    """One predictor: question -> answer (an integer)."""

    def __init__(self) -> None:
        self.count = predictor(COUNT)

    async def __call__(self, question: str) -> aprompt.Prediction:
        return await self.count(question=question)


class ListThenCount:
    """Two stages: list the objects asked about, then count the list."""

    def __init__(self) -> None:
        self.list_items = predictor(LIST_ITEMS)
        self.count = predictor(COUNT_ITEMS)

    async def __call__(self, question: str) -> aprompt.Prediction:
        listed = await self.list_items(question=question)
        return await self.count(question=question, objects=listed.objects)


class Negate:
    """One predictor: sentence -> negated."""

    def __init__(self) -> None:
        self.negate = predictor(NEGATE)

    async def __call__(self, sentence: str) -> aprompt.Prediction:
        return await self.negate(sentence=sentence)


class VerbThenNegate:
    """Two stages: find the main verb phrase, then negate the sentence with it."""

    def __init__(self) -> None:
        self.find_verb = predictor(FIND_VERB)
        self.negate = predictor(NEGATE_WITH_VERB)

    async def __call__(self, sentence: str) -> aprompt.Prediction:
        found = await self.find_verb(sentence=sentence)
        return await self.negate(sentence=sentence, verb=found.verb)
