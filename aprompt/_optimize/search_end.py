"""The search's end, after its trials: the plan's last full evaluations (or races), a confirmation of an
undecided pick, and late races on the runs a limit kept for a confirmation that did not run.

The plan's remaining full evaluations (at least one) go to the pick's challengers (with ``racing``, to
races: :func:`~aprompt._optimize.racing.final_races`); when the pick is still undecided, it and its
strongest challengers run on training examples (:mod:`aprompt._optimize.confirmation`); under a limit
that kept the runs of a confirmation that was not needed, they go to late races, whose combinations are
returned only as the pick of all the evidence (``SearchLoop.decide``). Each step decides the pick again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aprompt._optimize.confirmation import confirm
from aprompt._optimize.final_pick import key_of
from aprompt._optimize.racing import final_races, plan_left, planned_full_evals, search_stops

if TYPE_CHECKING:
    from aprompt._optimize.search import SearchLoop


async def finish_search(loop: SearchLoop) -> None:
    """Spend the plan's last evaluations on the pick's challengers, confirm an undecided pick, then run
    the late races (each only when it applies)."""
    await final_evaluations(loop)
    await confirm_pick(loop)
    await late_races(loop)


async def confirm_pick(loop: SearchLoop) -> None:
    """When the pick is undecided at the end, run it and its strongest challengers on fresh training
    examples, the evidence the pick is decided on again (:mod:`aprompt._optimize.confirmation`)."""
    if not loop.confirmation or loop.confirmations:
        return
    if loop.stopped is not None or loop.should_stop() is not None:
        return
    await confirm(loop, loop.decide(), loop.add_confirmation)
    await loop.decide_again()


async def late_races(loop: SearchLoop) -> None:
    """Under a limit on calls, tokens or cost, the runs the trials kept for a confirmation that did
    not run (the pick was decided without one) go to more races, within what the plan has left: a
    budget kept and left unspent could still have found a better program. The pick is decided
    again: a combination of these races is returned only when it is the pick of all the evidence,
    else the pick decided before them stands (``SearchLoop.decide``)."""
    if not loop.racing or loop.admit_trial is None or not loop.confirmation_kept or loop.confirmations:
        return
    if loop.stopped is not None or loop.should_stop() is not None or plan_left(loop) <= 0:
        return
    loop.before_late = (loop.decide(), len(loop.full_evals))
    await final_races(loop, plan_left(loop), late=True)
    await loop.decide_again()


async def final_evaluations(loop: SearchLoop) -> None:
    """The plan's remaining full evaluations (at least one), on the pick's challengers; with ``racing``,
    races on what the plan has left."""
    if loop.racing:
        await final_races(loop, plan_left(loop))
        return
    for _ in range(max(1, planned_full_evals(loop) - len(loop.full_evals))):
        if search_stops(loop):
            return
        choice = next_for_pick(loop)
        if choice is None:
            return
        await loop.full_evaluation(choice)


def next_for_pick(loop: SearchLoop) -> dict[str, int] | None:
    """While the baseline is kept, its most promising challenger without a full evaluation (the
    evaluation that can settle the undecided); else the best untested by the pooled estimate."""
    current = loop.decide()
    if current.kept_baseline:
        for challenger in current.challengers:
            if key_of(challenger) not in loop.tested:
                return dict(challenger)
    return loop.next_full_evaluation()
