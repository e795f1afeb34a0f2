"""Run budgets: each limit stops the run at the next safe point with the best program found so far.

A step is one batch of trials or one full evaluation. The run checks its limits between steps, so once a
limit is reached no other step starts: at most one step — the one in flight — ends past the limit, and
that step is the overshoot. Limits are set to be reached during the search of the simulated world (an
uninterrupted run: 761 LM calls, about 73,000 tokens, 12 trials in 6 batches).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt.lm.usage import UsageSnapshot
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import World
from tests.run._optimize_worker import BUDGET, optimize_world, summary, world_lm

pytestmark = pytest.mark.anyio

API_KEY = "sk-world-budgets"
PRICES = {"world": (1.0, 4.0)}  # per million input / output tokens


def cost(usage: UsageSnapshot) -> float:
    price_in, price_out = PRICES["world"]
    return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1e6


MEASURES: dict[str, Callable[[UsageSnapshot, float], float]] = {
    "max_lm_calls": lambda usage, seconds: usage.lm_calls,
    "max_tokens": lambda usage, seconds: usage.total_tokens,
    "max_cost": lambda usage, seconds: cost(usage),
    "max_time": lambda usage, seconds: seconds,
}


class StepLog:
    """What the run had spent at the end of each step (the event callback of a limited run)."""

    def __init__(self, lm: aprompt.OpenAICompatibleLM) -> None:
        self.lm = lm
        self.started = time.monotonic()
        self.ends: list[tuple[str, UsageSnapshot, float]] = []

    def __call__(self, event: aprompt.Event) -> None:
        if isinstance(event, aprompt.RunPlanned):
            self.started = time.monotonic()  # the run's own clock started a moment before
        elif isinstance(event, aprompt.TrialScored | aprompt.FullEvaluation):
            if isinstance(event, aprompt.TrialScored) and event.number % BUDGET["parallel_trials"]:
                self.ends.pop()  # a later trial of the same batch: the same step
            self.ends.append((type(event).__name__, self.lm.usage, time.monotonic() - self.started))


async def limited_run(
    run_dir: Path | None, latency: float = 0.0, **limits: Any
) -> tuple[aprompt.OptimizeResult, StepLog]:
    async with (
        FakeOpenAIServer(responder=World(), api_key=API_KEY, latency=latency) as server,
        world_lm(server.base_url, API_KEY) as lm,
    ):
        steps = StepLog(lm)
        result = await optimize_world(lm, run_dir, on_event=steps, **limits)
    return result, steps


def assert_best_so_far(result: aprompt.OptimizeResult) -> None:
    best = max(result.full_evals, key=lambda f: f.score)  # the first of equals, as the search keeps
    assert (result.score, dict(result.best_choice)) == (best.score, dict(best.choice))
    prompts = result.candidates.prompts_for(result.best_choice)
    for name, predictor in aprompt.named_predictors(result.program):
        assert (predictor.instruction, tuple(predictor.demos)) == (
            prompts[name].instruction,
            tuple(prompts[name].demos),
        )


@pytest.mark.parametrize(
    ("limit", "value", "latency"),
    [
        ("max_lm_calls", 300, 0.0),
        ("max_tokens", 30_000, 0.0),
        ("max_cost", 0.03, 0.0),
        ("max_time", 1.0, 0.02),  # 761 calls of 20 ms, 8 at a time: an uninterrupted run takes ~2 s
    ],
)
async def test_a_reached_limit_stops_the_run_after_the_step_in_flight_with_the_best_so_far(
    limit: str, value: float, latency: float
) -> None:
    options: dict[str, Any] = {limit: value, "prices": PRICES if limit == "max_cost" else None}
    result, steps = await limited_run(None, latency, **options)

    assert result.stopped_by == limit
    assert len(result.trials) < BUDGET["n_trials"]
    assert_best_so_far(result)
    measure = MEASURES[limit]
    spent = [measure(usage, seconds) for _, usage, seconds in steps.ends]
    past = [(step, round(s, 4)) for (step, _, _), s in zip(steps.ends, spent, strict=True) if s >= value]
    assert len(past) <= 1, f"steps ended past {limit}={value}: {past}"
    if limit != "max_time":  # the run's clock started before the log's
        assert spent[-1] >= value
    overshoot = spent[-1] - value
    step = spent[-1] - (spent[-2] if len(spent) > 1 else 0.0)
    print(
        f"\n{limit}={value}: stopped after {len(result.trials)} trials, overshoot {overshoot:.4g} "
        f"(last step {step:.4g})"
    )


async def test_a_run_stopped_by_a_limit_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    stopped, _ = await limited_run(tmp_path / "run", max_lm_calls=300)
    assert stopped.stopped_by == "max_lm_calls"
    resumed, _ = await limited_run(tmp_path / "run")
    uninterrupted, _ = await limited_run(None)
    assert resumed.stopped_by is None
    assert summary(resumed) == summary(uninterrupted)
