"""Multi-fidelity evaluation (aprompt/_optimize/racing.py): races and trials stopped early, in the world
of tests/optimize/world.py served by the fake OpenAI-compatible server."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import aprompt
from aprompt import OpenAICompatibleLM, ResponseCache
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.events import FullEvaluation
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import key_of
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard
from aprompt._optimize.racing import (
    TIME_MARGIN,
    affordable,
    final_races,
    plan_left,
    race_order,
    racers_affordable,
    run_race,
    rung_increments,
    rung_sizes,
    within_time,
)
from aprompt._optimize.search import SearchLoop
from aprompt._optimize.trial_window import _waits, _with_reserve
from aprompt.lm._limit_reached import LimitReached
from aprompt.program.discovery import named_predictors
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import FakeOpenAIServer, RecordedRequest, Responder
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import item_of, last_user_of, lm_for, system_of
from tests.optimize.test_pipeline import limited_context
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

#: Per stage: the instruction of index 0 (the program's own here) is as good as index 2 (quality +0.30
#: in the world: variants 3 and 10), index 1 is poor (variant 1: −0.05).
INSTRUCTIONS = (
    "Solve it carefully, variant 3.",
    "Solve it carefully, variant 1.",
    "Solve it carefully, variant 10.",
    "Solve it carefully, variant 17.",
    "Solve it carefully, variant 24.",
    "Solve it carefully, variant 31.",
    "Solve it carefully, variant 38.",
)
GOOD = {"extract.instruction": 2, "answer.instruction": 2}
POOR = {"extract.instruction": 1, "answer.instruction": 1}
#: As good as ``GOOD`` (variants 17, 24, 31, 38: +0.30), each with prompts of its own.
ALSO_GOOD = {"extract.instruction": 3, "answer.instruction": 3}
AS_GOOD = [{"extract.instruction": k, "answer.instruction": k} for k in range(2, 7)]
#: Every answer takes this long in the tests of what is in flight together: long beside the event loop's
#: own delays, so a step that waited for another would arrive a whole latency later.
LATENCY = 0.2
#: Mini-batches of a first stage of 12 examples; a period of 4 trials; seed 0 stops trials early.
BUDGET: Mapping[str, Any] = {
    "n_candidates": 4,
    "val_size": 60,
    "n_trials": 12,
    "minibatch_size": 30,
    "full_eval_every": 4,
    "parallel_trials": 2,
    "screen_size": 0,
}
#: A seed whose run has trials stopped early (the replay tests cover them).
STOPS_EARLY = 4


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def search_loop(
    racing: bool,
    minibatch_size: int = 50,
    latency: float = 0.0,
    answer: Responder | None = None,
    go_ahead: bool = False,
    baseline: bool = True,
) -> AsyncIterator[tuple[SearchLoop, FakeOpenAIServer]]:
    """A search over the instructions above, on 100 validation examples, its baseline evaluated (no LM
    cache: every call is a request the server logs); ``answer`` answers instead of the world; with
    ``go_ahead``, a race's next step may start running ahead."""
    program = TwoStageProgram()
    predictors = named_predictors(program)
    candidates = Candidates.original(predictors)
    candidates = Candidates(
        predictors=candidates.predictors,
        instructions={name: INSTRUCTIONS for name in candidates.predictors},
        demo_sets=candidates.demo_sets,
        search_demos=False,
    )
    async with FakeOpenAIServer(responder=answer or World(), api_key=TEST_API_KEY, latency=latency) as server:
        async with lm_for(server, max_concurrency=64) as lm:

            async def ignore(event: object) -> None:
                return None

            loop = SearchLoop(
                program=program,
                candidates=candidates,
                valset=examples(200, 300),
                metric=metric,
                emit=ignore,
                n_trials=8,
                minibatch_size=minibatch_size,
                lm=lm,
                racing=racing,
                outage=OutageGuard.for_program(predictors, lm, DEFAULT_OUTAGE_POLICY),
                go_ahead=go_ahead,
            )
            if baseline:
                await loop.full_evaluation(candidates.baseline(), is_baseline=True)
            yield loop, server


async def test_a_trial_clearly_losing_to_the_pick_stops_after_its_first_stage() -> None:
    async with search_loop(racing=True) as (loop, server):
        before = len(server.chat_requests)
        trial = await loop.single_trial(0, dict(POOR))
        requests = len(server.chat_requests) - before
    assert trial.stopped_early
    assert len(trial.example_ids) == 20 and len(trial.scores) == 20  # 40 % of the 50-example mini-batch
    assert trial.score == sum(trial.scores.values()) / 20
    assert requests == 2 * 20  # two stages per program run, the second half never sent
    async with search_loop(racing=False) as (loop, server):
        before = len(server.chat_requests)
        plain = await loop.single_trial(0, dict(POOR))
        assert len(server.chat_requests) - before == 2 * 50
    assert not plain.stopped_early and len(plain.example_ids) == 50


async def test_a_trial_as_good_as_the_pick_runs_its_whole_mini_batch() -> None:
    async with search_loop(racing=True) as (loop, _):
        trial = await loop.single_trial(0, dict(GOOD))
    assert not trial.stopped_early and len(trial.example_ids) == 50


async def test_a_race_drops_a_clearly_worse_combination_before_the_full_validation_set() -> None:
    async with search_loop(racing=True) as (loop, _):
        n = len(loop.valset)
        spent = await run_race(loop, [dict(POOR), dict(GOOD)], allowance=2 * n)
        poor_examples = len(loop.scores_of(POOR))
        fully_evaluated = [dict(f.choice) for f in loop.full_evals[1:]]
        outcome = await loop.run_outcome()
    assert poor_examples < n  # dropped after a rung: never run on the rest of the valset
    assert fully_evaluated == [GOOD]
    assert spent == poor_examples + n <= 2 * n
    # The rungs are evidence for the pick, and are reported with the outcome.
    assert {tuple(sorted(r.choice.items())) for r in outcome.rungs} == {
        tuple(sorted(POOR.items())),
        tuple(sorted(GOOD.items())),
    }


async def test_a_periodic_race_of_one_waits_for_a_later_race_only_where_no_limit_can_stop_the_run() -> None:
    # go_ahead: no limit at all; else the budget left pays for (far) more, or less, than the plan's rest.
    for go_ahead, budget_runs, waits in ((True, None, True), (False, 10**6, True), (False, 150, False)):
        async with search_loop(racing=True, go_ahead=go_ahead) as (loop, _):
            loop.runs_affordable = lambda runs=budget_runs: runs
            n = len(loop.valset)
            assert plan_left(loop) > 150  # 8 trials of 50 and two more full evaluations to come
            one = sum(racers_increments(loop, GOOD))
            # One racer's halving plan (a quarter, a quarter more, then the other half) is all it pays.
            assert racers_affordable(loop, [GOOD, ALSO_GOOD], one) == 1
            assert racers_affordable(loop, [GOOD, ALSO_GOOD], 2 * n) == 2
            assert _waits(loop, [GOOD, ALSO_GOOD], one, 4) is waits
            assert not _waits(loop, [GOOD, ALSO_GOOD], 2 * n, 4)
            # A lone entrant races alone: no later race would have more to choose from.
            assert not _waits(loop, [GOOD], one, 4)


def racers_increments(loop: SearchLoop, choice: Mapping[str, int]) -> list[int]:
    order = race_order(loop.valset, loop.seed)
    return rung_increments(order, rung_sizes(len(loop.valset)), 0, loop.scores_of(choice))


async def test_without_limits_a_periodic_points_runs_go_to_a_later_race_within_the_plan() -> None:
    seed = 3
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server:
        unlimited = await optimize(server, None, seed=seed)
        unlimited_requests = len(server.chat_requests)
        server.reset_records()
        # A limit the run cannot reach decides nothing: the same races, the same program.
        far = await optimize(server, None, seed=seed, limits=aprompt.Limits(max_lm_calls=10**6))
        assert len(server.chat_requests) == unlimited_requests
        server.reset_records()
        near = await optimize(server, None, seed=seed, limits=aprompt.Limits(max_lm_calls=unlimited_requests))
    periodic = BUDGET["full_eval_every"] * 2
    # Under a limit that could stop the run, the point after 8 trials spends its runs on a race there...
    assert any(f.after_trial == periodic for f in near.full_evals)
    # ... without one, those runs wait for the final race, which takes more racers.
    assert not any(0 < f.after_trial < BUDGET["n_trials"] for f in unlimited.full_evals)
    assert summary(far) == summary(unlimited)


def requests_of(server: FakeOpenAIServer, choice: Mapping[str, int]) -> list[RecordedRequest]:
    """The requests made with ``choice``'s prompts (each of its instructions names a variant of its own)."""
    text = INSTRUCTIONS[choice["extract.instruction"]]
    return [r for r in server.chat_requests if system_of(r).startswith(text)]


def items_of(valset: Sequence[Example]) -> set[int]:
    return {item_of(e.inputs["question"]) for e in valset}


async def test_a_rungs_racers_are_in_flight_together_and_recorded_in_their_order() -> None:
    async with search_loop(racing=True, latency=LATENCY) as (loop, server):
        n = len(loop.valset)
        await run_race(loop, [dict(GOOD), dict(ALSO_GOOD)], allowance=2 * n)
        order = race_order(loop.valset, loop.seed)
        sizes = rung_sizes(n)
        requests = {key_of(c): requests_of(server, c) for c in (GOOD, ALSO_GOOD)}
    first_rung = items_of(order[: sizes[0]])
    rung = {
        key: [r for r in found if item_of(last_user_of(r)) in first_rung] for key, found in requests.items()
    }
    assert all(rung.values())
    # Each racer's first request arrived before any answer of the rung: neither waited for the other.
    assert max(min(r.started for r in found) for found in rung.values()) < min(
        r.finished for found in rung.values() for r in found
    )
    assert [(r.rung, dict(r.choice)) for r in loop.rungs[:2]] == [(0, GOOD), (0, ALSO_GOOD)]


async def test_the_last_rungs_full_evaluations_are_in_flight_together() -> None:
    async with search_loop(racing=True, latency=LATENCY) as (loop, server):
        n = len(loop.valset)
        # Five racers: three go on to the second rung, two to the last (successive halving).
        await run_race(loop, AS_GOOD, allowance=4 * n)
        order = race_order(loop.valset, loop.seed)
        fully_evaluated = [dict(f.choice) for f in loop.full_evals[1:]]
        requests = [requests_of(server, c) for c in fully_evaluated]
    last_rung = items_of(order[rung_sizes(n)[-2] :])  # examples no earlier rung ran
    full = [[r for r in found if item_of(last_user_of(r)) in last_rung] for found in requests]
    assert len(fully_evaluated) == 2 and all(full)
    # Each one's first request arrived before any answer of the two: neither waited for the other.
    assert max(min(r.started for r in found) for found in full) < min(
        r.finished for found in full for r in found
    )


def race_records(loop: SearchLoop) -> tuple[Any, ...]:
    return (
        [(r.race, r.rung, dict(r.choice), r.example_ids, r.scores) for r in loop.rungs],
        [(dict(f.choice), f.scores, f.reused) for f in loop.full_evals],
    )


async def test_a_race_stopped_during_its_full_evaluations_resumes_to_the_same_records(tmp_path: Path) -> None:
    @asynccontextmanager
    async def journaled(name: str) -> AsyncIterator[tuple[SearchLoop, FakeOpenAIServer]]:
        """The search loop of :func:`search_loop`, its steps journaled in ``tmp_path / name``."""
        ctx = attrs.evolve(limited_context(10**6), journal=RunJournal.open(tmp_path / name))
        assert ctx.journal is not None
        try:
            async with search_loop(racing=True) as (loop, server):
                loop.memo = ctx.memo
                yield loop, server
        finally:
            ctx.journal.close()

    async def race(loop: SearchLoop, server: FakeOpenAIServer) -> int:
        """Run the race of the five as-good combinations; returns the requests it sent."""
        before = len(server.chat_requests)
        await run_race(loop, AS_GOOD, allowance=4 * len(loop.valset))
        return len(server.chat_requests) - before

    async with journaled("reference") as (loop, server):
        sent = await race(loop, server)
        reference = race_records(loop)
    assert len(reference[1]) == 3, "two full evaluations at once, after the baseline's"
    async with journaled("run") as (loop, server):
        with anyio.CancelScope() as scope:

            async def stop_at_the_first(event: object) -> None:
                if isinstance(event, FullEvaluation):
                    scope.cancel()

            loop.emit = stop_at_the_first
            await race(loop, server)
        assert scope.cancelled_caught and len(loop.full_evals) == 2
    async with journaled("run") as (loop, server):
        resumed = await race(loop, server)
        assert race_records(loop) == reference
    assert resumed < sent  # the rungs and the first full evaluation were read back


async def test_full_evaluations_at_once_are_admitted_counting_those_admitted_before_them() -> None:
    # No program run measured yet: a run is estimated at one call, a full evaluation at 100.
    ctx = limited_context(150)
    async with search_loop(racing=True) as (loop, server):
        loop.admit_step, loop.memo = ctx.admit_step, ctx.memo
        before = len(server.chat_requests)
        with pytest.raises(LimitReached, match="cannot pay for a full evaluation"):
            await loop.full_evaluations([dict(GOOD), dict(ALSO_GOOD)])
        sent = server.chat_requests[before:]
        fully_evaluated = [dict(f.choice) for f in loop.full_evals[1:]]
    # The first was admitted, evaluated and recorded; the second, refused, sent nothing.
    assert fully_evaluated == [GOOD]
    assert sent and not any(system_of(r).startswith(INSTRUCTIONS[3]) for r in sent)


async def test_full_evaluations_at_once_count_a_forks_reserve_once() -> None:
    # An evaluation beside the trials keeps a reserve of program runs for them (50 here) at each
    # admission: two full evaluations of 100 runs and the reserve make 250.
    ctx = limited_context(250)
    async with search_loop(racing=True) as (loop, _):
        loop.admit_step, loop.memo = partial(_with_reserve, ctx.admit_step, 50), ctx.memo
        await loop.full_evaluations([dict(GOOD), dict(ALSO_GOOD)])
        fully_evaluated = [dict(f.choice) for f in loop.full_evals[1:]]
    assert fully_evaluated == [GOOD, ALSO_GOOD]


def test_a_rung_takes_the_racers_whose_halving_plan_the_allowance_pays_for() -> None:
    # Three rungs of 25 examples' increments each: 4 racers cost 4·25 + 2·25 + 1·50 = 200 runs.
    unseen = [25, 25, 50]
    assert affordable([unseen] * 6, 200) == 4
    assert affordable([unseen] * 6, 199) == 3
    assert affordable([unseen] * 6, 99) == 0  # not even one can be completed
    # Examples a racer already has cost nothing.
    assert affordable([[0, 0, 10]] * 3, 10) == 3


async def optimize(
    server: FakeOpenAIServer, cache_dir: Path | None, **options: Any
) -> aprompt.OptimizeResult:
    racing = options.pop("racing", True)
    cache = ResponseCache.in_directory(cache_dir) if cache_dir is not None else None
    if cache is None and options.get("run_dir") is None:
        cache = ResponseCache.disabled()  # no cache at all: a run would answer repeats from memory
    async with OpenAICompatibleLM(
        "world", server.base_url, api_key=TEST_API_KEY, cache=cache, max_concurrency=64
    ) as lm:
        return await aprompt.optimize(
            TwoStageProgram(),
            examples(0, 80),
            metric,
            valset=examples(200, 260),
            lm=lm,
            budget={**BUDGET, "racing": racing},
            seed=options.pop("seed", 0),
            **options,
        )


def summary(result: aprompt.OptimizeResult) -> tuple[Any, ...]:
    return (
        dict(result.best_choice),
        result.score,
        [(t.number, dict(t.choice), t.score, t.example_ids, t.stopped_early) for t in result.trials],
        [(dict(f.choice), f.scores, f.reused) for f in result.full_evals],
        result.candidates.describe(),
    )


async def test_racing_sends_no_more_requests_than_the_plain_schedule() -> None:
    # Without a response cache, where the plain schedule sends what the plan counts. (With one, the plain
    # schedule's repeats of examples are free: racing then stays within the plan, not within the plain run.)
    for seed in (3, 4):
        async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server:
            plain = await optimize(server, None, racing=False, seed=seed)
            plain_requests = len(server.chat_requests)
            server.reset_records()
            raced = await optimize(server, None, seed=seed)
            raced_requests = len(server.chat_requests)
        assert raced_requests <= plain_requests, (seed, raced_requests, plain_requests)
        assert not any(t.stopped_early for t in plain.trials)
        # Racing changed the run: its full evaluations reused what the trials and rungs had scored.
        assert any(f.reused for f in raced.full_evals) and not any(f.reused for f in plain.full_evals)


async def test_same_seed_and_warm_cache_repeat_a_racing_run_with_no_new_requests(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server:
        first = await optimize(server, tmp_path / "cache", seed=STOPS_EARLY)
        sent = len(server.chat_requests)
        second = await optimize(server, tmp_path / "cache", seed=STOPS_EARLY)
        assert len(server.chat_requests) == sent
    assert any(t.stopped_early for t in first.trials)
    assert summary(second) == summary(first)


@pytest.mark.parametrize("stop_at_share", [0.4, 0.7, 0.9])
async def test_an_interrupted_racing_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, stop_at_share: float
) -> None:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server:
        events: list[aprompt.Event] = []
        reference = await optimize(
            server, None, run_dir=tmp_path / "reference", on_event=events.append, seed=STOPS_EARLY
        )
        stop_after = max(1, int(stop_at_share * (len(events) - 1)))
        seen = 0
        with anyio.CancelScope() as scope:

            def stop_at(event: aprompt.Event) -> None:
                nonlocal seen
                seen += 1
                if seen == stop_after:
                    scope.cancel()

            await optimize(server, None, run_dir=tmp_path / "run", on_event=stop_at, seed=STOPS_EARLY)
        assert scope.cancelled_caught, "the run was interrupted"
        resumed = await optimize(server, None, run_dir=tmp_path / "run", seed=STOPS_EARLY)
    assert any(t.stopped_early for t in reference.trials)
    assert summary(resumed) == summary(reference)


async def test_with_too_little_time_for_a_race_the_last_evaluation_is_one_full_evaluation() -> None:
    # A race waits once a rung for its slowest answer: under a deadline shorter than its rungs take, the
    # last race was cut in its last rung and the pick weighed no searched program. The most promising
    # combination is fully evaluated instead, all its examples at once.
    for seconds_left, rungs_run in ((1.0, 0), (1000.0, 1)):
        async with search_loop(racing=True) as (loop, _):
            for number, choice in enumerate((GOOD, POOR)):
                await loop.record_trial(await loop.single_trial(number, dict(choice)))
            loop.time_limited = True
            loop.runs_per_second, loop.trial_seconds = 1000.0, 0.5
            loop.seconds_left = lambda left=seconds_left: left
            await final_races(loop, 2 * len(loop.valset))
            evaluated = [dict(f.choice) for f in loop.full_evals[1:]]
            rungs = len(loop.rungs)
        assert evaluated[:1] == [GOOD]
        assert min(rungs, 1) == rungs_run  # raced (rungs recorded) only with the time for it


async def test_a_periodic_race_the_budget_cannot_pay_for_beside_the_trials_ends_them_not_the_search() -> None:
    # The periodic races' steps are admitted by a run's limit of 150 calls (at a call a run so far, with
    # room for a mini-batch of 50 beside them): the first race's rung cannot be paid for. The trials end
    # there, and the search goes on to its last race, instead of stopping with no searched program
    # fully evaluated.
    async with search_loop(racing=True, baseline=False) as (loop, _):
        loop.full_eval_every = 4
        ctx = limited_context(150)
        loop.admit_evaluation_step = ctx.admit_evaluation_step
        outcome = await loop.run()
    assert len(outcome.trials) < loop.n_trials  # the trials ended at the refusal
    assert loop.cut_short_by == "max_lm_calls"
    assert ctx.stopped_by is None
    assert any(f.after_trial == len(outcome.trials) for f in outcome.full_evals[1:])  # the last race ran


async def test_the_time_floor_of_a_race_never_raises_it_past_what_the_plan_and_budget_gave() -> None:
    # Under max_time a final race gets at least a full evaluation's runs whatever the pace says, but a
    # floor above what the budget left would send requests the limit then refuses mid-race.
    async with search_loop(racing=True) as (loop, _):
        loop.runs_per_second = 10.0
        loop.seconds_left = lambda: 1000.0
        assert within_time(loop, 40) == 40  # the time pays for more: what the budget gave stands
        loop.seconds_left = lambda: 1.5  # 10 runs a second for 1.5 s, with the margin: under 100
        assert within_time(loop, 500) == 100  # the floor: one full evaluation (100 examples)
        assert within_time(loop, 40) == 40  # never above what the plan and the budget gave
        assert within_time(loop, 500, floor=False) == math.floor(1.5 * 10.0 / TIME_MARGIN)
