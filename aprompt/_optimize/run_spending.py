"""The run's limits bookkeeping (``RunContext.spending``): what it has spent, what its steps in flight are
expected to spend, and which steps the limits admit.

The run's :class:`~aprompt.lm._metering.RequestMeter` counts every request of the run (any LM);
:meth:`RunSpending.admit_step` refuses a step the remaining budget cannot pay for. What was spent is
journaled after every step (see :mod:`aprompt.run._limits`), with what a stop would leave unjournaled
(:mod:`aprompt._optimize.step_ledger`); the steps a limit refused are journaled too
(:mod:`aprompt._optimize.refusals`). What a step is expected to spend, and which limit cannot pay for it,
is :mod:`aprompt._optimize.step_admission`'s arithmetic; a step's spending is counted as it ends by
:mod:`aprompt._optimize.step_memo`. After a resume that could not replay what the run spent, the first
decision made on it marks the run ``diverged``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from aprompt._errors import ConfigError, JournalError
from aprompt._optimize.refusals import journal_refusal, limit_value, refused_before
from aprompt._optimize.step_admission import affordable_by_limit, judge_step
from aprompt._optimize.step_commitments import StepCommitments
from aprompt._optimize.step_ledger import StepLedger
from aprompt.lm._limit_reached import BudgetKept, LimitReached
from aprompt.lm._metering import RequestMeter
from aprompt.run._limits import (
    SPENT_KIND,
    RunCosts,
    RunLimits,
    bound_limits,
    inexact_resume,
    meter_for,
    unaffordable,
)
from aprompt.run._preflight import check_limits
from aprompt.run.journal import RunJournal

#: Journal kind of a decision that depends on what the run has spent so far (``RunSpending.decided``).
DECISION_KIND = "decided"


@attrs.define
class RunSpending:
    """One run's limits bookkeeping; see the module docstring. ``first_runs``: the program runs that score
    the first searched program beside the baseline, described
    (:func:`~aprompt.run._preflight.first_step_runs`)."""

    limits: RunLimits
    journal: RunJournal | None
    first_runs: tuple[int, str]
    #: The first limit that stopped the run, once one did.
    stopped_by: str | None = None
    meter: RequestMeter = attrs.field(init=False)
    costs: RunCosts = attrs.field(init=False)
    #: Admitted steps (journal kind, key) that have not finished: steps overlap, so each admission
    #: counts what the others are still expected to spend.
    commitments: StepCommitments = attrs.field(factory=StepCommitments, init=False)
    #: Why the run's result may differ from an uninterrupted run's with the same inputs (its limits
    #: decided steps after a resume that could not replay the spending they were decided on, see
    #: :func:`~aprompt.run._limits.inexact_resume`); ``None`` while it cannot. Journaled, so it stays.
    diverged: str | None = attrs.field(default=None, init=False)
    #: Why this call's resume cannot replay what the run spent, while it has decided nothing on it yet.
    _inexact: str | None = attrs.field(default=None, init=False)
    #: The limits that decided something of the run, with their values then (journaled in the ``spent``
    #: records, earlier calls' included): a later call that raises one of them cannot replay the run.
    _bound: dict[str, float] = attrs.field(factory=dict, init=False)
    #: What the steps not journaled have spent, for the ``spent`` records and a resumed run's decisions.
    ledger: StepLedger = attrs.field(factory=StepLedger, init=False)

    def __attrs_post_init__(self) -> None:
        record = self.journal.latest(SPENT_KIND) if self.journal is not None else None
        try:
            self.meter, self.costs = meter_for(
                self.limits,
                record,
                on_reserve=self._reserve,
                on_answers=self._record_answers,
                first_run_budget=self.first_runs,
            )
            self._inexact, lowered = inexact_resume(self.limits, record)
            self.ledger = StepLedger.resumed(record)
            self._bound = bound_limits(record)
            diverged = record.get("diverged") if record is not None else None
            self.diverged = str(diverged) if diverged is not None else self._inexact if lowered else None
        except (KeyError, TypeError, ValueError) as exc:
            assert self.journal is not None
            raise JournalError(
                f"run journal {self.journal.path} holds a malformed {SPENT_KIND!r} record: "
                f"{type(exc).__name__}: {exc}; use resume=False to start over",
                path=str(self.journal.path),
            ) from None

    def check_limits(self) -> None:
        """:func:`~aprompt.run._preflight.check_limits` with the calls per run measured by earlier calls
        of this run (a resumed run knows them before it spends anything).

        Raises:
            ConfigError: as that check; or ``max_cost`` is set and earlier calls of this run spent
                tokens on a model ``prices`` has no entry for.
        """
        runs, what = self.first_runs
        check_limits(self.limits, [], runs=runs, calls_per_run=self.costs.calls_per_run, what=what)
        if self.limits.max_cost is not None and self.meter.unpriced:
            # Their cost is part of the run's: counted as nothing, max_cost would not hold.
            raise ConfigError(
                f"max_cost is set but prices has no entry for model(s) {sorted(self.meter.unpriced)}, "
                "which earlier calls of this run spent tokens on"
            )

    def limit_reached(self) -> str | None:
        """Check the run's limits (at a safe point); remembers the first one reached."""
        if self.stopped_by is None:
            self.stopped_by = self.meter.reached()
        return self.stopped_by

    def spent(self) -> dict[str, float]:
        """What the run has spent against its limits, earlier calls of a resumed run included."""
        used = self.meter.usage
        return {
            "lm_calls": used.requests,
            "tokens": used.total_tokens,
            "cost": self.meter.cost,
            "seconds": self.meter.seconds,
        }

    def admit_step(
        self,
        what: str,
        parts: Sequence[tuple[str, str, int]],
        *,
        calls: bool,
        reserved: Callable[[], int],
        ahead: tuple[int, int],
        keep: int,
        kept_for: str,
        refusal_keeps: bool = False,
    ) -> None:
        """``RunContext.admit_step``, with ``reserved()``: the program runs kept beside the step for the
        run's first steps still to come.

        Raises:
            LimitReached: the step is refused (``stopped_by`` names the limit).
            BudgetKept: the step is refused to keep ``keep`` runs for a later step, or, with
                ``refusal_keeps``, refused at all: the run goes on to its last evaluation.
        """
        todo_parts = [
            (kind, key, size)
            for kind, key, size in parts
            if size > 0 and not self._journaled(kind, key) and (kind, key) not in self.commitments
        ]
        todo = sum(size for _, _, size in todo_parts)
        if todo == 0:
            return
        refused, kept = refused_before(self.journal, self.limits, todo_parts)
        if refused is not None:
            self.note_bound(refused)
        if refused is not None and kept:
            raise BudgetKept(
                refused, f"{self.meter.describe(refused)}: {what} not started, as when this run stopped"
            )
        if refused is not None:
            self.stopped_by = self.stopped_by or refused
            raise LimitReached(
                refused,
                f"{self.meter.describe(refused)} cannot pay for {what}: it refused the same step when this "
                "run was stopped, at the same limit; raise the limit to go on",
            )
        self._decides_on_spending()
        runs, n_calls = (0, todo) if calls else (todo, 0)
        verdict = judge_step(
            self.meter,
            self.costs,
            self.ledger.discount(),
            self.commitments.outstanding(),
            runs=runs,
            calls=n_calls,
            reserved=reserved(),
            ahead=ahead,
            keep=keep,
        )
        if verdict.kept is not None and verdict.short is not None:
            short = verdict.short
            journal_refusal(self.journal, self.limits, todo_parts, short, kept=True)
            self.note_bound(short)
            raise BudgetKept(
                short,
                f"{self.meter.describe(short)}: {what} not started, to keep about {verdict.kept[0]:.0f} LM "
                f"calls for {kept_for}",
            )
        limit, estimate = verdict.limit, verdict.estimate
        if limit is None:
            self.commitments.admit(todo_parts, verdict.own)
            return
        if refusal_keeps:
            journal_refusal(self.journal, self.limits, todo_parts, limit, kept=True)
            self.note_bound(limit)
            raise BudgetKept(
                limit,
                f"{self.meter.describe(limit)} cannot pay for {what} beside the steps in flight (about "
                f"{estimate[0]:.0f} more LM calls, {estimate[1]:.0f} tokens): it is not started, and the "
                "rest of the budget goes to the search's last evaluation",
            )
        self.stopped_by = self.stopped_by or limit
        journal_refusal(self.journal, self.limits, todo_parts, limit)
        self.note_bound(limit)
        raise LimitReached(
            limit,
            f"{self.meter.describe(limit)} cannot pay for {what} (about {estimate[0]:.0f} more LM calls, "
            f"{estimate[1]:.0f} tokens)",
        )

    def note_bound(self, limit: str | None) -> None:
        """Note that ``limit`` decided something of the run (it refused or trimmed a step, or kept runs
        back for a later one), durably at once: a later call that raises it cannot replay the run
        (:func:`~aprompt.run._limits.inexact_resume`). A limit that is not set, or ``max_time``, is
        ignored."""
        value = limit_value(self.limits, limit) if limit is not None else None
        if limit is None or value is None or self._bound.get(limit) == value:
            return
        self._bound[limit] = float(value)
        if self.journal is not None:
            # Never below the durable reservation, as every record written mid-step.
            requests = max(self.meter.reserved, self.meter.usage.requests)
            self.journal.append(SPENT_KIND, self._spent_record(requests=requests))

    def hold_steps(self, keys: Sequence[tuple[str, str]]) -> None:
        """Keep the admitted steps ``keys`` (journal kind, key) counted at their estimates, and their cost
        per run out of the measured mean, after they end and until :meth:`retire_steps`: steps that run
        beside others (the search's trials, an evaluation beside them) end at moments timing decides, and
        the admissions made meanwhile would depend on which had ended. Retired where the search's flow
        fixes it (a trial when it is told, an evaluation's steps at its join), every admission depends
        on the seed and the results only: an uninterrupted run and a resumed one admit the same steps."""
        self.commitments.hold(keys)

    def retire_steps(self, keys: Sequence[tuple[str, str]]) -> None:
        """Count what the held steps ``keys`` spent from now on (see :meth:`hold_steps`); a step not held
        (journaled, failed, or never admitted) is left as it is."""
        for runs, used in self.commitments.retire(keys):
            self.costs.add(runs, used)

    def runs_affordable(self, fresh_run_ratio: float) -> int | None:
        """Program runs the rest of the budget pays for (a run costing ``fresh_run_ratio`` times the
        measured mean), after what the admitted steps in flight are still expected to spend; ``None``
        without a limit on calls, tokens or cost."""
        self._decides_on_spending()
        return min(self._affordable_by_limit(fresh_run_ratio).values(), default=None)

    def binding_limit(self, fresh_run_ratio: float) -> str | None:
        """The limit of :meth:`runs_affordable` that pays for the fewest program runs (``"max_lm_calls"``,
        ``"max_tokens"`` or ``"max_cost"``), or ``None`` without one; it names the limit, deciding
        nothing."""
        affordable = self._affordable_by_limit(fresh_run_ratio)
        return min(affordable, key=affordable.__getitem__) if affordable else None

    def _affordable_by_limit(self, fresh_run_ratio: float) -> dict[str, int]:
        """:meth:`runs_affordable` for each limit on calls, tokens or cost that is set."""
        return affordable_by_limit(
            self.meter,
            self.costs,
            self.ledger.discount(),
            self.commitments.outstanding(),
            fresh_run_ratio,
        )

    def decided(self, key: str, compute: Callable[[], int]) -> int:
        """``compute()``, journaled under ``key``: a decision that depends on what the run has spent so
        far (timing), made once, so a resumed run replays it (under the same limits: a raised limit
        decides again)."""
        limits = self.limits
        key = f"{key}@{limits.max_lm_calls},{limits.max_tokens},{limits.max_cost},{limits.max_time}"
        if self.journal is not None:
            found = self.journal.latest(DECISION_KIND, key)
            if isinstance(found, int):
                return found
        self._decides_on_spending()
        value = compute()
        if self.journal is not None:
            self.journal.append(DECISION_KIND, value, key=key)
        return value

    def _decides_on_spending(self) -> None:
        """Note a decision made on what the run has spent: after a resume that could not replay that
        (``_inexact``), the run may now go otherwise than the uninterrupted run."""
        if self._inexact is not None and self.diverged is None:
            self.diverged = self._inexact

    def check_own_limit(self) -> None:
        """A resumed run counts the requests a stop caught in flight twice: when that alone brought it to
        a limit the uninterrupted run had not reached, the meter may have refused what that run sent, and
        the run may have ended otherwise (then it is ``diverged``)."""
        reached = self.meter.reached()
        if self.ledger.waste and self.diverged is None and reached in ("max_lm_calls", "max_tokens"):
            if unaffordable(self.meter, (0.0, 0.0, 0.0), self.ledger.discount()) is None:
                self.diverged = (
                    f"a stop mid-step, whose {self.ledger.waste} requests then in flight, sent again, "
                    f"brought it to {reached} before the uninterrupted run would have got there"
                )

    def _spent_record(self, requests: int | None = None, *, final: bool = False) -> dict[str, Any]:
        """The ``spent`` record of the run now (:meth:`StepLedger.spent_record`)."""
        bound = dict(self._bound)
        reached = self.meter.reached()  # a spent limit refuses every request: it stops the run
        value = limit_value(self.limits, reached) if reached is not None else None
        if reached is not None and value is not None:
            bound[reached] = float(value)
        return self.ledger.spent_record(
            self.meter, self.costs, requests=requests, final=final, diverged=self.diverged, bound=bound
        )

    def _journaled(self, kind: str, key: str) -> bool:
        return self.journal is not None and self.journal.latest(kind, key) is not None

    def _reserve(self, meter: RequestMeter) -> None:
        # Durable before the request is sent: a crash then never forgets a request that may have been sent.
        if self.journal is not None:
            self.journal.append(SPENT_KIND, self._spent_record(requests=meter.reserved))

    def _record_answers(self, meter: RequestMeter) -> None:
        # Under a token or cost limit, the tokens of answers to steps still running are journaled too:
        # after a crash a resumed run misses fewer than a chunk of answers, not a whole step's. The
        # requests recorded never fall below the durable reservation.
        if self.journal is not None:
            requests = max(meter.reserved, meter.usage.requests)
            self.journal.append(SPENT_KIND, self._spent_record(requests=requests))

    def checkpoint(self, *, final: bool = False) -> None:
        """Journal what the run has spent so far (a resumed run continues from it); ``final``: as the call
        ends, nothing in flight."""
        if self.journal is not None:
            self.journal.append(SPENT_KIND, self._spent_record(final=final))
            self.meter.reserved = self.meter.usage.requests
            self.meter.mark_recorded()
