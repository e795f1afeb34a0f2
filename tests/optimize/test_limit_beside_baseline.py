"""A limit reached by a step beside the baseline's evaluation never cancels that evaluation: the run
returns the baseline it paid for, whatever the LM's latency, instead of raising with nothing scored."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

import aprompt
from aprompt import Completion, Message
from aprompt.lm.types import canonical_params
from aprompt.testing._wire import ChatRequest
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

BUDGET = {
    "n_candidates": 3,
    "val_size": 16,
    "minibatch_size": 4,
    "n_trials": 12,
    "full_eval_every": 4,
    "max_bootstrapped_demos": 2,
    "max_labeled_demos": 2,
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class SlowValidationLM:
    """The world, answering the validation examples' second stage after ``delay`` seconds: the grounding
    and bootstrap steps beside the baseline spend the limit before the baseline's evaluation ends."""

    model = "world"

    def __init__(self, delay: float) -> None:
        self.world = World()
        self.delay = delay
        self.calls = 0

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion:
        self.calls += 1
        item = re.search(r"item-(\d+)", str(messages[-1]["content"]))
        if item and int(item.group(1)) >= 100 and "Output fields:\n- Answer" in str(messages[0]["content"]):
            await anyio.sleep(self.delay)
        request = ChatRequest(self.model, [dict(m) for m in messages], canonical_params(params), {})
        return Completion(self.world(request), model=self.model)


@pytest.mark.parametrize("strategy", ["mipro", "mipro_reflective"])
@pytest.mark.parametrize("delay", [0.0, 0.05])
async def test_a_limit_reached_while_grounding_returns_the_baseline_at_any_latency(
    strategy: str, delay: float
) -> None:
    lm = SlowValidationLM(delay)
    result = await aprompt.optimize(
        TwoStageProgram(),
        examples(0, 24),
        metric,
        valset=examples(100, 116),
        lm=lm,
        budget=BUDGET,
        seed=1,
        strategy=strategy,
        concurrency=32,
        limits=aprompt.Limits(max_lm_calls=40),
    )
    assert lm.calls <= 40 and result.stopped_by == "max_lm_calls"
    assert result.best_choice == result.candidates.baseline() and result.score == result.baseline_score
    # The pick says why, as every other result's does (before, it was None).
    assert result.pick is not None and result.pick.kept_baseline
    assert dict(result.pick.choice) == dict(result.best_choice)
    assert "max_lm_calls stopped the run before the search" in result.pick.reason
