"""Continuous trials (aprompt/_optimize/trial_window.py): no batch barrier, periodic evaluations beside the
trials, and a result that is a function of the seed whatever the timing, resumed or not.

Served by the loopback fake OpenAI-compatible server, whose request log (arrival and finish times) shows
what ran at once; latencies drawn at a per-run seed give each run its own timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import aprompt
from aprompt import OpenAICompatibleLM
from aprompt._optimize.bootstrap import DemoSet
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.events import Event
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard
from aprompt._optimize.search import SearchLoop
from aprompt._optimize.search_records import minibatch
from aprompt.lm.cache import ResponseCache
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, RecordedRequest
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import (
    QAProgram,
    answers,
    exact_match,
    item_of,
    last_user_of,
    qa_examples,
    system_of,
)
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

#: The searched instructions of the one-predictor QA program (none is part of another, or of the prompt's
#: own text, so a request's system prompt names the instruction it was made with).
INSTRUCTIONS = (
    "Answer the question.",
    "Reply tersely.",
    "Respond with the label only.",
    "State your result.",
    "Give a single token.",
    "Write what fits.",
)
#: A world run with three trials in flight and an evaluation point every three trials.
WORLD_BUDGET: Mapping[str, Any] = {
    "n_candidates": 4,
    "val_size": 30,
    "n_trials": 9,
    "minibatch_size": 10,
    "parallel_trials": 3,
    "full_eval_every": 3,
    "screen_size": 0,
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def instruction_of(record: RecordedRequest) -> int:
    system = system_of(record)
    found = [i for i, text in enumerate(INSTRUCTIONS) if text in system]
    assert len(found) == 1, system
    return found[0]


def item_requests(requests: list[RecordedRequest], item: int) -> list[RecordedRequest]:
    return [r for r in requests if item_of(last_user_of(r)) == item]


@asynccontextmanager
async def qa_search(
    responder: Any, *, latency: float = 0.0, **options: Any
) -> AsyncIterator[tuple[SearchLoop, FakeOpenAIServer]]:
    """A search over :data:`INSTRUCTIONS` on 40 validation examples, with no LM cache: every call of the
    search is a request the server logs."""
    async with FakeOpenAIServer(responder=responder, api_key=TEST_API_KEY, latency=latency) as server:
        async with OpenAICompatibleLM(
            "fake-model",
            server.base_url,
            api_key=TEST_API_KEY,
            max_concurrency=64,
            cache=ResponseCache.disabled(),
        ) as lm:

            async def ignore(event: Event) -> None:
                return None

            loop = SearchLoop(
                program=QAProgram(),
                candidates=Candidates(("answer",), {"answer": INSTRUCTIONS}, {"answer": (DemoSet(()),)}),
                valset=qa_examples(0, 40),
                metric=exact_match,
                emit=ignore,
                lm=lm,
                outage=OutageGuard((lm,), DEFAULT_OUTAGE_POLICY),
                **options,
            )
            yield loop, server


class SlowOnce:
    """Answers like :func:`~tests.optimize.qa_task.answers`; the ``nth`` request for ``item`` takes
    ``seconds``."""

    def __init__(self, item: int, nth: int, seconds: float) -> None:
        self.item, self.nth, self.seconds = item, nth, seconds
        self.seen = 0

    async def __call__(self, request: ChatRequest) -> str:
        if item_of(request.last_user) == self.item:
            self.seen += 1
            if self.seen == self.nth:
                await anyio.sleep(self.seconds)
        return answers(request)


def only_in(batches: list[set[int]], trial: int) -> int:
    """An item of ``trial``'s mini-batch in no other listed mini-batch."""
    others = set().union(*(b for t, b in enumerate(batches) if t != trial))
    alone = sorted(batches[trial] - others)
    assert alone, "the seed gives the trial an item of its own"
    return alone[0]


async def test_a_trial_starts_while_a_slow_earlier_trial_still_runs() -> None:
    # Two trials in flight. Trial 1 waits on one slow call; trial 0 finishes at once, so trial 2 starts
    # beside trial 1 instead of after it (a batch of {0, 1} would wait for its slowest call).
    seed, size = 3, 5
    batches = [
        {item_of(e.inputs["question"]) for e in minibatch(qa_examples(0, 40), size, seed, t)}
        for t in range(4)
    ]
    slow, beside = only_in(batches, 1), only_in(batches, 2)
    # The baseline's full evaluation asks for every item first; trial 1's is the item's second request.
    responder = SlowOnce(slow, nth=2, seconds=1.0)
    async with qa_search(
        responder,
        latency=0.01,
        n_trials=4,
        minibatch_size=size,
        full_eval_every=10,
        parallel_trials=2,
        seed=seed,
        racing=False,
    ) as (loop, server):
        outcome = await loop.run()
        requests = server.chat_requests
    assert [t.number for t in outcome.trials] == [0, 1, 2, 3]
    slow_call = item_requests(requests, slow)[1]
    trial_2_call = item_requests(requests, beside)[1]
    assert slow_call.finished - slow_call.started >= 1.0
    assert trial_2_call.started < slow_call.finished, "trial 2 waited for trial 1's slowest call"


async def test_a_periodic_full_evaluation_runs_beside_the_trials_that_follow_it() -> None:
    seed, size, n_trials = 2, 5, 4
    trial_items = set().union(
        *(
            {item_of(e.inputs["question"]) for e in minibatch(qa_examples(0, 40), size, seed, t)}
            for t in range(n_trials)
        )
    )
    async with qa_search(
        answers,
        latency=0.05,
        n_trials=n_trials,
        minibatch_size=size,
        full_eval_every=2,
        parallel_trials=2,
        seed=seed,
        racing=False,
    ) as (loop, server):
        outcome = await loop.run()
        requests = server.chat_requests
    periodic = outcome.full_evals[1]
    assert periodic.after_trial == 2
    evaluated = periodic.choice["answer.instruction"]
    # Only a full evaluation asks for an item no trial has; the baseline's is of instruction 0, the
    # final one's of another combination.
    evaluation_calls = [
        r for r in requests if item_of(last_user_of(r)) not in trial_items and instruction_of(r) == evaluated
    ]
    assert evaluation_calls
    beside = [
        r
        for r in requests
        if instruction_of(r) != evaluated
        and any(r.started < e.finished and e.started < r.finished for e in evaluation_calls)
    ]
    # Between the baseline's evaluation and the final ones only trials run: these are trials' calls.
    assert beside, "no trial ran while the periodic full evaluation did"


async def world_run(
    run_dir: Path, latency_seed: int, strategy: str = "mipro", sent: list[int] | None = None, **options: Any
) -> aprompt.OptimizeResult:
    """A world optimization journaled in ``run_dir``; every request's latency drawn at ``latency_seed``.
    The number of requests the server received is appended to ``sent``."""
    async with FakeOpenAIServer(
        responder=World(),
        api_key=TEST_API_KEY,
        latency=lambda rng: rng.uniform(0.0, 0.02),
        seed=latency_seed,
    ) as server:
        async with OpenAICompatibleLM(
            "world", server.base_url, api_key=TEST_API_KEY, max_concurrency=64
        ) as lm:
            try:
                return await aprompt.optimize(
                    TwoStageProgram(),
                    examples(0, 60),
                    metric,
                    valset=examples(200, 230),
                    lm=lm,
                    strategy=strategy,
                    budget=WORLD_BUDGET,
                    seed=1,
                    run_dir=run_dir,
                    **options,
                )
            finally:
                if sent is not None:
                    sent.append(len(server.chat_requests))


def summary(result: aprompt.OptimizeResult) -> tuple[Any, ...]:
    return (
        dict(result.best_choice),
        result.score,
        [(t.number, dict(t.choice), t.score, t.example_ids, t.stopped_early) for t in result.trials],
        [(dict(f.choice), f.scores, f.reused, f.after_trial) for f in result.full_evals],
        result.pick.reason if result.pick is not None else None,
        result.candidates.describe(),
    )


def journaled_steps(run_dir: Path) -> dict[tuple[str, str], Any]:
    """The search's journaled steps by (kind, key), without their durations."""
    steps = {}
    with RunJournal.open(run_dir) as journal:
        for kind in ("trial", "full_eval", "race", "reflection"):
            for key, payload in journal.entries(kind):
                steps[(kind, key)] = {k: v for k, v in payload.items() if k != "seconds"}
    return steps


@pytest.mark.parametrize("strategy", ["mipro", "mipro_reflective"])
async def test_the_same_seed_gives_the_same_search_whatever_the_timing(tmp_path: Path, strategy: str) -> None:
    first = await world_run(tmp_path / "first", latency_seed=11, strategy=strategy)
    second = await world_run(tmp_path / "second", latency_seed=12, strategy=strategy)
    assert len(first.trials) == WORLD_BUDGET["n_trials"]
    assert len(first.full_evals) > 2
    assert summary(second) == summary(first)
    assert journaled_steps(tmp_path / "second") == journaled_steps(tmp_path / "first")


@pytest.mark.parametrize("cut_after_trials", [2, 4, 7])
async def test_a_search_cut_with_trials_in_flight_resumes_to_the_uninterrupted_result(
    tmp_path: Path, cut_after_trials: int
) -> None:
    reference = await world_run(tmp_path / "reference", latency_seed=21)
    told = 0
    with anyio.CancelScope() as scope:

        def cut(event: aprompt.Event) -> None:
            nonlocal told
            told += isinstance(event, aprompt.TrialScored)
            if told == cut_after_trials:
                scope.cancel()

        await world_run(tmp_path / "run", latency_seed=22, on_event=cut)
    assert scope.cancelled_caught, "the run was cut mid-search"
    resumed = await world_run(tmp_path / "run", latency_seed=23)
    assert summary(resumed) == summary(reference)
    assert journaled_steps(tmp_path / "run") == journaled_steps(tmp_path / "reference")


@pytest.mark.parametrize("max_lm_calls", [280, 320])
async def test_a_run_stopped_by_a_limit_mid_search_resumes_under_it_to_the_same_result_and_no_request(
    tmp_path: Path, max_lm_calls: int
) -> None:
    # A full run sends about 434 requests, 189 before the search; these limits stop it after about 5 and 7
    # of its 9 trials, with trials and an evaluation in flight (at 340 it could finish all 9 first).
    sent: list[int] = []
    first = await world_run(
        tmp_path / "run", latency_seed=31, sent=sent, limits=aprompt.Limits(max_lm_calls=max_lm_calls)
    )
    again = await world_run(
        tmp_path / "run", latency_seed=32, sent=sent, limits=aprompt.Limits(max_lm_calls=max_lm_calls)
    )
    assert first.stopped_by == again.stopped_by == "max_lm_calls"
    assert 0 < len(first.trials) < WORLD_BUDGET["n_trials"]
    assert sent[0] <= max_lm_calls and sent[1] == 0
    assert summary(again) == summary(first)


async def test_the_default_window_depends_on_the_clients_configuration_not_on_what_it_measured(
    tmp_path: Path,
) -> None:
    # The window decides which results a suggestion sees, so a client that has measured its latency and
    # learned a stated limit (a warm one) must plan the same window, and so the same search, as a fresh one.
    budget = {key: value for key, value in WORLD_BUDGET.items() if key != "parallel_trials"}
    async with FakeOpenAIServer(
        responder=World(),
        api_key=TEST_API_KEY,
        latency=lambda rng: rng.uniform(0.0, 0.02),
        seed=41,
        response_headers=lambda number: {"x-ratelimit-limit-requests": "3000"},
    ) as server:
        async with OpenAICompatibleLM(
            "world", server.base_url, api_key=TEST_API_KEY, requests_per_minute=6000
        ) as lm:
            results = []
            for name in ("fresh", "warm"):
                results.append(
                    await aprompt.optimize(
                        TwoStageProgram(),
                        examples(0, 60),
                        metric,
                        valset=examples(200, 230),
                        lm=lm,
                        budget=budget,
                        seed=1,
                        run_dir=tmp_path / name,
                    )
                )
    assert summary(results[1]) == summary(results[0])
    assert journaled_steps(tmp_path / "warm") == journaled_steps(tmp_path / "fresh")
