"""A limit the run cannot reach decides nothing, and one it might reach never ends the run for a step it
could have gone without.

A periodic race beside the trials was admitted counting the runs of the trials that may start beside it,
and those runs stayed committed with it while each trial committed its own again: late in the search a
race's last full evaluation was refused with several hundred calls of the limit unspent, and the
refusal stopped the run. Its best combination had no full evaluation yet, so every run under a limit
somewhat above what it needed returned the unoptimized program (light plan, simulated world, limits of
3,000 to 4,000 calls against ~2,600 spent: 130 runs of 130). And under any limit, however high, the
periodic points raced alone where an unlimited run keeps their runs for a race of several later.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

import aprompt
from aprompt._optimize.final_pick import key_of
from aprompt.lm._limit_reached import BudgetKept
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import lm_for
from tests.optimize.test_pipeline import limited_context
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

#: Eight trials in flight beside each periodic race: enough to crowd a race's last step under a limit.
BUDGET: Mapping[str, int] = {
    "n_candidates": 4,
    "val_size": 40,
    "n_trials": 24,
    "minibatch_size": 10,
    "full_eval_every": 6,
    "parallel_trials": 8,
}


async def run(
    limit: int | None, seed: int = 0, max_time: float | None = None, **options: Any
) -> tuple[aprompt.OptimizeResult[Any], int]:
    """A run of the two-stage world program under ``max_lm_calls=limit`` (and ``max_time``), and the
    requests it sent."""
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server:
        async with lm_for(server) as lm:
            result = await aprompt.optimize(
                TwoStageProgram(),
                examples(0, 200),
                metric,
                valset=examples(200, 240),
                lm=lm,
                budget=dict(BUDGET),
                seed=seed,
                limits=aprompt.Limits(max_lm_calls=limit, max_time=max_time),
                **options,
            )
        return result, len(server.chat_requests)


def shape(result: aprompt.OptimizeResult[Any]) -> tuple[Any, ...]:
    return (
        dict(result.best_choice),
        [(f.after_trial, dict(f.choice)) for f in result.full_evals],
        [t.number for t in result.trials],
    )


async def test_a_limit_far_above_what_the_run_needs_returns_what_the_unlimited_run_returns() -> None:
    unlimited, sent = await run(None)
    limited, sent_limited = await run(2 * sent)
    assert limited.stopped_by is None
    assert shape(limited) == shape(unlimited)
    assert sent_limited == sent


async def test_a_time_limit_far_above_what_the_run_takes_returns_what_the_unlimited_run_returns() -> None:
    # The run takes a few seconds: at its pace, an hour pays for the rest of the plan at every point.
    unlimited, sent = await run(None)
    limited, sent_limited = await run(None, max_time=3600)
    assert limited.stopped_by is None
    assert shape(limited) == shape(unlimited)
    assert sent_limited == sent


async def test_a_step_refused_beside_the_trials_ends_the_trials_not_the_run() -> None:
    unlimited, sent = await run(None)
    assert sent < 800
    # Above what the unlimited run spends, below what its plan counts before caching: the limit keeps
    # runs for the last race, and a periodic race's last full evaluation, beside eight trials, is refused
    # (at 1,000 calls it stopped the run after 589 and returned the unoptimized program).
    for limit in (1000, 1050):
        limited, sent_limited = await run(limit)
        assert sent - 50 <= sent_limited <= limit  # the budget went to the last race
        assert limited.pick is not None and not limited.pick.kept_baseline
        assert key_of(limited.best_choice) != key_of(limited.candidates.baseline())
        # The returned program has a full evaluation, as every program a run returns.
        assert key_of(limited.best_choice) in {key_of(f.choice) for f in limited.full_evals}
        assert limited.score >= unlimited.score - 0.05


class Interrupted(Exception):
    """Raised from ``on_event`` to stop a run as a kill would."""


async def test_a_run_whose_race_step_was_refused_beside_the_trials_resumes_to_the_same_result(
    tmp_path: Path,
) -> None:
    whole, _ = await run(1000, run_dir=tmp_path / "whole")
    again, sent_again = await run(1000, run_dir=tmp_path / "whole")
    assert sent_again == 0  # every step read back, the refusal that ended the trials included
    assert shape(again) == shape(whole)
    seen = 0

    def stop_late(event: object) -> None:
        nonlocal seen
        seen += 1
        if seen == 47:  # a trial after the second periodic point, before the refusal
            raise Interrupted

    with pytest.raises(Interrupted):
        await run(1000, run_dir=tmp_path / "resumed", on_event=stop_late)
    resumed, _ = await run(1000, run_dir=tmp_path / "resumed")
    assert shape(resumed) == shape(whole)
    # The requests in flight at the stop are sent again (counted twice): the limit still holds.
    assert whole.spent["lm_calls"] <= resumed.spent["lm_calls"] <= 1000


async def test_an_evaluation_step_is_judged_with_the_trials_beside_it_but_commits_only_its_own_runs(
    tmp_path: Path,
) -> None:
    ctx = attrs.evolve(limited_context(100), journal=RunJournal.open(tmp_path / "journal.sqlite3"))
    ctx.admit_step("trial 0", [("trial", "0", 40)])  # in flight: 40 runs, at one call a run so far
    # A rung of 10 beside the trial, with room for 30 runs of trials that may start beside it: 80 of 100.
    ctx.admit_evaluation_step("a rung", [("race", "r:0", 10)], 30)
    # Its room for the trials is not committed with it: a trial of 50 runs fits (40 + 10 + 50).
    ctx.admit_step("trial 1", [("trial", "1", 50)])
    # A full evaluation the budget cannot pay for beside them ends the trials, not the run.
    with pytest.raises(BudgetKept, match="cannot pay for a full evaluation beside the steps in flight"):
        ctx.admit_evaluation_step("a full evaluation", [("full_eval", "f:0", 20)], 30)
    assert ctx.stopped_by is None
    # Journaled as a refusal that kept the budget: a resumed run under the same limit ends its trials
    # there too, and does not stop.
    again = attrs.evolve(limited_context(100), journal=ctx.journal)
    with pytest.raises(BudgetKept):
        again.admit_evaluation_step("a full evaluation", [("full_eval", "f:0", 20)], 30)
    assert again.stopped_by is None
