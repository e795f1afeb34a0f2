"""Progress events: what ``on_event`` receives and in which order, and ``optimize_events``."""

from __future__ import annotations

import gc
import inspect
import warnings
from collections import Counter
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import pytest

import aprompt
from aprompt import (
    CandidateDropped,
    CandidateProposed,
    Event,
    FullEvaluation,
    NewBest,
    OptimizeResult,
    PhaseFinished,
    PhaseStarted,
    RunFinished,
    RunPlanned,
    TrialScored,
)
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import SMALL_BUDGET, WORLD_PHASES, lm_for, optimize_in_world
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


async def events_of_a_run(*, asynchronous: bool = False) -> tuple[list[Event], OptimizeResult]:
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    result, _ = await optimize_in_world(on_event=record if asynchronous else events.append)
    return events, result


Recorded = tuple[list[Event], OptimizeResult]


@pytest.fixture(scope="module")
def recorded() -> Recorded:
    """The events of one run with a sync callback, shared by the tests that only read them."""
    return anyio.run(events_of_a_run)


def without_candidates(events: Sequence[object]) -> list[object]:
    """The events whose order does not depend on timing (predictors propose concurrently, and phases
    overlap: a step starts when its inputs exist)."""
    timed = CandidateProposed | CandidateDropped | PhaseStarted | PhaseFinished
    return [e for e in events if not isinstance(e, timed)]


def test_a_sync_callback_sees_the_plan_first_and_the_finish_last(recorded: Recorded) -> None:
    events, result = recorded
    assert isinstance(events[0], RunPlanned)
    assert events[0].strategy == "mipro" and events[0].n_trials == 6 and events[0].val_size == 30
    assert isinstance(events[-1], RunFinished)
    assert events[-1].best_score == result.score and events[-1].baseline_score == result.baseline_score
    assert sum(isinstance(e, RunPlanned | RunFinished) for e in events) == 2


@both_backends
async def test_an_async_callback_is_awaited_for_every_event() -> None:
    events, result = await events_of_a_run(asynchronous=True)
    assert isinstance(events[0], RunPlanned) and isinstance(events[-1], RunFinished)
    assert sum(isinstance(e, TrialScored) for e in events) == len(result.trials)


def test_phases_start_and_finish_in_pairs(recorded: Recorded) -> None:
    events, result = recorded
    phases = [e for e in events if isinstance(e, PhaseStarted | PhaseFinished)]
    started = [e.phase for e in phases if isinstance(e, PhaseStarted)]
    finished = [e for e in phases if isinstance(e, PhaseFinished)]
    assert sorted(started) == sorted(e.phase for e in finished)
    assert sorted(started) == WORLD_PHASES
    for phase in started:  # each finishes after it started
        assert events.index(next(e for e in finished if e.phase == phase)) > events.index(
            next(e for e in phases if isinstance(e, PhaseStarted) and e.phase == phase)
        )
    assert sorted((e.phase, e.seconds, e.usage) for e in finished) == sorted(
        (p.phase, p.seconds, p.usage) for p in result.phases
    )


def test_steps_start_when_their_inputs_exist(recorded: Recorded) -> None:
    events, _ = recorded
    at = {
        (type(e).__name__, e.phase): i
        for i, e in enumerate(events)
        if isinstance(e, PhaseStarted | PhaseFinished)
    }
    # No demo needed: beside the bootstrap.
    assert at[("PhaseStarted", "baseline")] < at[("PhaseFinished", "bootstrap")]
    assert at[("PhaseStarted", "grounding")] < at[("PhaseFinished", "bootstrap")]
    assert at[("PhaseFinished", "bootstrap")] < at[("PhaseStarted", "propose")]
    assert at[("PhaseFinished", "propose")] < at[("PhaseStarted", "search")]


def test_every_trial_is_reported_once_in_order(recorded: Recorded) -> None:
    events, result = recorded
    scored = [e for e in events if isinstance(e, TrialScored)]
    assert [e.number for e in scored] == list(range(len(result.trials))) == [t.number for t in result.trials]
    assert [(e.choice, e.score) for e in scored] == [(t.choice, t.score) for t in result.trials]
    assert all(e.n_examples == 10 for e in scored)


def test_the_baseline_is_the_first_full_evaluation_and_the_first_best(recorded: Recorded) -> None:
    events, result = recorded
    full = [e for e in events if isinstance(e, FullEvaluation)]
    assert [e.is_baseline for e in full] == [True] + [False] * (len(full) - 1)
    assert full[0].choice == result.candidates.baseline() and full[0].score == result.baseline_score
    assert len(full) == len(result.full_evals) >= 2
    first_best = next(e for e in events if isinstance(e, NewBest))
    assert events.index(first_best) == events.index(full[0]) + 1
    assert first_best.choice == full[0].choice


def test_a_new_best_is_announced_each_time_the_best_full_score_rises(recorded: Recorded) -> None:
    events, result = recorded
    best = [e for e in events if isinstance(e, NewBest)]
    assert [e.score for e in best] == sorted({e.score for e in best})
    assert best[-1].choice == result.best_choice and best[-1].score == result.score


async def test_a_callback_that_changes_its_events_leaves_the_run_unchanged(recorded: Recorded) -> None:
    _, untouched = recorded

    def overwrite(event: Event) -> None:
        for mapping in (getattr(event, "choice", None), getattr(event, "detail", None)):
            if isinstance(mapping, dict):
                mapping.update(dict.fromkeys(mapping, 0))

    result, _ = await optimize_in_world(on_event=overwrite)
    assert result.best_choice == untouched.best_choice and result.score == untouched.score
    assert [(t.choice, t.score) for t in result.trials] == [(t.choice, t.score) for t in untouched.trials]
    assert [f.choice for f in result.full_evals] == [f.choice for f in untouched.full_evals]


@both_backends
async def test_optimize_events_yields_the_callbacks_events_then_the_result(recorded: Recorded) -> None:
    expected, expected_result = recorded
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        async with aprompt.optimize_events(
            TwoStageProgram(),
            examples(0, 60),
            metric,
            valset=examples(200, 230),
            lm=lm,
            budget=SMALL_BUDGET,
            seed=1,
        ) as stream:
            events = [event async for event in stream]
    assert isinstance(stream.result, OptimizeResult)
    assert stream.result.best_choice == expected_result.best_choice
    # Seconds and usage differ between runs; kinds, order and choices do not.
    assert [type(e) for e in without_candidates(events)] == [type(e) for e in without_candidates(expected)]
    assert Counter(type(e) for e in events) == Counter(type(e) for e in expected)
    assert [e for e in events if isinstance(e, TrialScored)] == [
        e for e in expected if isinstance(e, TrialScored)
    ]


@both_backends
async def test_optimize_events_raises_the_runs_error_as_itself(fake_server: FakeOpenAIServer) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.ConfigError, match="trainset is empty"):
            async with aprompt.optimize_events(TwoStageProgram(), [], metric, lm=lm) as stream:
                async for _ in stream:
                    pass


@both_backends
async def test_break_leaves_the_block_and_stops_the_run_quietly() -> None:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        async with aprompt.optimize_events(
            TwoStageProgram(), examples(0, 60), metric, valset=examples(200, 230), lm=lm, budget=SMALL_BUDGET
        ) as stream:
            async for event in stream:
                if isinstance(event, PhaseFinished):
                    break
        # Phases overlap: requests the client sent before the block was left may reach the server (in
        # this event loop) a moment later.
        await anyio.sleep(0.2)
        calls = len(server.chat_requests)
        await anyio.sleep(0.05)
        assert len(server.chat_requests) == calls, "no call after the consumer stopped"
    assert isinstance(event, PhaseFinished)
    with pytest.raises(aprompt.ConfigError, match="has not finished"):
        stream.result  # noqa: B018


@both_backends
async def test_a_break_leaves_no_unfinished_iteration_for_the_collector() -> None:
    # Trio warns of every async generator collected unfinished: the documented `break` must not make one.
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with aprompt.optimize_events(
                TwoStageProgram(),
                examples(0, 60),
                metric,
                valset=examples(200, 230),
                lm=lm,
                budget=SMALL_BUDGET,
            ) as stream:
                async for _ in stream:
                    break
            gc.collect()
            await anyio.lowlevel.checkpoint()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@both_backends
async def test_a_read_given_up_on_a_timeout_leaves_the_events_to_read_on() -> None:
    # A read cut short (a reader that waits for the next event with a timeout) ended the iteration: the
    # next read saw no more events, as if the run had finished.
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        async with aprompt.optimize_events(
            TwoStageProgram(), examples(0, 60), metric, valset=examples(200, 230), lm=lm, budget=SMALL_BUDGET
        ) as stream:
            events = aiter(stream)
            with anyio.move_on_after(0):
                await anext(events)
            rest = [event async for event in events]
    assert isinstance(rest[0], RunPlanned)
    assert isinstance(rest[-1], RunFinished)
    assert isinstance(stream.result, OptimizeResult)


@both_backends
async def test_events_iterated_after_the_block_are_a_config_error() -> None:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        async with aprompt.optimize_events(
            TwoStageProgram(), examples(0, 60), metric, valset=examples(200, 230), lm=lm, budget=SMALL_BUDGET
        ) as stream:
            pass
        with pytest.raises(aprompt.ConfigError, match="inside its `async with` block"):
            async for _ in stream:
                pass


class Stop(Exception):
    pass


@both_backends
async def test_an_error_in_the_loop_body_stops_the_run_and_propagates_as_itself() -> None:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        with pytest.raises(Stop):
            async with aprompt.optimize_events(
                TwoStageProgram(),
                examples(0, 60),
                metric,
                valset=examples(200, 230),
                lm=lm,
                budget=SMALL_BUDGET,
            ) as stream:
                async for event in stream:
                    if isinstance(event, PhaseStarted):
                        raise Stop
        calls = len(server.chat_requests)
        await anyio.sleep(0.05)
        assert len(server.chat_requests) == calls, "no call after the consumer stopped"


@both_backends
@pytest.mark.parametrize("strategy", ["mipro", "module_opro"])
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_callback_that_raises_on_every_event_stops_the_run_with_its_error(
    strategy: str, asynchronous: bool
) -> None:
    """The steps that start together (the baseline beside the bootstrap, ...) each reach an event: the
    run stops with the callback's first error, not a group of one per step."""
    told: list[Event] = []

    def broken(event: Event) -> None:
        told.append(event)
        if not isinstance(event, RunPlanned):
            raise Stop(f"no room for {type(event).__name__}")

    async def broken_async(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        broken(event)

    with pytest.raises(Stop, match="no room for PhaseStarted"):
        await optimize_in_world(strategy, on_event=broken_async if asynchronous else broken)
    if not asynchronous:  # an async callback's calls may be under way together when the first raises
        assert sum(isinstance(event, PhaseStarted) for event in told) == 1


def test_optimize_events_takes_every_option_of_optimize_with_the_same_defaults() -> None:
    own = dict(inspect.signature(aprompt.optimize).parameters)
    del own["on_event"]
    streamed = dict(inspect.signature(aprompt.optimize_events).parameters)
    assert {name: (p.kind, p.default) for name, p in streamed.items()} == {
        name: (p.kind, p.default) for name, p in own.items()
    }


@pytest.mark.parametrize("max_lm_calls", [120, 260])
async def test_phases_a_limit_cuts_short_finish_before_the_run_does(max_lm_calls: int) -> None:
    # 120 calls stop the run in the bootstrap, beside the baseline; 260 in the search's trials.
    events: list[Event] = []
    result, _ = await optimize_in_world(
        on_event=events.append, limits=aprompt.Limits(max_lm_calls=max_lm_calls)
    )
    assert result.stopped_by == "max_lm_calls"
    started = [e.phase for e in events if isinstance(e, PhaseStarted)]
    finished = [e for e in events if isinstance(e, PhaseFinished)]
    assert sorted(started) == sorted(e.phase for e in finished) == sorted(p.phase for p in result.phases)
    assert sorted((e.phase, e.seconds, e.usage) for e in finished) == sorted(
        (p.phase, p.seconds, p.usage) for p in result.phases
    )
    assert isinstance(events[-1], RunFinished)


async def test_a_run_stopped_before_the_search_tells_the_baseline_it_returns() -> None:
    # 120 calls stop the run beside the baseline's evaluation: the search never records it.
    events: list[Event] = []
    result, _ = await optimize_in_world(on_event=events.append, limits=aprompt.Limits(max_lm_calls=120))
    assert result.stopped_by == "max_lm_calls" and not result.trials
    full = [e for e in events if isinstance(e, FullEvaluation)]
    assert [(e.choice, e.score, e.n_failed, e.is_baseline) for e in full] == [
        (f.choice, f.score, f.n_failed, True) for f in result.full_evals
    ]
    best = [e for e in events if isinstance(e, NewBest)]
    assert [(e.choice, e.score) for e in best] == [(result.best_choice, result.score)]
    assert events.index(best[0]) == events.index(full[0]) + 1


async def test_a_pick_a_stop_moves_is_told_as_a_new_best() -> None:
    # The limit cuts the confirmation of an undecided pick short: what it confirmed moves the pick to a
    # combination no NewBest named before.
    events: list[Event] = []
    result, _ = await optimize_in_world(
        "bayesian_bootstrap",
        seed=2,
        budget={**SMALL_BUDGET, "n_trials": 10},
        on_event=events.append,
        limits=aprompt.Limits(max_lm_calls=350),
    )
    assert result.stopped_by == "max_lm_calls" and result.confirmations
    best = [e for e in events if isinstance(e, NewBest)]
    assert best[-1].choice == result.best_choice and best[-1].score == result.score
    assert best[-1].choice != result.candidates.baseline()


async def test_a_pick_named_before_the_search_added_instructions_is_told_by_its_final_name() -> None:
    # mipro_plus_plus adds each predictor's instructions mid-run; here it keeps the program as written,
    # told first when it had no instruction parameter: the last NewBest names the returned choice.
    events: list[Event] = []
    result, _ = await optimize_in_world("mipro_plus_plus", on_event=events.append)
    assert result.best_choice == {**result.candidates.baseline(), **result.best_choice}
    assert any(key.endswith(".instruction") for key in result.best_choice)
    best = [e for e in events if isinstance(e, NewBest)]
    assert best[-1].choice == result.best_choice and best[-1].score == result.score
