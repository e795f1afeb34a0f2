"""Under a limit on calls, the runs the trials keep for a confirmation that turns out not to be needed go
to late races (:func:`~aprompt._optimize.search_end.late_races`), and their combinations can only take the
pick from the one settled before them by being the pick of all the evidence (``SearchLoop.decide``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt._optimize.confirmation import runs_kept_for_confirmation
from aprompt._optimize.final_pick import key_of
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import lm_for
from tests.optimize.world import TwoStageProgram, World, demo_items_of, examples, metric

pytestmark = pytest.mark.anyio

#: 30 validation examples: fewer than CONFIRMATION_KEPT_BELOW, so a capped run keeps a confirmation's runs.
BUDGET: Mapping[str, int] = {
    "n_candidates": 4,
    "val_size": 30,
    "n_trials": 8,
    "minibatch_size": 15,
    "full_eval_every": 4,
    "parallel_trials": 2,
}
TRAIN, VAL = examples(0, 60), examples(200, 230)
LATE = "no confirmation ran"


async def capped(
    seed: int, limit: int | None, *, max_time: float | None = None, **options: Any
) -> tuple[aprompt.OptimizeResult[Any], int]:
    """A run of the two-stage world program under ``max_lm_calls=limit`` (and ``max_time``), and the
    requests it sent."""
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server:
        async with lm_for(server) as lm:
            result = await aprompt.optimize(
                TwoStageProgram(),
                TRAIN,
                metric,
                valset=VAL,
                lm=lm,
                budget=dict(BUDGET),
                seed=seed,
                limits=aprompt.Limits(max_lm_calls=limit, max_time=max_time),
                **options,
            )
        return result, len(server.chat_requests)


def true_accuracy(result: aprompt.OptimizeResult[Any], choice: Mapping[str, int]) -> float:
    prompts = result.candidates.prompts_for(choice)
    return World.expected_accuracy(
        {name: prompts[name].instruction for name in prompts},
        {name: demo_items_of([d.to_dict() for d in prompts[name].demos]) for name in prompts},
    )


def kept_calls() -> int:
    """LM calls of the confirmation runs a capped run keeps (two stages: two requests a program run)."""
    return runs_kept_for_confirmation(TRAIN, VAL) * 2


class Timeline(logging.Handler):
    """The run's log messages and events, in the order they came."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[object] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(record.getMessage())

    def on_event(self, event: object) -> None:
        self.entries.append(event)

    def late_full_evaluations(self) -> list[Mapping[str, int]]:
        """The combinations fully evaluated after the late races were announced."""
        start = next(i for i, e in enumerate(self.entries) if isinstance(e, str) and LATE in e)
        return [e.choice for e in self.entries[start:] if isinstance(e, aprompt.FullEvaluation)]


async def timed(seed: int, limit: int) -> tuple[aprompt.OptimizeResult[Any], int, Timeline]:
    timeline = Timeline()
    logger = logging.getLogger("aprompt")
    level = logger.level
    logger.addHandler(timeline)
    logger.setLevel(logging.INFO)
    try:
        result, sent = await capped(seed, limit, on_event=timeline.on_event)
    finally:
        logger.removeHandler(timeline)
        logger.setLevel(level)
    return result, sent, timeline


async def test_a_confirmation_not_needed_leaves_its_runs_to_a_late_race_that_can_win() -> None:
    limit = 478
    result, sent, timeline = await timed(3, limit)
    assert result.stopped_by == "max_lm_calls" and sent <= limit and not result.confirmations
    # Before, the runs kept for the confirmation were left unspent: a run ended with more than them left.
    assert limit - sent < kept_calls()
    # The late race fully evaluated combinations after the pick was settled, and one of them is the pick
    # of all the evidence: it is returned.
    late = timeline.late_full_evaluations()
    assert late and key_of(result.best_choice) in {key_of(c) for c in late}
    assert true_accuracy(result, result.best_choice) > true_accuracy(result, result.candidates.baseline())


async def test_late_races_do_not_undo_a_settled_pick_by_being_weighed() -> None:
    result, _, timeline = await timed(14, 440)
    assert timeline.late_full_evaluations()
    assert result.pick is not None
    # Weighed with the late race's combination, every comparison is made at a stricter level, and the
    # pick of all the evidence is no longer the one settled before the race (another combination evaluated
    # before it): the settled pick stands, and says why.
    assert "raced after it was decided were not shown better" in result.pick.reason
    assert not result.pick.kept_baseline
    assert key_of(result.best_choice) != key_of(result.candidates.baseline())
    assert true_accuracy(result, result.best_choice) > true_accuracy(result, result.candidates.baseline())


async def test_a_resumed_run_replays_its_late_races(tmp_path: Path) -> None:
    first, sent = await capped(3, 478, run_dir=tmp_path)
    again, sent_again = await capped(3, 478, run_dir=tmp_path)
    assert sent > 0 and sent_again == 0  # every step, the late races' included, read back
    assert dict(again.best_choice) == dict(first.best_choice)
    assert [dict(f.choice) for f in again.full_evals] == [dict(f.choice) for f in first.full_evals]
    assert again.pick is not None and first.pick is not None and again.pick.reason == first.pick.reason


async def test_a_limit_above_the_plan_changes_nothing_beside_max_time() -> None:
    # Under max_time the late race's allowance was raised back to a full evaluation's, past what the
    # plan had left: a generous call limit beside max_time then spent more calls (437 against 427) and
    # could return another program.
    alone, sent_alone = await capped(3, None, max_time=100_000)
    both, sent_both = await capped(3, 100_000, max_time=100_000)
    assert sent_both == sent_alone
    assert [dict(f.choice) for f in both.full_evals] == [dict(f.choice) for f in alone.full_evals]
    assert dict(both.best_choice) == dict(alone.best_choice)


class Interrupted(Exception):
    """Raised from ``on_event`` to stop a run as a kill would."""


async def test_a_run_resumed_with_no_call_lost_admits_what_the_uninterrupted_run_did(tmp_path: Path) -> None:
    # Stopped before its trials (event 24, the baseline's full evaluation: nothing in flight), the
    # resumed run reads its first steps back at once, so its trials run beside each other at another
    # pace. Admissions counted what a trial in flight had already spent past its estimate: the resumed
    # run admitted 3 trials where the uninterrupted one admitted 2, and spent differently.
    whole, _ = await capped(14, 460, run_dir=tmp_path / "whole")
    seen = 0

    def stop_at_24(event: object) -> None:
        nonlocal seen
        seen += 1
        if seen == 24:
            raise Interrupted

    with pytest.raises(Interrupted):
        await capped(14, 460, run_dir=tmp_path / "resumed", on_event=stop_at_24)
    resumed, _ = await capped(14, 460, run_dir=tmp_path / "resumed")
    assert resumed.spent["lm_calls"] == whole.spent["lm_calls"]
    assert [t.number for t in resumed.trials] == [t.number for t in whole.trials]
    assert [dict(f.choice) for f in resumed.full_evals] == [dict(f.choice) for f in whole.full_evals]
    assert dict(resumed.best_choice) == dict(whole.best_choice)
