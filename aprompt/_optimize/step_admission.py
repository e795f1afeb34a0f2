"""The arithmetic of the run's limits for its steps (``RunSpending.admit_step``,
``RunSpending.runs_affordable``): what a step is expected to spend beside the admitted steps still in
flight, which limit cannot pay for it (or for it and the runs kept for a later step), and how many program
runs the rest of the budget pays for. Plain functions of the meter, the measured costs, what a resume
leaves out (``discount``, :meth:`~aprompt._optimize.step_ledger.StepLedger.discount`) and the steps in
flight; refusing, journaling and stopping are the run's (:mod:`aprompt._optimize.run_spending`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from aprompt.lm._metering import RequestMeter
from aprompt.run._limits import RunCosts, step_estimate, unaffordable

#: Requests, tokens and cost.
Estimate = tuple[float, float, float]


@attrs.frozen
class Verdict:
    """What :func:`judge_step` found for a step."""

    #: The step's own estimate (committed while it runs, when admitted).
    own: Estimate
    #: The step's estimate with the runs reserved and kept ahead, and what the steps in flight still spend.
    estimate: Estimate
    #: The limit that cannot pay for ``estimate`` (the step is refused), or ``None``.
    limit: str | None
    #: When it is affordable and runs are kept for a later step: their estimate (else ``None``) ...
    kept: Estimate | None = None
    #: ... and the limit that cannot pay for ``estimate`` with them, or ``None``.
    short: str | None = None


def judge_step(
    meter: RequestMeter,
    costs: RunCosts,
    discount: tuple[int, int],
    outstanding: Sequence[Estimate],
    *,
    runs: int,
    calls: int,
    reserved: int,
    ahead: tuple[int, int],
    keep: int,
) -> Verdict:
    """Judge a step of ``runs`` program runs and ``calls`` LM calls: beside it, ``reserved`` and
    ``ahead[0]`` program runs and ``ahead[1]`` calls must be paid for, and the steps in flight are
    counted at what they still spend (``outstanding``); ``keep``: program runs a later step needs."""
    own = step_estimate(meter, costs, runs=runs, calls=calls, discount=discount)
    with_reserve = step_estimate(
        meter, costs, runs=runs + reserved + ahead[0], calls=calls + ahead[1], discount=discount
    )
    estimate = (
        with_reserve[0] + sum(o[0] for o in outstanding),
        with_reserve[1] + sum(o[1] for o in outstanding),
        with_reserve[2] + sum(o[2] for o in outstanding),
    )
    limit = unaffordable(meter, estimate, discount)
    if limit is not None or keep <= 0:
        return Verdict(own, estimate, limit)
    kept = step_estimate(meter, costs, runs=keep, calls=0, discount=discount)
    short = unaffordable(
        meter, (estimate[0] + kept[0], estimate[1] + kept[1], estimate[2] + kept[2]), discount
    )
    return Verdict(own, estimate, None, kept, short)


def affordable_by_limit(
    meter: RequestMeter,
    costs: RunCosts,
    discount: tuple[int, int],
    outstanding: Sequence[Estimate],
    fresh_run_ratio: float,
) -> dict[str, int]:
    """Program runs the rest of the budget pays for under each limit on calls, tokens or cost that is set,
    a run costing ``fresh_run_ratio`` times the measured mean, after what the steps in flight still spend
    (``outstanding``)."""
    estimate = step_estimate(meter, costs, runs=1, calls=0, discount=discount)
    per_run = tuple(cost * fresh_run_ratio for cost in estimate)
    used = meter.usage
    spent = (used.requests - discount[0], used.total_tokens - discount[1], meter.cost)
    limits = (
        ("max_lm_calls", meter.max_requests),
        ("max_tokens", meter.max_tokens),
        ("max_cost", meter.max_cost),
    )
    runs: dict[str, int] = {}
    for i, (name, limit) in enumerate(limits):
        if limit is not None and per_run[i] > 0:
            runs[name] = max(0, math.floor((limit - spent[i] - sum(o[i] for o in outstanding)) / per_run[i]))
    return runs
