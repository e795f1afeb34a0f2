"""Optimizing under trio.

aprompt is written on anyio, so the same ``await aprompt.optimize(...)`` runs in a trio program: its LM
client, limits, retries and task groups all follow trio's structured concurrency and cancellation. ``main``
has nothing trio-specific (it runs under asyncio too); ``run`` is the trio app around it: it bounds the whole
optimization with ``trio.move_on_after``, and a cancelled run stops cleanly, leaving no task behind.

Run it (needs trio: ``pip install trio``; the LM is ``OPENAI_BASE_URL`` + ``APROMPT_MODEL``, else the
embedded local model)::

    python docs/examples/trio_app.py [optimized_weeks.json]
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import trio

import aprompt

TRAINSET = [
    aprompt.Example(
        inputs={"question": f"How many days are there in {weeks} weeks?"}, labels={"days": 7 * weeks}
    )
    for weeks in range(1, 31)
]
BUDGET: Mapping[str, int] = {
    "n_candidates": 4,
    "n_trials": 8,
    "minibatch_size": 5,
    "max_bootstrapped_demos": 2,
}


class WeeksToDays:
    def __init__(self) -> None:
        self.solve = aprompt.ChainOfThought("question -> days: int")

    async def __call__(self, question: str) -> aprompt.Prediction:
        return await self.solve(question=question)


def right_days(example: aprompt.Example, prediction: aprompt.Prediction) -> bool:
    return bool(prediction.days == example.labels["days"])


def lm_from_environment() -> contextlib.AbstractAsyncContextManager[aprompt.OpenAICompatibleLM]:
    """``OPENAI_BASE_URL`` (+ ``APROMPT_MODEL``, key from ``OPENAI_API_KEY``), else the local model."""
    if os.environ.get("OPENAI_BASE_URL"):
        # The client reads $OPENAI_BASE_URL and $OPENAI_API_KEY itself.
        return aprompt.OpenAICompatibleLM(os.environ.get("APROMPT_MODEL", "gpt-4o-mini"))
    return aprompt.local_lm()


async def main(
    lm: aprompt.LM, out: str | os.PathLike[str], budget: Mapping[str, Any] = BUDGET
) -> aprompt.OptimizeResult[WeeksToDays]:
    """Optimize ``WeeksToDays`` and save the result to ``out``."""
    result = await aprompt.optimize(WeeksToDays(), TRAINSET, right_days, lm=lm, budget=budget, seed=0)
    result.save(out)
    print(f"validation score {result.baseline_score:.2f} -> {result.score:.2f}; saved to {out}")
    return result


async def run(out: str, limit: float = 600.0) -> None:
    async with lm_from_environment() as lm:
        with trio.move_on_after(limit) as scope:
            await main(lm, out)
    if scope.cancelled_caught:
        print(f"stopped after {limit:g} s; nothing was saved")


if __name__ == "__main__":
    trio.run(run, sys.argv[1] if len(sys.argv) > 1 else "optimized_weeks.json")
