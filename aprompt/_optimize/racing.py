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
  (the upper end of the one-sided 95 % interval of
  :func:`~aprompt._optimize.paired_evidence.paired_difference` below 0, on at least 10 examples) is
  dropped. Racers that reach the last rung have a full evaluation
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

import logging
import math
from functools import partial
from typing import TYPE_CHECKING

from aprompt._optimize.final_pick import key_of
from aprompt._optimize.race_bounds import cannot_be_clearly_worse, clearly_worse
from aprompt._optimize.race_plan import (
    FIRST_STAGE_SHARE,
    MAX_ENTRANTS,
    MIN_PERIODIC_RACERS,
    RUNG_SHARES,
    affordable,
    first_stage_size,
    race_order,
    racers_affordable,
    rung_increments,
    rung_sizes,
)
from aprompt._optimize.race_run import run_race
from aprompt._optimize.staged_trial import StagedRun, staged_evaluation

if TYPE_CHECKING:
    from aprompt._optimize.search import SearchLoop

# The parts of a race, each in its own module, are named here too: this module is where racing starts.
__all__ = [
    "FIRST_STAGE_SHARE",
    "MAX_ENTRANTS",
    "MIN_PERIODIC_RACERS",
    "RUNG_SHARES",
    "TIME_MARGIN",
    "StagedRun",
    "affordable",
    "cannot_be_clearly_worse",
    "clearly_worse",
    "final_races",
    "first_stage_size",
    "later_race_sure",
    "plan_left",
    "planned_full_evals",
    "race_order",
    "racers_affordable",
    "run_race",
    "rung_increments",
    "rung_sizes",
    "search_stops",
    "staged_evaluation",
    "within_budget",
    "within_time",
]

logger = logging.getLogger("aprompt")

#: How much longer than the search's pace says the last evaluation may take, under ``max_time``.
TIME_MARGIN = 1.5

#: How much more than the rest of the plan needs, at the cost per program run measured so far, the
#: budget must pay for before a limit is taken to be unable to stop the run short of its plan: the cost
#: of a run can grow as the search goes on (longer demos, parse retries).
BUDGET_MARGIN = 1.1


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
    if not late and loop.time_limited and allowance > 0:
        if loop.decided(f"final race in one step:{loop.races_started}", partial(_no_time_to_race, loop)):
            await _one_full_evaluation(loop)
            return
    while allowance > 0:
        if search_stops(loop):
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


def search_stops(loop: SearchLoop) -> bool:
    """Whether the search's evaluations end here: it was stopped, a limit or an outage stops it, or
    nothing can score."""
    return loop.stopped is not None or loop.should_stop() is not None or loop.stops_as_nothing_scores()


def _no_time_to_race(loop: SearchLoop) -> int:
    """1 when the time left under ``max_time`` is shorter than a race's rungs take, each about as long as
    a trial (the search's median), else 0 (and 0 before any trial this call ran was told)."""
    wait = loop.trial_seconds
    if wait is None:
        return 0
    return int(loop.seconds_left() < len(rung_sizes(len(loop.valset))) * wait)


async def _one_full_evaluation(loop: SearchLoop) -> None:
    """The final evaluation when the time left pays for no race: the most promising combination's full
    evaluation, all its examples at once (one wait for the slowest answer, where a race waits once a
    rung), so that the pick can weigh a searched program the deadline would otherwise cut."""
    if search_stops(loop):
        return
    entrants = _final_entrants(loop)
    if not entrants:
        return
    logger.info(
        "aprompt: max_time: %.1f s left, too little for a race: the most promising combination is fully "
        "evaluated instead",
        loop.seconds_left(),
    )
    choice = dict(entrants[0])
    await loop.full_evaluation(choice, known=loop.scores_of(choice))


def plan_left(loop: SearchLoop) -> int:
    """Program runs the plan has left for evaluations: its full evaluations and trials, less those
    spent."""
    n = len(loop.valset)
    return planned_full_evals(loop) * n + loop.n_trials * min(loop.minibatch_size, n) - loop.spent


def planned_full_evals(loop: SearchLoop) -> int:
    """Full evaluations the plan counts: the baseline's and one every ``full_eval_every`` trials."""
    return 1 + math.ceil(loop.n_trials / loop.full_eval_every)


def later_race_sure(loop: SearchLoop, point: int) -> bool:
    """Whether nothing can stop the run before a later race spends what a periodic race at ``point``
    keeps for it: no limit on calls, tokens, cost or time (``SearchLoop.go_ahead``), or limits the
    rest of the plan stays well within (:data:`BUDGET_MARGIN` at the measured cost per program run;
    :data:`TIME_MARGIN` for its runs at the search's pace and its waits for a slowest answer, each as
    long as a trial), with a confirmation's runs besides.

    A limit far above what the run needs then decides nothing: the run returns the program it returns
    without one. Journaled (``SearchLoop.decided``): a resumed run under the same limits decides the same.
    """
    if loop.go_ahead:
        return True
    rest = max(0, plan_left(loop)) + loop.confirmation_kept

    def sure() -> int:
        affordable = loop.runs_affordable()
        if affordable is not None and affordable < math.ceil(rest * BUDGET_MARGIN):
            return 0
        if loop.time_limited:
            pace, wait = loop.runs_per_second, loop.trial_seconds
            if pace is None or wait is None:
                return 0
            # The runs at the search's pace, and the waits for a slowest answer: the trials left, a wave
            # of parallel trials at a time, and two races' rungs (a later periodic one and the last).
            waves = math.ceil(max(0, loop.n_trials - len(loop.trials)) / max(1, loop.parallel_trials))
            needed = rest / pace + (waves + 2 * len(rung_sizes(len(loop.valset)))) * wait
            if loop.seconds_left() < TIME_MARGIN * needed:
                return 0
        return 1

    return bool(loop.decided(f"later race sure:{point}", sure))


def within_budget(loop: SearchLoop, runs: int, keep: int = 0) -> int:
    """``runs``, or fewer: the program runs the rest of the run's budget pays for, less ``keep``."""
    affordable = loop.runs_affordable()
    if affordable is None:
        return runs
    return _granted(loop, runs, max(0, min(runs, affordable - keep)))


def _final_allowance(loop: SearchLoop, runs: int) -> int:
    """:func:`within_budget` for the final race: it leaves the runs kept for a confirmation
    (``loop.confirmation_kept``) only where one full evaluation is left beside them; else the race comes
    first (a confirmation needs a fully evaluated challenger, or the pick is decided without one). The
    budget is read once."""
    affordable = loop.runs_affordable()
    if affordable is None:
        return runs
    keep = loop.confirmation_kept if affordable - loop.confirmation_kept >= len(loop.valset) else 0
    return _granted(loop, runs, max(0, min(runs, affordable - keep)))


def _granted(loop: SearchLoop, runs: int, granted: int) -> int:
    """``granted`` of the ``runs`` asked for; when fewer, the limit that trimmed them is told
    (``loop.limit_bound``): a later call that raises it cannot replay the run."""
    if granted < runs:
        loop.limit_bound(loop.binding_limit())
    return granted


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
