"""Run budgets: each limit stops the run with the best program found so far, and is held.

A step is one batch of trials or one full evaluation (or the bootstrap, or the proposals). A step the
remaining budget cannot pay for is not started, and a request past a spent limit is refused (its step is
abandoned). So the requests sent never exceed ``max_lm_calls``; tokens and cost pass their limit by at
most what the requests in flight when it was reached cost (at most ``MAX_CONCURRENCY`` requests); and
``max_time`` cancels what is in flight at the deadline. Limits are set to be reached during the search of
the simulated world (an uninterrupted run: 761 requests, about 73,000 tokens, 12 trials in 6 batches).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt.lm.usage import UsageSnapshot
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, estimate_tokens
from tests.optimize.world import World
from tests.run._optimize_worker import BUDGET, MAX_CONCURRENCY, optimize_world, summary, world_lm

pytestmark = pytest.mark.anyio

API_KEY = "sk-world-budgets"
PRICES = {"world": (1.0, 4.0)}  # per million input / output tokens


def cost(usage: UsageSnapshot) -> float:
    price_in, price_out = PRICES["world"]
    return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1e6


class TokenWorld(World):
    """The World, noting the most tokens one request costs (as the fake server counts them)."""

    def __init__(self) -> None:
        super().__init__()
        self.most_tokens = 0

    def __call__(self, request: ChatRequest) -> str:
        text = super().__call__(request)
        tokens = estimate_tokens(request.prompt_text) + estimate_tokens(text)
        self.most_tokens = max(self.most_tokens, tokens)
        return text


async def limited_run(
    run_dir: Path | None, latency: float = 0.0, **options: Any
) -> tuple[aprompt.OptimizeResult, UsageSnapshot, float, int]:
    """The result, the client's usage, the seconds the call took, and the most tokens of one request."""
    world = TokenWorld()
    async with (
        FakeOpenAIServer(responder=world, api_key=API_KEY, latency=latency) as server,
        world_lm(server.base_url, API_KEY) as lm,
    ):
        started = time.monotonic()
        result = await optimize_world(lm, run_dir, **options)
        return result, lm.usage, time.monotonic() - started, world.most_tokens


def assert_best_so_far(result: aprompt.OptimizeResult) -> None:
    """The run returns the final pick over what it evaluated before the limit: a fully evaluated
    program, the baseline unless the paired evidence says another is better, and the program set to it."""
    pick = result.pick
    assert pick is not None and dict(pick.choice) == dict(result.best_choice)
    full = {tuple(sorted(f.choice.items())): f.score for f in result.full_evals}
    assert full[tuple(sorted(result.best_choice.items()))] == result.score
    if pick.kept_baseline:
        assert result.score == result.baseline_score
        assert dict(result.best_choice) == dict(result.candidates.baseline())
    else:
        assert pick.evidence is not None and pick.evidence.better()
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
        # Half the seconds an uninterrupted run takes on this machine (calls of 40 ms, 8 at a time).
        ("max_time", None, 0.04),
    ],
)
async def test_a_reached_limit_stops_the_run_within_the_limit_with_the_best_so_far(
    limit: str, value: float | None, latency: float
) -> None:
    whole_requests = None
    if value is None:
        # How fast the whole run goes depends on the machine: the limit is set from one measured here.
        whole, whole_usage, whole_seconds, _ = await limited_run(None, latency)
        assert whole.stopped_by is None
        value, whole_requests = whole_seconds / 2, whole_usage.requests
    fields: dict[str, Any] = {limit: value, "prices": PRICES if limit == "max_cost" else {}}
    result, usage, seconds, most_tokens = await limited_run(None, latency, limits=aprompt.Limits(**fields))

    assert result.stopped_by == limit
    if whole_requests is not None:
        assert usage.requests < whole_requests  # stopped before the run's end (maybe in its last races)
    else:
        assert len(result.trials) < BUDGET["n_trials"]
    assert_best_so_far(result)
    assert result.usage.requests == usage.requests  # the run's meter saw every request the client sent
    in_flight = MAX_CONCURRENCY * most_tokens
    spent, bound = {
        "max_lm_calls": (usage.requests, value),
        "max_tokens": (usage.total_tokens, value + in_flight),
        "max_cost": (cost(usage), value + in_flight * max(PRICES["world"]) / 1e6),
        "max_time": (seconds, value + 1.0),
    }[limit]
    assert spent <= bound
    if limit == "max_lm_calls":  # stopped because the next step (at most 80 requests) could not be paid
        assert spent > value - 80
    print(f"\n{limit}={value}: stopped after {len(result.trials)} trials, spent {spent:.4g}")


async def test_a_run_stopped_by_a_limit_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    stopped, *_ = await limited_run(tmp_path / "run", limits=aprompt.Limits(max_lm_calls=300))
    assert stopped.stopped_by == "max_lm_calls"
    # The limit stopped it, so called again without it the run says its result may differ; here it
    # does not.
    with pytest.warns(aprompt.InexactResumeWarning, match=r"raised: max_lm_calls=None \(was 300\)"):
        resumed, *_ = await limited_run(tmp_path / "run")
    uninterrupted, *_ = await limited_run(None)
    assert resumed.stopped_by is None
    assert summary(resumed) == summary(uninterrupted)
