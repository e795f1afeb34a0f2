"""Racing's decisions taken as soon as the answers in settle them (aprompt/_optimize/racing.py): a trial's
second stage goes without waiting for its first stage's slowest answer when no answer still out could
make the trial stop, and a race's lone racer, or a rung's sure leader, sends its next step's calls once no
answer still out could drop it; each records (and sends) what it would have.

Asserted from the loopback server's request log as orderings (one answer held back a second), never as
durations."""

from __future__ import annotations

import itertools
import json
import math
import random

import anyio
import pytest

from aprompt._optimize.final_pick import mean_of
from aprompt._optimize.race_bounds import mean_range
from aprompt._optimize.racing import (
    cannot_be_clearly_worse,
    clearly_worse,
    first_stage_size,
    race_order,
    run_race,
    rung_sizes,
)
from aprompt._optimize.search_records import minibatch
from aprompt.testing.fake_openai import ChatRequest, Reply
from tests.optimize.qa_task import item_of, last_user_of
from tests.optimize.test_racing import GOOD, LATENCY, POOR, items_of, race_records, requests_of, search_loop
from tests.optimize.world import World

pytestmark = pytest.mark.anyio

#: How long the held-back answer takes: many latencies, so an order seen in the log is no accident.
HELD = 1.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def holding_back(item: int) -> tuple[World, object]:
    """The world's answers, those for ``item`` sent ``HELD`` seconds late."""
    world = World()

    async def answer(request: ChatRequest) -> Reply:
        if "item-" in request.last_user and item_of(request.last_user) == item:
            await anyio.sleep(HELD)
        return world(request)

    return world, answer


async def test_a_trial_that_cannot_stop_sends_its_second_stage_before_its_first_stages_slowest_answer() -> (
    None
):
    async with search_loop(racing=True) as (loop, _):
        batch = minibatch(loop.valset, loop.minibatch_size, loop.seed, 0)
        plain = await loop.single_trial(0, dict(GOOD))
    first = first_stage_size(len(batch))
    assert first is not None and not plain.stopped_early
    slow = item_of(batch[0].inputs["question"])
    _, answer = holding_back(slow)
    async with search_loop(racing=True, latency=LATENCY, answer=answer) as (loop, server):  # type: ignore[arg-type]
        trial = await loop.single_trial(0, dict(GOOD))
        requests = requests_of(server, GOOD)
    held = [r for r in requests if item_of(last_user_of(r)) == slow]
    second = [r for r in requests if item_of(last_user_of(r)) in items_of(batch[first:])]
    assert held and second
    # The second stage went before the first stage's held-back answer came.
    assert min(r.started for r in second) < max(r.finished for r in held)
    # And the trial records what it did without the held-back answer.
    assert (trial.example_ids, trial.scores, trial.stopped_early) == (
        plain.example_ids,
        plain.scores,
        plain.stopped_early,
    )


async def test_a_trial_that_may_stop_waits_for_its_first_stages_slowest_answer() -> None:
    async with search_loop(racing=True) as (loop, _):
        batch = minibatch(loop.valset, loop.minibatch_size, loop.seed, 0)
    slow = item_of(batch[0].inputs["question"])
    _, answer = holding_back(slow)
    async with search_loop(racing=True, latency=LATENCY, answer=answer) as (loop, server):  # type: ignore[arg-type]
        trial = await loop.single_trial(0, dict(POOR))
        requests = requests_of(server, POOR)
    first = first_stage_size(len(batch))
    assert first is not None and trial.stopped_early
    # Clearly losing: nothing of its second stage was sent.
    assert not [r for r in requests if item_of(last_user_of(r)) in items_of(batch[first:])]


def test_a_settled_decision_holds_for_every_completion_of_the_answers_still_out() -> None:
    rng = random.Random(0)
    settled = 0
    for _ in range(400):
        ids = [f"e{i}" for i in range(rng.randint(0, 30) + 3)]
        out = ids[-rng.randint(0, 3) :] if rng.random() < 0.9 else []
        p_known, p_other = rng.random(), rng.random()
        other = {i: float(rng.random() < p_other) if rng.random() < 0.7 else rng.random() for i in ids}
        known = {i: float(rng.random() < p_known) for i in ids if i not in out}
        if not cannot_be_clearly_worse(known, out, other):
            continue
        settled += 1
        for ends in itertools.product(
            [None, 0.0, 0.4, 1.0] if len(out) < 3 else [None, 0.0, 1.0], repeat=len(out)
        ):
            completed = {**known, **{i: v for i, v in zip(out, ends, strict=True) if v is not None}}
            assert not clearly_worse(completed, other), (known, out, ends)
    assert settled > 100  # the bound settles most of the cases that are not close


def test_a_trial_losing_by_more_than_the_answers_out_can_make_up_is_not_settled() -> None:
    other = {f"e{i}": 1.0 for i in range(20)}
    known = {f"e{i}": 0.0 for i in range(15)}
    assert clearly_worse(known, other)
    assert not cannot_be_clearly_worse(known, [f"e{i}" for i in range(15, 20)], other)
    # Ahead on every known example, one answer out cannot bring it down.
    assert cannot_be_clearly_worse({f"e{i}": 1.0 for i in range(19)}, ["e19"], {**other, "e3": 0.0})


async def test_a_lone_racer_sure_to_go_on_starts_its_full_evaluation_before_its_rungs_slowest_answer() -> (
    None
):
    async with search_loop(racing=True, go_ahead=True) as (loop, server):
        n = len(loop.valset)
        order = race_order(loop.valset, loop.seed)
        sizes = rung_sizes(n)
        await run_race(loop, [dict(GOOD)], allowance=2 * n)
        plain = race_records(loop)
        plain_requests = sorted(json.dumps(r.body, sort_keys=True) for r in server.chat_requests)
    # Held back: an example of its last rung before the full evaluation.
    slow = item_of(order[sizes[-2] - 1].inputs["question"])
    _, answer = holding_back(slow)
    async with search_loop(racing=True, latency=LATENCY, answer=answer, go_ahead=True) as (loop, server):  # type: ignore[arg-type]
        await run_race(loop, [dict(GOOD)], allowance=2 * n)
        records = race_records(loop)
        requests = requests_of(server, GOOD)
        sent = sorted(json.dumps(r.body, sort_keys=True) for r in server.chat_requests)
    held = [r for r in requests if item_of(last_user_of(r)) == slow]
    full = [r for r in requests if item_of(last_user_of(r)) in items_of(order[sizes[-2] :])]
    assert held and full
    # The full evaluation's calls went before the rung's held-back answer came ...
    assert min(r.started for r in full) < max(r.finished for r in held)
    # ... and the race recorded, and sent, what it does without the held-back answer.
    assert records == plain
    assert sent == plain_requests


async def test_a_lone_racer_that_may_be_dropped_sends_nothing_ahead() -> None:
    async with search_loop(racing=True, go_ahead=True) as (loop, server):
        n = len(loop.valset)
        await run_race(loop, [dict(POOR)], allowance=2 * n)
        ran = {item_of(e.inputs["question"]) for e in loop.valset if e.id in loop.scores_of(POOR)}
        requested = {item_of(last_user_of(r)) for r in requests_of(server, POOR)}
    assert len(ran) < n  # dropped before its full evaluation
    assert requested == ran


async def test_a_rungs_sure_leader_starts_its_next_rung_before_the_rungs_slowest_answer() -> None:
    async with search_loop(racing=True, go_ahead=True) as (loop, server):
        n = len(loop.valset)
        order = race_order(loop.valset, loop.seed)
        sizes = rung_sizes(n)
        await run_race(loop, [dict(GOOD), dict(POOR)], allowance=3 * n)
        plain = race_records(loop)
        plain_requests = sorted(json.dumps(r.body, sort_keys=True) for r in server.chat_requests)
    # Held back: an example of the first rung, which both racers run.
    slow = item_of(order[sizes[0] - 1].inputs["question"])
    _, answer = holding_back(slow)
    async with search_loop(racing=True, latency=LATENCY, answer=answer, go_ahead=True) as (loop, server):  # type: ignore[arg-type]
        await run_race(loop, [dict(GOOD), dict(POOR)], allowance=3 * n)
        records = race_records(loop)
        good, poor = requests_of(server, GOOD), requests_of(server, POOR)
        sent = sorted(json.dumps(r.body, sort_keys=True) for r in server.chat_requests)
    held = [r for r in good + poor if item_of(last_user_of(r)) == slow]
    assert {id(r) for r in held} & {id(r) for r in good} and {id(r) for r in held} & {id(r) for r in poor}
    second_rung = [r for r in good if item_of(last_user_of(r)) in items_of(order[sizes[0] : sizes[1]])]
    assert second_rung
    # The leader's second rung went before the first rung's held-back answers came ...
    assert min(r.started for r in second_rung) < max(r.finished for r in held)
    # ... and the race recorded, and sent, what it does without the held-back answers.
    assert records == plain
    assert sent == plain_requests


def test_the_sure_leader_leads_and_heads_the_next_rung_for_every_completion_of_the_answers_out() -> None:
    rng = random.Random(1)
    settled = 0
    for _ in range(300):
        racers = []
        for _ in range(rng.randint(2, 4)):
            p = rng.random()
            count = rng.randint(0, 12)
            known = [float(rng.random() < p) if rng.random() < 0.8 else rng.random() for _ in range(count)]
            racers.append((known, rng.randint(0, 2)))
        ranges = [mean_range(math.fsum(known), len(known), out) for known, out in racers]
        leaders = [
            i
            for i, (low, _) in enumerate(ranges)
            if all(low > high + 1e-9 for j, (_, high) in enumerate(ranges) if j != i)
        ]
        if not leaders:
            continue
        settled += 1
        (sure,) = leaders
        options = [None, 0.0, 0.5, 1.0]
        for ends in itertools.product(*(itertools.product(options, repeat=out) for _, out in racers)):
            means = [
                mean_of({str(k): v for k, v in enumerate([*known, *(e for e in end if e is not None)])})
                for (known, _), end in zip(racers, ends, strict=True)
            ]
            assert max(range(len(means)), key=lambda i: means[i]) == sure
            assert sorted(range(len(means)), key=lambda i: -means[i])[0] == sure
    assert settled > 50
