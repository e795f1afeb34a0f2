"""What every strategy shares during one run: inputs, LMs, events, per-phase usage, and the run limits.

Limits: the run's :class:`~aprompt.lm._metering.RequestMeter` counts every request of the run (any LM);
:meth:`RunContext.admit_step` refuses a step the remaining budget cannot pay for, and
:meth:`RunContext.run_strategy` turns a refusal (of a step, or of a request by the meter) into a stop
with the best program so far (:mod:`aprompt._optimize.run_stop`). What was spent is journaled after every
step (see :mod:`aprompt.run._limits`), with what a stop would leave unjournaled
(:mod:`aprompt._optimize.step_ledger`); the steps a limit refused are journaled too
(:mod:`aprompt._optimize.refusals`). What a step is expected to spend, and which limit cannot pay for it,
is :mod:`aprompt._optimize.step_admission`'s arithmetic; the phases' timing, usage and events are
:mod:`aprompt._optimize.run_phases`'.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from aprompt._errors import ConfigError, JournalError
from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.confirmation import runs_kept_for_confirmation
from aprompt._optimize.evaluate import Metric
from aprompt._optimize.events import Event, EventCallback
from aprompt._optimize.examples import Example
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutagePolicy
from aprompt._optimize.propose import Grounding
from aprompt._optimize.refusals import REFUSAL_KIND, journal_refusal, limit_value, refused_before
from aprompt._optimize.result import PhaseUsage
from aprompt._optimize.run_phases import EventSink, PhaseLog
from aprompt._optimize.run_stop import limit_reached_in, stopped_outcome
from aprompt._optimize.search_records import FullEval, RungEval, SearchOutcome, Trial
from aprompt._optimize.step_admission import affordable_by_limit, judge_step
from aprompt._optimize.step_commitments import StepCommitments
from aprompt._optimize.step_ledger import StepLedger
from aprompt._slots import Slots
from aprompt.lm._metering import BudgetKept, LimitReached, RequestMeter, measuring, metering
from aprompt.lm.types import LM
from aprompt.lm.usage import UsageSnapshot
from aprompt.program.predictor import Predict
from aprompt.run._limits import (
    SPENT_KIND,
    RunCosts,
    RunLimits,
    bound_limits,
    inexact_resume,
    meter_for,
    unaffordable,
)
from aprompt.run._preflight import check_limits, first_step_runs
from aprompt.run.journal import RunJournal

if TYPE_CHECKING:
    from aprompt._optimize.bootstrap import DemoSet
    from aprompt._optimize.search import SearchLoop
    from aprompt._optimize.strategies.base import Strategy

#: The journal kind of the unoptimized program's evaluation started beside the bootstrap
#: (:mod:`aprompt._optimize.strategies.pipeline`).
BASELINE_KIND = "baseline_eval"

#: Step kinds that score programs; every other step (bootstrap, proposals) keeps the budget of the
#: baseline's evaluation and one mini-batch untouched.
_SCORING_STEPS = frozenset({"trial", "full_eval", "race", BASELINE_KIND, "reference_eval"})
#: Journal kind of a decision that depends on what the run has spent so far (``RunContext.decided``).
DECISION_KIND = "decided"

T = TypeVar("T")

# Imported from here by the strategies and the run's report.
__all__ = ["BASELINE_KIND", "DECISION_KIND", "REFUSAL_KIND", "RunContext", "limit_reached_in"]


@attrs.define
class _StepRuns:
    """The program runs of the step a :meth:`RunContext.memo` is computing, when its result does not tell
    them (``None``: read them from the result)."""

    runs: int | None = None


# The step being computed in this task (and in the tasks it starts): steps overlap, so what one step
# reports of its runs must not reach another.
_STEP_RUNS: contextvars.ContextVar[_StepRuns | None] = contextvars.ContextVar(
    "aprompt_step_runs", default=None
)


@attrs.define
class RunContext:
    """One run's shared inputs and bookkeeping (created by :func:`aprompt.optimize`)."""

    program: object
    predictors: Sequence[tuple[str, Predict]]
    trainset: Sequence[Example]
    valset: Sequence[Example]
    metric: Metric
    budget: Budget
    seed: int
    lm: LM | None
    proposer_lm: LM
    teacher_lm: LM | None
    grounding: Grounding
    concurrency: int
    on_event: EventCallback | None
    bootstrap_threshold: float = 1.0
    #: Whether the strategy's plan has mini-batch trials (else its first step is a full evaluation).
    plans_trials: bool = True
    journal: RunJournal | None = None
    limits: RunLimits = attrs.field(factory=RunLimits)
    stopped_by: str | None = None
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY
    phases: list[PhaseUsage] = attrs.field(factory=list)
    dropped: list[tuple[str, int, str]] = attrs.field(factory=list)
    failures: dict[str, str] = attrs.field(factory=dict)
    #: The search loop of the run, once a strategy made one: what a stopped run returns comes from it.
    search_loop: SearchLoop | None = None
    #: The unoptimized program's full evaluation once scored (it may be scored before the search loop
    #: exists, beside the bootstrap: :mod:`aprompt._optimize.strategies.pipeline`).
    baseline: FullEval | None = None
    meter: RequestMeter = attrs.field(init=False)
    costs: RunCosts = attrs.field(init=False)
    #: The labeled-only demo set per predictor name, built once a run (it walks the trainset) for the
    #: warm-up, the hand-written reference and the bootstrap (``strategies.steps.labeled_set_of``).
    labeled_sets: dict[str, DemoSet] = attrs.field(factory=dict, init=False)
    #: Admitted steps (journal kind, key) that have not finished: steps overlap, so each admission
    #: counts what the others are still expected to spend.
    _commitments: StepCommitments = attrs.field(factory=StepCommitments, init=False)
    #: ``on_event`` as the run tells it events (none after it raised).
    _events: EventSink = attrs.field(init=False)
    #: The run's phases as they start and end (the records are ``phases``).
    _phases: PhaseLog = attrs.field(init=False)
    _limiter: Slots | None = attrs.field(default=None, init=False)
    #: Program runs the search keeps for confirming its pick under a limit that can refuse steps
    #: (:func:`~aprompt._optimize.confirmation.runs_kept_for_confirmation`; 0 on a large validation set).
    confirmation_kept: int = attrs.field(init=False)
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
    _ledger: StepLedger = attrs.field(factory=StepLedger, init=False)

    def __attrs_post_init__(self) -> None:
        self._events = EventSink(self.on_event)
        self._phases = PhaseLog(self.phases, self._events, self.journal)
        self.confirmation_kept = runs_kept_for_confirmation(self.trainset, self.valset)
        record = self.journal.latest(SPENT_KIND) if self.journal is not None else None
        runs, what = self.first_trial_runs()
        try:
            self.meter, self.costs = meter_for(
                self.limits,
                record,
                on_reserve=self._reserve,
                on_answers=self._record_answers,
                first_run_budget=(runs, what),
            )
            self._inexact, lowered = inexact_resume(self.limits, record)
            self._ledger = StepLedger.resumed(record)
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

    @property
    def limiter(self) -> Slots:
        """Program runs in flight at once (``concurrency``), shared by the run's overlapping steps."""
        if self._limiter is None:
            self._limiter = Slots(max(1, self.concurrency))
        return self._limiter

    def first_trial_runs(self) -> tuple[int, str]:
        """Program runs that score the first searched program beside the baseline, described
        (:func:`~aprompt.run._preflight.first_step_runs`)."""
        return first_step_runs(len(self.valset), self.budget.minibatch_size, trials=self.plans_trials)

    def check_limits(self) -> None:
        """:func:`~aprompt.run._preflight.check_limits` with the calls per run measured by earlier calls
        of this run (a resumed run knows them before it spends anything).

        Raises:
            ConfigError: as that check; or ``max_cost`` is set and earlier calls of this run spent
                tokens on a model ``prices`` has no entry for.
        """
        runs, what = self.first_trial_runs()
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

    def usage(self) -> UsageSnapshot:
        """Everything the run's meter counted, for any LM (earlier calls of a resumed run included)."""
        return self.meter.usage

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
        calls: bool = False,
        ahead: tuple[int, int] = (0, 0),
        keep: int = 0,
        kept_for: str = "the search's last evaluation",
    ) -> None:
        """Refuse a step the remaining budget cannot pay for, by raising
        :class:`~aprompt.lm._metering.LimitReached`.

        Steps overlap (the baseline's evaluation beside the bootstrap, proposals beside the reference's
        evaluation), so the budget a step may use is what remains after the admitted steps still in
        flight have spent what they are expected to; an admitted part stays committed until its
        :meth:`memo` finishes.

        Args:
            what: the step, for the message.
            parts: ``(journal kind, key, size)`` of the step's parts; parts already journaled, or admitted
                and in flight, are free. ``size`` counts program runs, or LM calls when ``calls`` is set.
            ahead: ``(program runs, LM calls)`` of steps not admitted yet that must keep their budget: a
                step started early (the hand-written prompt's evaluation, beside the proposals) is admitted
                only when the budget pays for these too.
            keep: program runs a later step needs (the search's last evaluation): a step the budget pays
                for, but not with these too, is refused with :class:`BudgetKept`, which does not stop the
                run (the search's ``cut_short_by`` names the limit).
            kept_for: what ``keep`` is for, for the message.
        """
        todo_parts = [
            (kind, key, size)
            for kind, key, size in parts
            if size > 0 and not self._journaled(kind, key) and (kind, key) not in self._commitments
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
        reserved = 0 if all(kind in _SCORING_STEPS for kind, _, _ in parts) else self._reserved_runs()
        verdict = judge_step(
            self.meter,
            self.costs,
            self._ledger.discount(),
            self._commitments.outstanding(),
            runs=runs,
            calls=n_calls,
            reserved=reserved,
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
            self._commitments.admit(todo_parts, verdict.own)
            return
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

    def _reserved_runs(self) -> int:
        """Runs kept for the baseline's evaluation and the first mini-batch, while they are to come (and
        not admitted yet: an admitted one is counted as a commitment)."""
        loop = self.search_loop
        baseline_done = self.baseline is not None or (loop is not None and bool(loop.full_evals))
        baseline_done = baseline_done or self._commitments.has_kind(BASELINE_KIND)
        trial_done = loop is not None and bool(loop.trials)
        trial_done = trial_done or self._commitments.has_kind("trial")
        n_val = len(self.valset)
        return (0 if baseline_done else n_val) + (0 if trial_done else min(self.budget.minibatch_size, n_val))

    def hold_steps(self, keys: Sequence[tuple[str, str]]) -> None:
        """Keep the admitted steps ``keys`` (journal kind, key) counted at their estimates, and their cost
        per run out of the measured mean, after they end and until :meth:`retire_steps`: steps that run
        beside others (the search's trials, an evaluation beside them) end at moments timing decides, and
        the admissions made meanwhile would depend on which had ended. Retired where the search's flow
        fixes it (a trial when it is told, an evaluation's steps at its join), every admission depends
        on the seed and the results only: an uninterrupted run and a resumed one admit the same steps."""
        self._commitments.hold(keys)

    def retire_steps(self, keys: Sequence[tuple[str, str]]) -> None:
        """Count what the held steps ``keys`` spent from now on (see :meth:`hold_steps`); a step not held
        (journaled, failed, or never admitted) is left as it is."""
        for runs, used in self._commitments.retire(keys):
            self.costs.add(runs, used)

    def note_runs(self, runs: int) -> None:
        """Tell the step being computed (inside :meth:`memo`) how many program runs it made, when its
        result does not tell them (a bootstrap's runs; ``0`` for a result made by another step): what a
        program run costs is measured from them."""
        step = _STEP_RUNS.get()
        if step is not None:
            step.runs = runs

    def runs_affordable(self) -> int | None:
        """Program runs the rest of the budget pays for (at the measured cost per run), after what the
        admitted steps in flight are still expected to spend; ``None`` without a limit on calls, tokens or
        cost."""
        self._decides_on_spending()
        return min(self._affordable_by_limit().values(), default=None)

    def binding_limit(self) -> str | None:
        """The limit of :meth:`runs_affordable` that pays for the fewest program runs (``"max_lm_calls"``,
        ``"max_tokens"`` or ``"max_cost"``), or ``None`` without one; it names the limit, deciding
        nothing."""
        affordable = self._affordable_by_limit()
        return min(affordable, key=affordable.__getitem__) if affordable else None

    def _affordable_by_limit(self) -> dict[str, int]:
        """:meth:`runs_affordable` for each limit on calls, tokens or cost that is set."""
        return affordable_by_limit(
            self.meter,
            self.costs,
            self._ledger.discount(),
            self._commitments.outstanding(),
            self._fresh_run_ratio(),
        )

    def admit_trial(self, what: str, parts: Sequence[tuple[str, str, int]]) -> None:
        """:meth:`admit_step` for a trial under a limit: it keeps one full evaluation's program runs (at
        the cost of runs no cache answers) for the search's last evaluation, and on a small validation
        set those of a confirmation of the pick
        (:func:`~aprompt._optimize.confirmation.runs_kept_for_confirmation`)."""
        keep = math.ceil((len(self.valset) + self.confirmation_kept) * self._fresh_run_ratio())
        confirming = " and a confirmation of its pick" if self.confirmation_kept else ""
        kept_for = f"the search's last evaluation{confirming}"
        self.admit_step(what, parts, keep=keep, kept_for=kept_for)

    def _fresh_run_ratio(self) -> float:
        """How much more a program run of a new combination costs than the run's mean so far: the mean
        counts cache hits (a stage whose prompt another combination shares), a new combination's run
        sends a request per predictor."""
        per_run = self.costs.calls_per_run
        return max(1.0, len(self.predictors) / per_run) if per_run else 1.0

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

    def _check_own_limit(self) -> None:
        """A resumed run counts the requests a stop caught in flight twice: when that alone brought it to
        a limit the uninterrupted run had not reached, the meter may have refused what that run sent, and
        the run may have ended otherwise."""
        reached = self.meter.reached()
        if self._ledger.waste and self.diverged is None and reached in ("max_lm_calls", "max_tokens"):
            if unaffordable(self.meter, (0.0, 0.0, 0.0), self._ledger.discount()) is None:
                self.diverged = (
                    f"a stop mid-step, whose {self._ledger.waste} requests then in flight, sent again, "
                    f"brought it to {reached} before the uninterrupted run would have got there"
                )

    def _spent_record(self, requests: int | None = None, *, final: bool = False) -> dict[str, Any]:
        """The ``spent`` record of the run now (:meth:`StepLedger.spent_record`)."""
        bound = dict(self._bound)
        reached = self.meter.reached()  # a spent limit refuses every request: it stops the run
        value = limit_value(self.limits, reached) if reached is not None else None
        if reached is not None and value is not None:
            bound[reached] = float(value)
        return self._ledger.spent_record(
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

    async def run_strategy(self, strategy: Strategy) -> tuple[Candidates, SearchOutcome]:
        """Run ``strategy`` on this context under the run's meter; when a limit refuses a step or a
        request, the step is abandoned and the best program so far is returned (``stopped_by`` names the
        limit).

        Raises:
            RunLimitError: a limit stopped the run before the baseline was scored.
            ConfigError: the program's first run showed ``max_lm_calls`` cannot pay for one trial.
        """
        try:
            with metering(self.meter):
                try:
                    outcome = await strategy.run(self)
                except BaseException as exc:
                    refusal = limit_reached_in(exc)
                    if refusal is None:
                        raise
                else:
                    self._ledger.ended_whole = True
                    await self._phases.finish_cut()
                    return outcome
            # The steps the limit dropped are the stop's, as in the uninterrupted run: a resume under the
            # same limit replays it.
            self._ledger.ended_whole = True
            stopped = await stopped_outcome(self, refusal)
            await self._phases.finish_cut()
            return stopped
        finally:
            self._check_own_limit()
            self.checkpoint(final=True)

    async def memo(
        self,
        kind: str,
        key: str,
        compute: Callable[[], Awaitable[T]],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> T:
        """``compute()``, or its journaled result when this run already did it (resume).

        Every expensive step goes through here with a key that is a pure function of the run's config
        and the step, so a resumed run re-executes its deterministic flow and reads back what it paid for.
        """
        if self.journal is not None:
            found = self.journal.latest(kind, key)
            if found is not None:
                self._commitments.pop((kind, key))
                try:
                    return decode(found)
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                    raise JournalError(
                        f"run journal {self.journal.path} holds a malformed {kind!r} record ({key!r}): "
                        f"{type(exc).__name__}: {exc}; use resume=False to start over",
                        path=str(self.journal.path),
                    ) from None
        outermost = _STEP_RUNS.get() is None
        step_id = f"{kind}:{key}"
        # Run again after a stop left it unfinished: the answers it had then come from the cache, free,
        # but the uninterrupted run paid for them, so they count as its own (what a program run costs,
        # and what the step still has to spend, are measured as in that run).
        before = None
        if outermost:
            before = self._ledger.take(step_id)
        step = _StepRuns()
        token = _STEP_RUNS.set(step)
        try:
            with measuring() as used:
                self._commitments.started((kind, key), used)
                if before is not None:
                    used.requests += before[1]
                    used.calls += before[1]  # answered then: not the cache hits they are now
                    used.settled += before[1]
                    used.prompt_tokens += before[2]
                    used.completion_tokens += before[3]
                if outermost:
                    self._ledger.open[step_id] = used
                try:
                    value = await compute()
                except BaseException:
                    if outermost:
                        self._ledger.failed(step_id, used)
                    raise
                finally:
                    self._ledger.open.pop(step_id, None)
        finally:
            _STEP_RUNS.reset(token)
            # Ended (or failed): what it spent is in the meter now, whether admitted before the step
            # started or inside it (a screen admits itself).
            ended = self._commitments.pop((kind, key))
        runs = self._program_runs(value) if step.runs is None else step.runs
        if ended is not None and ended.held:
            # Counted at its estimate, and its cost per run unmeasured, until it is retired.
            self._commitments.end_held((kind, key), ended, runs, used.snapshot())
        elif runs:
            self.costs.add(runs, used.snapshot())
        if self.journal is not None:
            self.journal.append(kind, encode(value), key=key)
            self.checkpoint()
        return value

    def _program_runs(self, value: object) -> int:
        """Program runs a step made, as its result tells them (to measure what one costs)."""
        if isinstance(value, Trial):
            return len(value.example_ids)
        if isinstance(value, FullEval):
            return len(value.scores) + value.n_unscored - value.reused
        if isinstance(value, RungEval):
            return len(value.example_ids)
        return 0

    async def emit(self, event: Event) -> None:
        """Tell ``event`` to the run's ``on_event`` callback."""
        await self._events(event)

    def phase(self, name: str, detail: str = "") -> AbstractAsyncContextManager[None]:
        """Time a phase and record its LM usage; emits PhaseStarted/PhaseFinished.

        Phases may overlap (steps start the moment their inputs exist): a phase's usage is what the
        code inside its block, and the tasks started there, spent (so the phases' usages add up to the
        run's), and it is listed in ``phases`` in the order phases started, with its start time.
        """
        return self._phases.phase(name, detail)
