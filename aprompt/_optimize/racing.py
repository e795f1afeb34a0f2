"""Multi-fidelity evaluation: races among the most promising combinations, and trials stopped early.

With ``Budget.racing`` (the default) the search spends what the plan gives its full evaluations — the
validation set once per ``full_eval_every`` trials, plus the baseline's and a last one — in *program
runs*, not in whole full evaluations:

- **Races.** At each periodic evaluation point the most promising combinations without a full
  evaluation (by the pooled estimate of :mod:`aprompt._optimize.pooling`) enter a race. It runs in rungs on
  growing parts of the validation set — its first quarter, half, then all of it, in one seeded order
  shared by every combination and every race — and each racer is scored only on the examples of the rung
  it lacks (its trials' and earlier rungs' scores count). After a rung, a racer whose paired difference
  against the current pick, or against the rung's leader, is clearly negative on their shared examples
  (the upper end of the one-sided 95 % interval of :func:`~aprompt._optimize.final_pick.paired_difference`
  below 0, on at least 10 examples) is dropped. Racers that reach the last rung have a full evaluation
  (a :class:`~aprompt._optimize.search_records.FullEval`, whose scores then include the examples it reused).
  A rung's racers are scored at once, and the last rung's full evaluations run at once; what they
  record is recorded in the racers' order (:mod:`aprompt._optimize.concurrent_steps`), so the race
  decides as if they ran one after another.
- **The allowance.** A race may spend what the plan had given the evaluations up to this point and the
  search has not spent (trials stopped early and reused examples leave some over): a racer enters a rung
  only while the allowance can pay the rung for it and those ahead of it, *and* still complete any one of
  them to a full evaluation; the most promising go first (in the first rung by the pooled estimate, later
  by their mean on the previous rung's examples). The first entrant can always be completed, and the
  run's evaluations never take more program runs than the plan (``estimate_calls``) counts.
- **Races of several.** A point whose allowance pays for fewer than ``MIN_PERIODIC_RACERS`` (2) racers
  keeps it for a later race, where no limit can stop the run before then (``SearchLoop.go_ahead``). A
  race of one is a full evaluation of the combination ranked first, and mini-batches of 12 examples
  often rank the best one seen lower; the same runs spent later race several and keep the best (light
  plan, simulated world: ``bench/results/regret.md``). Under a limit the run may stop first, so each point
  spends what it has: at least the one full evaluation the plain schedule gives, and no more than the
  budget pays for (see :mod:`aprompt._optimize.trial_window`). At the end, the rest of
  the plan goes to races (the pick's untested challengers first while the baseline is kept; when every
  combination the evidence ranks is settled, combinations not tried yet, drawn from the pooled model)
  until no entrant can be completed, and under a limit the runs kept for a confirmation that was not
  needed go to late races the same way.
- **Trials stopped early.** A mini-batch runs in two stages, its first 40 % and then the rest; after the
  first, a trial whose paired difference against the current pick (which has a full evaluation) on those
  examples is clearly negative stops there. Its score is the mean on the examples it ran
  (``Trial.stopped_early``), and that is what the TPE is told.
- **Decisions as soon as the answers in settle them.** A stage or rung waits for its slowest answer, but
  the decision after it often does not: once the answers in show that no ending of those still out (each
  scored anything in [0, 1], or left unscored) can make the paired difference clearly negative
  (:func:`cannot_be_clearly_worse`), a trial's second stage starts at once. Likewise a rung's sure
  leader (a lone racer, or one whose mean on the rung no ending can bring level with another's): when
  its rung cannot drop it nor change the pick, and the allowance pays for its next step even if every
  answer out must be run again, its next step (a rung, or its full evaluation) starts running the
  examples it is sure to run — only where nothing can refuse or stop a step (``SearchLoop.go_ahead``: no
  limit on calls, tokens, cost or time). The step itself is still decided, admitted and journaled after
  the rung, as before, and takes those runs' results (``SearchLoop.run_ahead``) instead of running them
  again. Either way the same examples run, each once, and every record and decision is the same as when
  each waited; only the calls go sooner.

Every step is journaled (trials as ``"trial"``, rungs as ``"race"``, full evaluations as ``"full_eval"``),
and every decision is a pure function of the journaled results and the seed, so a resumed run replays the
same flow.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

import anyio.abc

from aprompt._errors import JournalError
from aprompt._optimize.concurrent_steps import at_once_in_order
from aprompt._optimize.evaluate import Evaluation, ExampleResult, OnResult
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import (
    ALPHA,
    MIN_SHARED,
    Key,
    key_of,
    mean_of,
    paired_difference,
    t_quantile,
)
from aprompt._optimize.search_records import RungEval, rung_from_json, rung_to_json
from aprompt._taskgroups import plain_errors_task_group

if TYPE_CHECKING:
    from aprompt._optimize.outage import OutageGuard
    from aprompt._optimize.search import SearchLoop

logger = logging.getLogger("aprompt")

#: How much longer than the search's pace says the last evaluation may take, under ``max_time``.
TIME_MARGIN = 1.5

#: The rungs of a race before the whole validation set, as shares of it.
RUNG_SHARES = (0.25, 0.5)
#: The most combinations that enter one race.
MAX_ENTRANTS = 8
#: The fewest racers a periodic race is run with, where its allowance can wait (see the module).
MIN_PERIODIC_RACERS = 2
#: The share of a mini-batch run before a trial may stop early.
FIRST_STAGE_SHARE = 0.4


def race_order(valset: Sequence[Example], seed: int) -> list[Example]:
    """The validation set in the seeded order all races share (a rung is a prefix of it)."""
    return random.Random(f"{seed}:race").sample(list(valset), len(valset))


def rung_sizes(n: int) -> list[int]:
    """Examples in each rung, strictly growing, the last the whole validation set of ``n``."""
    return sorted({max(1, math.ceil(share * n)) for share in RUNG_SHARES if share * n < n} | {n})


def first_stage_size(batch_size: int) -> int | None:
    """Examples of a trial's first stage, or ``None`` when the mini-batch is too small to stop early on
    (a first stage below 10 examples could never be clearly losing)."""
    first = math.ceil(FIRST_STAGE_SHARE * batch_size)
    return first if MIN_SHARED <= first < batch_size else None


def clearly_worse(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """``a`` is clearly worse than ``b`` on their shared examples (one-sided 95 % bound below 0)."""
    return paired_difference(a, b, 1.0 - ALPHA).worse()


def affordable(increments: Sequence[Sequence[int]], allowance: int) -> int:
    """How many racers, in order, the current rung can take.

    ``increments`` holds per racer the program runs each remaining rung (the current one first) would
    cost it. Taking ``m`` racers plans successive halving: ``m`` in this rung, then half as many (rounded
    up) in each next one and one in the last, each rung paying for its most expensive racers; the most
    racers whose plan the allowance pays for. So whichever racers survive, one can still be completed.
    """
    taken = 0
    for m in range(1, len(increments) + 1):
        n_rungs = len(increments[0])
        cost = 0
        for j in range(n_rungs):
            k = 1 if j == n_rungs - 1 and j > 0 else math.ceil(m / 2**j)
            cost += sum(sorted((inc[j] for inc in increments[:m]), reverse=True)[:k])
        if cost > allowance:
            break
        taken = m
    return taken


def rung_increments(
    order: Sequence[Example], sizes: Sequence[int], rung: int, known: Mapping[str, float]
) -> list[int]:
    """The program runs each rung from ``rung`` on (the last: the full evaluation) costs a racer whose
    scores are ``known``: the examples of its part of the race ``order`` it lacks."""
    bounds = zip([0, *sizes[rung:-1]], sizes[rung:], strict=True)
    return [sum([e.id not in known for e in order[low:high]]) for low, high in bounds]


def racers_affordable(loop: SearchLoop, entrants: Sequence[Mapping[str, int]], allowance: int) -> int:
    """How many of ``entrants`` (most promising first) a race within ``allowance`` program runs would
    take into its first rung (:func:`affordable`)."""
    order = race_order(loop.valset, loop.seed)
    sizes = rung_sizes(len(loop.valset))
    increments = [rung_increments(order, sizes, 0, loop.scores_of(c)) for c in entrants[:MAX_ENTRANTS]]
    return affordable(increments, allowance) if increments else 0


def _choice_json(choice: Mapping[str, int]) -> str:
    return json.dumps(sorted((name, int(value)) for name, value in choice.items()))


class StagedRun(Protocol):
    """Scores a trial's prompts on examples, telling ``on_result`` each result as it is scored."""

    def __call__(
        self, examples: Sequence[Example], on_result: OnResult | None = None
    ) -> Awaitable[Evaluation]: ...


async def staged_evaluation(
    outage: OutageGuard,
    run: StagedRun,
    batch: Sequence[Example],
    incumbent: Mapping[str, float] | None,
    what: str,
) -> tuple[Evaluation, bool]:
    """A trial's mini-batch in two stages, each concurrent inside; after the first, a trial clearly
    losing to ``incumbent`` (the pick's scores; ``None``: no stopping) stops. Returns the evaluation of
    the examples run, in the batch's order, and whether it stopped early.

    The second stage starts as soon as the first stage's answers in show that the trial cannot stop,
    whatever its answers still out (:func:`cannot_be_clearly_worse`), without waiting for the slowest:
    the same examples run, and the evaluation returned is the same.
    """
    first = first_stage_size(len(batch)) if incumbent is not None else None
    if first is None or incumbent is None:
        return await outage.evaluate(run, batch, what), False
    head, tail = batch[:first], batch[first:]
    rest: list[Evaluation] = []

    async def second_stage() -> None:
        rest.append(await outage.evaluate(run, tail, what))

    async with plain_errors_task_group() as group:
        # Only scored results are final: an example an LM failure left unscored may be run again.
        scored: dict[str, float] = {}
        started = False

        def on_result(result: ExampleResult) -> None:
            nonlocal started
            if result.score is not None:
                scored[result.example_id] = result.score
            if not started and cannot_be_clearly_worse(
                scored, [e.id for e in head if e.id not in scored], incumbent
            ):
                started = True
                group.start_soon(second_stage)

        evaluation = await outage.evaluate(partial(run, on_result=on_result), head, what)
        if clearly_worse(evaluation.scores, incumbent):
            # Never when the second stage started: cannot_be_clearly_worse proved it.
            assert not started, "a trial that started its second stage stopped early"
            return evaluation, True
        if not started:
            started = True
            group.start_soon(second_stage)
    return Evaluation(evaluation.results + rest[0].results), False


def cannot_be_clearly_worse(
    known: Mapping[str, float], outstanding: Iterable[str], other: Mapping[str, float]
) -> bool:
    """Whether ``known`` scores (example id -> score) stay not :func:`clearly_worse` than ``other``
    however the ``outstanding`` examples end: each scored anything in [0, 1] (the metric's range,
    :func:`~aprompt._optimize.evaluate.metric_score`), or left unscored. ``False`` when unsure.

    Why it suffices. Let ``K`` be the known examples shared with ``other``: ``k`` paired differences
    ``d_i = known_i − other_i`` with mean ``m_K`` and sum of squared deviations ``SS``. A completion
    scores ``u`` of the outstanding examples shared with ``other`` (the set ``U``), so ``n = k + u``
    differences with mean ``m``. ``clearly_worse`` needs ``n >= MIN_SHARED`` and ``high < 0``, where
    ``high = min(1, m + q·√TSS)``: ``TSS`` is the sum of squared deviations of all ``n`` from ``m``, and
    ``q = t / √(n·(n − 1)) > 0`` (``t``: the one-sided 95 % quantile, ``n − 1`` degrees of freedom).

    - Each new difference is at least ``−other_i``, so ``m >= m_lo = (k·m_K − the u largest other_i) / n``.
    - ``TSS`` splits into the spreads of ``K`` and ``U`` about their own means plus ``k·(m_K − m)²``
      and ``u·(m_U − m)²``; with ``u·m_U = n·m − k·m_K``, that is ``TSS >= SS + A·(m_K − m)²``,
      ``A = k·n / u`` (``TSS = SS`` and ``m = m_K`` when ``u = 0``).

    So ``high >= min(1, g(m))`` with ``g(m) = m + q·√(SS + A·(m_K − m)²)``, convex in ``m``: its least
    value on ``m >= m_lo`` is at ``m_lo`` when ``q²·A <= 1`` (``g`` never decreases), else at the larger
    of ``m_lo`` and its minimum ``m_K − √(SS / (A·(q²·A − 1)))``. When that least value is above 0 (by a
    margin that covers rounding) for every ``u`` with ``n >= MIN_SHARED``, ``high >= 0`` in every
    completion, and the paired difference is never clearly negative.
    """
    diffs = [known[i] - other[i] for i in known if i in other]
    k = len(diffs)
    mean_k = math.fsum(diffs) / k if k else 0.0
    spread = math.fsum((d - mean_k) ** 2 for d in diffs)
    worst = sorted((other[i] for i in outstanding if i in other and i not in known), reverse=True)
    lost = 0.0  # the sum of the u largest scores of ``other`` on the outstanding examples
    for u in range(len(worst) + 1):
        if u:
            lost += worst[u - 1]
        n = k + u
        if n < MIN_SHARED:
            continue
        q = t_quantile(1.0 - ALPHA, n - 1) / math.sqrt(n * (n - 1))
        if u == 0:
            least = mean_k + q * math.sqrt(spread)
        else:
            a = k * n / u
            low = (k * mean_k - lost) / n
            m = low
            if q * q * a > 1.0:
                m = max(low, mean_k - math.sqrt(spread / (a * (q * q * a - 1.0))))
            least = m + q * math.sqrt(spread + a * (mean_k - m) ** 2)
        if least <= _ROUNDING_MARGIN:
            return False
    return True


#: What :func:`cannot_be_clearly_worse`'s bound must clear: far above the rounding of sums of at most a
#: few thousand differences in [−1, 1], far below any difference a score can make.
_ROUNDING_MARGIN = 1e-9


async def final_races(loop: SearchLoop, left: int, *, late: bool = False) -> None:
    """Races on what the plan has ``left`` (at least one full evaluation's worth, as without racing),
    until no entrant can be completed; under a limit, on no more than the rest of the budget pays for
    (journaled: a resumed run races the same). ``late``: the races after the pick was decided without
    a confirmation, on the runs kept for one (none is kept any more), within what the plan has left."""
    # The late races spend only what the plan has left; the final ones at least one full evaluation.
    allowance = left if late else max(left, len(loop.valset))
    # Journaled under the race's number, and apart for the late races: when the final ones started no
    # race, the late ones start at the same number.
    which = "late" if late else "final"
    planned = allowance
    if loop.admit_trial is not None:  # under a limit that can refuse steps
        share = within_budget if late else _final_allowance
        allowance = loop.decided(f"{which} race runs:{loop.races_started}", partial(share, loop, allowance))
    # The final races on fewer runs than the plan gives them, for the budget: when they run out of
    # those, the limit cut the run short of its plan, and the result says so.
    granted = allowance
    cut_by_budget = not late and granted < planned
    if loop.time_limited and loop.runs_per_second is not None:
        allowance = loop.decided(
            f"{which} race runs in time:{loop.races_started}",
            partial(within_time, loop, allowance, floor=not late),
        )
    while allowance > 0:
        if loop.stopped is not None or loop.should_stop() is not None or loop.stops_as_nothing_scores():
            return
        entrants = _final_entrants(loop)
        if not entrants:
            return
        settled = len(loop.full_evals) + len(loop.raced_out)
        if late and racers_affordable(loop, entrants, allowance):
            late = False  # said once
            logger.info(
                "aprompt: no confirmation ran: the %d program runs left (kept for one) go to a race of %d "
                "more combination(s)",
                allowance,
                len(entrants),
            )
        spent = await run_race(loop, entrants, allowance)
        if spent == 0 and len(loop.full_evals) + len(loop.raced_out) == settled:
            break  # no entrant was affordable
        allowance -= spent
    if cut_by_budget and loop.stopped is None and loop.cut_short_by is None:
        loop.cut_short_by = loop.binding_limit()
        logger.info(
            "aprompt: %s: the final races had %d of the %d program runs the plan gives them",
            loop.cut_short_by,
            granted,
            planned,
        )


def within_budget(loop: SearchLoop, runs: int, keep: int = 0) -> int:
    """``runs``, or fewer: the program runs the rest of the run's budget pays for, less ``keep``."""
    affordable = loop.runs_affordable()
    return runs if affordable is None else max(0, min(runs, affordable - keep))


def _final_allowance(loop: SearchLoop, runs: int) -> int:
    """:func:`within_budget` for the final race: it leaves the runs kept for a confirmation
    (``loop.confirmation_kept``) only where one full evaluation is left beside them; else the race comes
    first (a confirmation needs a fully evaluated challenger, or the pick is decided without one). The
    budget is read once."""
    affordable = loop.runs_affordable()
    if affordable is None:
        return runs
    keep = loop.confirmation_kept if affordable - loop.confirmation_kept >= len(loop.valset) else 0
    return max(0, min(runs, affordable - keep))


def within_time(loop: SearchLoop, runs: int, *, floor: bool = True) -> int:
    """``runs``, or fewer: the program runs the time left under ``max_time`` pays for at the search's
    pace (with its margin); with ``floor``, at least one full evaluation's (the final race's, as without
    racing; never the late races', which spend only what the plan has left), but never more than
    ``runs`` (what the plan and the rest of the budget gave)."""
    pace = loop.runs_per_second
    if pace is None:
        return runs
    fits = min(runs, math.floor(loop.seconds_left() * pace / TIME_MARGIN))
    return max(min(len(loop.valset), runs) if floor else 0, fits)


def _final_entrants(loop: SearchLoop) -> list[dict[str, int]]:
    """The pick's untested challengers while the baseline is kept, then the best by the pooled
    estimate; when there is none, combinations not tried yet (``SearchLoop.drawn_untested``)."""
    current = loop.decide()
    tested = {key_of(f.choice) for f in loop.full_evals}
    first = [
        dict(c)
        for c in (current.challengers if current.kept_baseline else ())
        if key_of(c) not in tested and key_of(c) not in loop.raced_out
    ]
    firsts = {key_of(c) for c in first}
    rest = [c for c in loop.ranked_untested(MAX_ENTRANTS) if key_of(c) not in firsts]
    # Every combination the evidence ranks is settled (a capped run that tried only the reference):
    # the race takes combinations not tried yet, drawn from the pooled model, rather than leave its
    # runs unspent.
    return (first + rest)[:MAX_ENTRANTS] or loop.drawn_untested(MIN_PERIODIC_RACERS, loop.races_started)


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
            [("race", _rung_key(race, rung, c), len(examples)) for c, examples in todo],
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
    above every other racer's greatest (:func:`_mean_range`), however the answers still out end. The
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
        ranges = {key: _mean_range(sums[key], counts[key], len(outstanding[key])) for key in keys}
        for key in keys:
            low = ranges[key][0]
            if all(low > high + _ROUNDING_MARGIN for other, (_, high) in ranges.items() if other != key):
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


def _mean_range(total: float, count: int, out: int) -> tuple[float, float]:
    """The least and greatest mean (as :func:`~aprompt._optimize.final_pick.mean_of` takes it, 0 for no
    scores) of ``count`` scores summing to ``total`` and ``out`` more answers, each scored anything in
    [0, 1] or left unscored: all ``out`` scored 0, and all scored 1 (a mean of scores in [0, 1] is at
    most 1, so each answer scored 1 can only raise it, and each scored 0 only lower it)."""
    n = count + out
    if n == 0:
        return 0.0, 0.0
    return total / n, (total + out) / n


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


def _rung_key(race: int, rung: int, choice: Mapping[str, int]) -> str:
    return f"{race}:{rung}:{_choice_json(choice)}"


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

    result = await loop.memo("race", _rung_key(race, rung, choice), compute, rung_to_json, rung_from_json)
    if dict(result.choice) != choice or result.example_ids != tuple(e.id for e in examples):
        raise JournalError(
            f"the journal's rung {rung + 1} of race {race + 1} scored {dict(result.choice)} on "
            f"{len(result.example_ids)} examples, this run scores {choice} on {len(examples)}: the run_dir "
            "belongs to a different run; pass resume=False to start over"
        )
    return result
