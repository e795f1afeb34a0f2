"""Running one race: its rungs, each racer scored on the examples it lacks, racers dropped when clearly
worse, the survivors fully evaluated, and a rung's sure leader's next step started ahead (see
:mod:`aprompt._optimize.racing`)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import anyio.abc

from aprompt._errors import JournalError
from aprompt._optimize.concurrent_steps import at_once_in_order
from aprompt._optimize.evaluate import ExampleResult, OnResult
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import Key, key_of, mean_of
from aprompt._optimize.race_bounds import ROUNDING_MARGIN, cannot_be_clearly_worse, clearly_worse, mean_range
from aprompt._optimize.race_plan import MAX_ENTRANTS, affordable, race_order, rung_increments, rung_sizes
from aprompt._optimize.search_records import RungEval, rung_from_json, rung_to_json
from aprompt._taskgroups import plain_errors_task_group

if TYPE_CHECKING:
    from aprompt._optimize.search import SearchLoop

logger = logging.getLogger("aprompt")


def _choice_json(choice: Mapping[str, int]) -> str:
    return json.dumps(sorted((name, int(value)) for name, value in choice.items()))


async def run_race(loop: SearchLoop, entrants: Sequence[Mapping[str, int]], allowance: int) -> int:
    """Race ``entrants`` (most promising first) within ``allowance`` program runs; returns the runs spent.

    A rung's racers are scored at once, and the last rung's survivors fully evaluated at once
    (``loop.full_evaluations``); what they record is recorded in the racers' order, as if one after
    another (:mod:`aprompt._optimize.concurrent_steps`).
    """
    race = loop.races_started
    loop.races_started += 1
    racers = [dict(c) for c in entrants[:MAX_ENTRANTS]]
    # Runs a rung's sure leader's next step starts ahead (see the module); those no step took when the
    # race ends (it stopped) are dropped.
    try:
        async with plain_errors_task_group() as ahead:
            spent = await _race_rungs(loop, race, racers, allowance, ahead)
            # A cancellation formats the task's repr: none is made when no run ahead is left to stop.
            if loop.has_runs_ahead():
                ahead.cancel_scope.cancel()
    finally:
        loop.drop_ahead()
    return spent


async def _race_rungs(
    loop: SearchLoop, race: int, racers: list[dict[str, int]], allowance: int, ahead: anyio.abc.TaskGroup
) -> int:
    """:func:`run_race`'s rungs, runs started ahead in ``ahead``; returns the program runs spent."""
    n = len(loop.valset)
    order = race_order(loop.valset, loop.seed)
    sizes = rung_sizes(n)
    spent = 0

    async def record(rung_eval: RungEval) -> None:
        nonlocal spent
        loop.record_rung(rung_eval)
        spent += len(rung_eval.example_ids)

    previous: set[str] = set()
    entered = len(racers)
    for rung, size in enumerate(sizes):
        if loop.stopped is not None or loop.should_stop() is not None:
            break
        ids = {e.id for e in order[:size]}
        if rung > 0:
            # Successive halving: the best on the previous rung's shared examples go first.
            racers.sort(key=lambda c: -mean_of({k: v for k, v in loop.scores_of(c).items() if k in previous}))
        known = {key_of(c): loop.scores_of(c) for c in racers}
        increments = [rung_increments(order, sizes, rung, known[key_of(c)]) for c in racers]
        # Successive halving: at most half of the previous rung's racers go on (rounded up).
        cap = entered if rung == 0 else math.ceil(entered / 2)
        racers = racers[: min(cap, affordable(increments, allowance - spent))]
        entered = len(racers)
        logger.debug(
            "aprompt: race %d, rung %d (%d examples): %d racer(s), %d of %d program runs left",
            race + 1,
            rung + 1,
            size,
            len(racers),
            allowance - spent,
            allowance,
        )
        if not racers:
            break
        if size == n:
            fulls = await loop.full_evaluations(racers)
            spent += sum(len(full.scores) + full.n_unscored - full.reused for full in fulls)
            break
        todo = [(c, [e for e in order[:size] if e.id not in known[key_of(c)]]) for c in racers]
        todo = [(c, examples) for c, examples in todo if examples]
        loop.admit_step(
            f"rung {rung + 1} of a race ({len(todo)} combination(s))",
            [("race", _rung_key(loop, race, rung, c), len(examples)) for c, examples in todo],
        )
        watch = _ahead_of_sure_leader(loop, ahead, racers, todo, order, sizes, rung, allowance - spent)
        await at_once_in_order(
            [partial(_rung, loop, race, rung, c, examples, watch.get(key_of(c))) for c, examples in todo],
            record,
        )
        previous = ids
        pick = loop.decide()
        incumbent = loop.scores_of(pick.choice)
        leader = max(racers, key=lambda c: mean_of({k: v for k, v in loop.scores_of(c).items() if k in ids}))
        racers = [
            c
            for c in racers
            if not _dropped(loop, c, incumbent, loop.scores_of(leader) if c is not leader else None)
        ]
    return spent


def _ahead_of_sure_leader(
    loop: SearchLoop,
    group: anyio.abc.TaskGroup,
    racers: Sequence[dict[str, int]],
    todo: Sequence[tuple[dict[str, int], list[Example]]],
    order: Sequence[Example],
    sizes: Sequence[int],
    rung: int,
    left: int,
) -> dict[Key, OnResult]:
    """For rung ``rung`` of ``racers`` (``todo``: the examples each runs in it), what is told each racer's
    answers (by the racer's key) and starts (in ``group``) the calls of one racer's next step (a rung, or
    its full evaluation) once the answers in settle that it goes on to it, and which examples it runs; an
    empty mapping when nothing may go ahead (``left``: the program runs the race has left before this rung).

    The racer that goes ahead is the rung's sure leader: its least possible mean on the rung's examples is
    above every other racer's greatest (:func:`mean_range`), however the answers still out end. The
    leader is never dropped for being clearly worse than the leader, and heads the next rung's order (both
    rank by that mean), so whether it goes on, and what it runs, is a question of it alone
    (:func:`_settled_next`), as for a race of one.
    """
    if not loop.go_ahead or not todo or rung + 1 >= len(sizes):
        return {}
    incumbent = _settled_incumbent(loop)
    if incumbent is None:
        return {}
    on_rung = {e.id for e in order[: sizes[rung]]}
    keys = [key_of(c) for c in racers]
    choices = dict(zip(keys, racers, strict=True))
    scored = {key: loop.scores_of(c) for key, c in choices.items()}
    outstanding: dict[Key, set[str]] = {key: set() for key in keys}
    for c, examples in todo:
        outstanding[key_of(c)] = {e.id for e in examples}
    # Each racer's sum and count of scores on the rung's examples, kept up to date as answers come.
    sums = {key: math.fsum(v for i, v in scored[key].items() if i in on_rung) for key in keys}
    counts = {key: sum(i in on_rung for i in scored[key]) for key in keys}
    left -= sum(len(examples) for _, examples in todo)  # what the rung's records spend
    sent = False

    def settle() -> None:
        nonlocal sent
        ranges = {key: mean_range(sums[key], counts[key], len(outstanding[key])) for key in keys}
        for key in keys:
            low = ranges[key][0]
            if all(low > high + ROUNDING_MARGIN for other, (_, high) in ranges.items() if other != key):
                ahead = _settled_next(
                    loop.valset, scored[key], outstanding[key], incumbent, order, sizes, rung, left
                )
                if ahead is not None:
                    sent = True
                    if ahead:
                        loop.run_ahead(group, choices[key], ahead)
                return  # at most one racer can be the sure leader

    def watching(key: Key) -> OnResult:
        def on_result(result: ExampleResult) -> None:
            if sent:
                return
            # Only scored results are final: an example an LM failure left unscored stays out.
            if result.score is not None and result.example_id in outstanding[key]:
                scored[key][result.example_id] = result.score
                outstanding[key].discard(result.example_id)
                sums[key] += result.score
                counts[key] += 1
            settle()

        return on_result

    return {key_of(c): watching(key_of(c)) for c, _ in todo}


def _settled_incumbent(loop: SearchLoop) -> dict[str, float] | None:
    """The pick's scores, when no racer's rung can change the pick; else ``None``.

    A rung adds evidence on a combination without a full evaluation, which is never picked. It moves
    the pick only through the pooled estimate, and that only orders fully evaluated combinations of
    equal means (:func:`~aprompt._optimize.final_pick.by_mean`): with their means all distinct, the pick
    after the rung is the pick now.
    """
    baseline = key_of(loop.full_evals[0].choice)
    tested = {key_of(f.choice) for f in loop.full_evals} - {baseline}
    means = [mean_of(loop.scores_of(dict(key))) for key in tested]
    if len(set(means)) != len(means):
        return None
    return loop.scores_of(loop.decide().choice)


def _settled_next(
    valset: Sequence[Example],
    scored: Mapping[str, float],
    outstanding: set[str],
    incumbent: Mapping[str, float],
    order: Sequence[Example],
    sizes: Sequence[int],
    rung: int,
    left: int,
) -> list[Example] | None:
    """The examples the sure leader of rung ``rung`` (see :func:`_ahead_of_sure_leader`) is sure to run
    in its next step, whatever its ``outstanding`` answers give; ``None`` while it might not go on.

    After its rung, the leader is dropped only when clearly worse than the pick, which
    :func:`cannot_be_clearly_worse` rules out; it then heads the next rung's order, so enters it (half of
    the racers, rounded up, is at least one) when the allowance ``left`` pays for its own halving plan
    (:func:`affordable` of the first racer alone), whose cost only grows with the examples it lacks, so it
    is checked with every answer still out counted as lacking (an example an LM failure leaves unscored is
    run again). The next step runs the examples of its part of the race order (the whole validation set
    for a full evaluation) that the racer lacks: surely those it lacks now that are not out.
    """
    if not cannot_be_clearly_worse(scored, outstanding, incumbent):
        return None
    if affordable([rung_increments(order, sizes, rung + 1, scored)], left) < 1:
        return None
    size = sizes[rung + 1]
    part = valset if size == len(order) else order[:size]
    return [e for e in part if e.id not in scored and e.id not in outstanding]


def _dropped(
    loop: SearchLoop,
    choice: dict[str, int],
    incumbent: Mapping[str, float],
    leader: Mapping[str, float] | None,
) -> bool:
    scores = loop.scores_of(choice)
    if clearly_worse(scores, incumbent) or (leader is not None and clearly_worse(scores, leader)):
        loop.raced_out.add(key_of(choice))
        return True
    return False


def _rung_key(loop: SearchLoop, race: int, rung: int, choice: Mapping[str, int]) -> str:
    """The journal key of ``choice``'s rung: the race's number and the trials recorded when it ran (a call
    with a raised limit runs more trials first, then races of the same numbers on other evidence)."""
    return f"{race}@{len(loop.trials)}:{rung}:{_choice_json(choice)}"


async def _rung(
    loop: SearchLoop,
    race: int,
    rung: int,
    choice: dict[str, int],
    examples: list[Example],
    on_result: OnResult | None = None,
) -> RungEval:
    async def compute() -> RungEval:
        evaluation = await loop.outage.evaluate(
            partial(loop.evaluate_choice, choice, on_result=on_result),
            examples,
            f"rung {rung + 1} of race {race + 1}",
        )
        return RungEval(
            race=race,
            rung=rung,
            choice=dict(choice),
            example_ids=tuple(e.id for e in examples),
            scores=evaluation.scores,
            score=evaluation.mean,
            n_failed=evaluation.n_failed,
            n_unscored=evaluation.n_unscored,
            lm_failures={r.example_id: r.error or "LM failure" for r in evaluation.results if r.lm_failure},
        )

    result = await loop.memo(
        "race", _rung_key(loop, race, rung, choice), compute, rung_to_json, rung_from_json
    )
    if dict(result.choice) != choice or result.example_ids != tuple(e.id for e in examples):
        raise JournalError(
            f"the journal's rung {rung + 1} of race {race + 1} scored {dict(result.choice)} on "
            f"{len(result.example_ids)} examples, this run scores {choice} on {len(examples)}: the run_dir "
            "belongs to a different run; pass resume=False to start over"
        )
    return result
