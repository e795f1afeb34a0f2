"""Small tasks for the optimizer's unit tests, served by a real loopback fake server.

``QAProgram`` is a one-predictor program; :func:`answers` is a responder for it that gets item ``N`` right
unless ``N`` is a multiple of 3. :func:`optimize_in_world` runs a whole, small optimization in the
simulated two-stage world of :mod:`tests.optimize.world`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import aprompt
from aprompt import Example, OpenAICompatibleLM, Predict, Prediction
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, RecordedRequest
from tests.conftest import TEST_API_KEY
from tests.optimize.world import TwoStageProgram, World, examples, metric

ORIGINAL_INSTRUCTION = "Answer the question."

#: A world run small enough for a unit test (well under a second): 6 trials on 30 validation examples.
#: No proposal screen: the world's proposals ("Solve it carefully, variant K") share no word with the task,
#: so a 5-example screen would drop by chance those that lose one example to the original, and these
#: tests are about the search over a known grid (the screen: tests/optimize/test_candidate_filter.py).
SMALL_BUDGET: Mapping[str, int] = {
    "n_candidates": 4,
    "val_size": 30,
    "n_trials": 6,
    "minibatch_size": 10,
    "parallel_trials": 2,
    "screen_size": 0,
}


class QAProgram:
    """One predictor: question -> answer."""

    def __init__(self) -> None:
        self.answer = Predict("question -> answer", instruction=ORIGINAL_INSTRUCTION)

    async def __call__(self, question: str) -> Prediction:
        return await self.answer(question=question)


def qa_examples(start: int, stop: int) -> list[Example]:
    """Items ``start..stop-1``, with ids ``q<N>`` and an extra label no predictor has."""
    return [
        Example(
            inputs={"question": f"What is the answer for item-{i}?"},
            labels={"answer": f"ans-{i}", "note": f"note-{i}"},
            id=f"q{i}",
        )
        for i in range(start, stop)
    ]


def exact_match(example: Example, prediction: Any) -> bool:
    return str(prediction.answer).strip() == example.labels["answer"]


def item_of(text: str) -> int:
    """The item number in a question (the first ``item-N``)."""
    found = re.search(r"item-(\d+)", text)
    assert found is not None, text
    return int(found.group(1))


def answers(request: ChatRequest) -> str:
    """Right for item N unless N is a multiple of 3."""
    item = item_of(request.last_user)
    return "Answer: wrong" if item % 3 == 0 else f"Answer: ans-{item}"


def lm_for(server: FakeOpenAIServer, **options: Any) -> OpenAICompatibleLM:
    """A client of ``server`` (use it as an async context manager)."""
    return OpenAICompatibleLM("fake-model", server.base_url, api_key=TEST_API_KEY, **options)


def messages_of(record: RecordedRequest) -> list[dict[str, Any]]:
    assert record.body is not None
    messages: list[dict[str, Any]] = record.body["messages"]
    return messages


def system_of(record: RecordedRequest) -> str:
    return str(messages_of(record)[0]["content"])


def last_user_of(record: RecordedRequest) -> str:
    users = [m for m in messages_of(record) if m["role"] == "user"]
    return str(users[-1]["content"])


def is_proposal(record: RecordedRequest) -> bool:
    return system_of(record).startswith("You write instructions")


def is_program_call(record: RecordedRequest) -> bool:
    """A call of one of the world program's two predictors (not a proposal or summary)."""
    return "Output fields:\n- Code" in system_of(record) or "Output fields:\n- Answer" in system_of(record)


#: The phases of a mipro run in the world, sorted: its answer stage has labeled demos (set 1), so the
#: hand-written prompt ("reference") is evaluated too.
WORLD_PHASES = ["baseline", "bootstrap", "grounding", "propose", "reference", "search", "warmup"]


async def optimize_in_world(
    strategy: str = "mipro",
    *,
    seed: int = 1,
    budget: Mapping[str, Any] = SMALL_BUDGET,
    program: object | None = None,
    lm_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[aprompt.OptimizeResult, list[RecordedRequest]]:
    """Optimize the world's two-stage program; returns the result and every chat request made
    (``lm_options`` go to the client, e.g. a disabled cache)."""
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        lm_for(server, **(lm_options or {})) as lm,
    ):
        result = await aprompt.optimize(
            program if program is not None else TwoStageProgram(),
            examples(0, 60),
            metric,
            valset=examples(200, 230),
            lm=lm,
            strategy=strategy,
            budget=budget,
            seed=seed,
            **options,
        )
        return result, server.chat_requests
