"""The predictors of the benchmark programs, as plain text both libraries build from: one instruction,
the input and output fields with their descriptions, and a completion budget per stage.

aprompt and DSPy get identical instructions, field names, types and descriptions; only each library's
own prompt format differs.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

INTENTS = (
    "add_to_playlist",
    "book_restaurant",
    "get_weather",
    "play_music",
    "search_screening_event",
    "search_creative_work",
    "rate_book",
)
Intent = Literal[INTENTS]  # type: ignore[valid-type]

#: Extra completion tokens for DSPy's ``[[ ## field ## ]]`` and ``[[ ## completed ## ]]`` markers.
DSPY_MARKER_TOKENS = 24


@attrs.frozen
class Stage:
    """One predictor: ``name`` is its attribute on the program."""

    name: str
    instruction: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, Any, str], ...]
    max_tokens: int

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.outputs)


UTTERANCE = ("utterance", "what the user said to a voice assistant")
QUESTION = ("question", "a list of things someone has, and a question about how many of a kind")
SENTENCE = ("sentence", "a short English sentence")
VERB = ("verb", "the main verb phrase of the sentence")
NEGATED = ("negated", str, "the sentence, negated")
NEGATE_INSTRUCTION = "Rewrite the sentence so that it says the opposite: negate its verb."

CLASSIFY_INTENT = Stage(
    "classify",
    "Classify the user's request to a voice assistant into one of the intents.",
    (UTTERANCE,),
    (("intent", Intent, "the intent of the request"),),
    max_tokens=16,
)
DESCRIBE_GOAL = Stage(
    "describe_goal",
    "Say in a few words what the user wants the voice assistant to do.",
    (UTTERANCE,),
    (("goal", str, "the user's goal in a few words"),),
    max_tokens=24,
)
CLASSIFY_WITH_GOAL = Stage(
    "classify",
    "Classify the user's request to a voice assistant into one of the intents, using the stated goal.",
    (UTTERANCE, ("goal", "the user's goal in a few words")),
    (("intent", Intent, "the intent of the request"),),
    max_tokens=16,
)
COUNT = Stage(
    "count",
    "Count the objects the question asks about. Reply with the number only.",
    (QUESTION,),
    (("answer", int, "how many there are"),),
    max_tokens=16,
)
LIST_ITEMS = Stage(
    "list_items",
    "List every object the question asks about, separated by commas; repeat an object as often as "
    "the question has it.",
    (QUESTION,),
    (("objects", str, "the objects asked about, separated by commas"),),
    max_tokens=64,
)
COUNT_ITEMS = Stage(
    "count",
    "Count the objects in the list. Reply with the number only.",
    (QUESTION, ("objects", "the objects asked about, separated by commas")),
    (("answer", int, "how many there are"),),
    max_tokens=16,
)
NEGATE = Stage("negate", NEGATE_INSTRUCTION, (SENTENCE,), (NEGATED,), max_tokens=32)
FIND_VERB = Stage(
    "find_verb",
    "Find the main verb phrase of the sentence.",
    (SENTENCE,),
    ((VERB[0], str, VERB[1]),),
    max_tokens=16,
)
NEGATE_WITH_VERB = Stage("negate", NEGATE_INSTRUCTION, (SENTENCE, VERB), (NEGATED,), max_tokens=32)
