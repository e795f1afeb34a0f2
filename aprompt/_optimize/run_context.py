"""What every strategy shares during one run: inputs, LMs, events, per-phase usage, and the run limits.

Limits: the run's limits bookkeeping (:mod:`aprompt._optimize.run_spending`, ``RunContext.spending``)
meters every request of the run and admits each step the remaining budget can pay for;
:meth:`RunContext.run_strategy` turns a refusal (of a step, or of a request by the meter) into a stop
with the best program so far (:mod:`aprompt._optimize.run_stop`). Every expensive step is computed once
and journaled (:mod:`aprompt._optimize.step_memo`); the phases' timing, usage and events are
:mod:`aprompt._optimize.run_phases`'.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from aprompt._optimize import step_memo
from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.confirmation import runs_kept_for_confirmation
from aprompt._optimize.evaluate import Metric
from aprompt._optimize.events import Event, EventCallback
from aprompt._optimize.examples import Example
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutagePolicy
from aprompt._optimize.propose import Grounding
from aprompt._optimize.result import PhaseUsage
from aprompt._optimize.run_phases import EventSink, PhaseLog
from aprompt._optimize.run_spending import RunSpending
from aprompt._optimize.run_stop import cancellation_beside_refusals, limit_reached_in, stopped_outcome
from aprompt._optimize.search_records import FullEval, SearchOutcome
from aprompt._slots import Slots
from aprompt.lm._meter_context import metering
from aprompt.lm.types import LM
from aprompt.program.predictor import Predict
from aprompt.run._limits import RunLimits
from aprompt.run._preflight import first_step_runs
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

T = TypeVar("T")


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
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY
    phases: list[PhaseUsage] = attrs.field(factory=list)
    dropped: list[tuple[str, int, str]] = attrs.field(factory=list)
    failures: dict[str, str] = attrs.field(factory=dict)
    #: The search loop of the run, once a strategy made one: what a stopped run returns comes from it.
    search_loop: SearchLoop | None = None
    #: The unoptimized program's full evaluation once scored (it may be scored before the search loop
    #: exists, beside the bootstrap: :mod:`aprompt._optimize.strategies.pipeline`).
    baseline: FullEval | None = None
    #: What the run has spent, and what its limits decided (:mod:`aprompt._optimize.run_spending`).
    spending: RunSpending = attrs.field(init=False)
    #: The labeled-only demo set per predictor name, built once a run (it walks the trainset) for the
    #: warm-up, the hand-written reference and the bootstrap (``strategies.steps.labeled_set_of``).
    labeled_sets: dict[str, DemoSet] = attrs.field(factory=dict, init=False)
    #: ``on_event`` as the run tells it events (none after it raised).
    _events: EventSink = attrs.field(init=False)
    #: The run's phases as they start and end (the records are ``phases``).
    _phases: PhaseLog = attrs.field(init=False)
    _limiter: Slots | None = attrs.field(default=None, init=False)
    #: Program runs the search keeps for confirming its pick under a limit that can refuse steps
    #: (:func:`~aprompt._optimize.confirmation.runs_kept_for_confirmation`; 0 on a large validation set).
    confirmation_kept: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._events = EventSink(self.on_event)
        self._phases = PhaseLog(self.phases, self._events, self.journal)
        self.confirmation_kept = runs_kept_for_confirmation(self.trainset, self.valset)
        self.spending = RunSpending(self.limits, self.journal, self.first_trial_runs())

    @property
    def stopped_by(self) -> str | None:
        """The first limit that stopped the run, once one did (``spending.stopped_by``)."""
        return self.spending.stopped_by

    @stopped_by.setter
    def stopped_by(self, limit: str | None) -> None:
        self.spending.stopped_by = limit

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

    def admit_step(
        self,
        what: str,
        parts: Sequence[tuple[str, str, int]],
        *,
        calls: bool = False,
        ahead: tuple[int, int] = (0, 0),
        keep: int = 0,
        kept_for: str = "the search's last evaluation",
        refusal_keeps: bool = False,
        beside: int = 0,
    ) -> None:
        """Refuse a step the remaining budget cannot pay for, by raising
        :class:`~aprompt.lm._limit_reached.LimitReached` (:meth:`RunSpending.admit_step
        <aprompt._optimize.run_spending.RunSpending.admit_step>`).

        Steps overlap (the baseline's evaluation beside the bootstrap, proposals beside the reference's
        evaluation), so the budget a step may use is what remains after the admitted steps still in
        flight have spent what they are expected to; an admitted part stays committed until its
        :meth:`memo` finishes. A step that scores no program keeps the budget of the baseline's
        evaluation and the first mini-batch while they are to come.

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
            refusal_keeps: a step the budget cannot pay for is refused with :class:`BudgetKept` too (a
                periodic evaluation beside the trials: the trials end and the run goes on to the search's
                last evaluation, on what is left), not with :class:`LimitReached`, which stops the run.
            beside: program runs of steps that may start beside this one (the trials beside a periodic
                evaluation): the budget must pay for them too to admit it, but they are not committed
                with it (each is committed when admitted itself).
        """
        scoring = all(kind in _SCORING_STEPS for kind, _, _ in parts)
        self.spending.admit_step(
            what,
            parts,
            calls=calls,
            reserved=(lambda: beside) if scoring else (lambda: beside + self._reserved_runs()),
            ahead=ahead,
            keep=keep,
            kept_for=kept_for,
            refusal_keeps=refusal_keeps,
        )

    def admit_evaluation_step(self, what: str, parts: Sequence[tuple[str, str, int]], beside: int) -> None:
        """:meth:`admit_step` for a periodic evaluation's step beside the trials (``beside``: the program
        runs of the trials that may start beside it): one the budget cannot pay for is refused with
        :class:`BudgetKept`, so the trials end and the run goes on to the search's last evaluation."""
        self.admit_step(what, parts, refusal_keeps=True, beside=beside)

    def _reserved_runs(self) -> int:
        """Runs kept for the baseline's evaluation and the first mini-batch, while they are to come (and
        not admitted yet: an admitted one is counted as a commitment)."""
        loop = self.search_loop
        commitments = self.spending.commitments
        baseline_done = self.baseline is not None or (loop is not None and bool(loop.full_evals))
        baseline_done = baseline_done or commitments.has_kind(BASELINE_KIND)
        trial_done = loop is not None and bool(loop.trials)
        trial_done = trial_done or commitments.has_kind("trial")
        n_val = len(self.valset)
        return (0 if baseline_done else n_val) + (0 if trial_done else min(self.budget.minibatch_size, n_val))

    def admit_trial(self, what: str, parts: Sequence[tuple[str, str, int]]) -> None:
        """:meth:`admit_step` for a trial under a limit: it keeps one full evaluation's program runs (at
        the cost of runs no cache answers) for the search's last evaluation, and on a small validation
        set those of a confirmation of the pick
        (:func:`~aprompt._optimize.confirmation.runs_kept_for_confirmation`)."""
        keep = math.ceil((len(self.valset) + self.confirmation_kept) * self._fresh_run_ratio())
        confirming = " and a confirmation of its pick" if self.confirmation_kept else ""
        kept_for = f"the search's last evaluation{confirming}"
        self.admit_step(what, parts, keep=keep, kept_for=kept_for)

    def runs_affordable(self) -> int | None:
        """Program runs the rest of the budget pays for (at the measured cost per run of a new
        combination), after what the admitted steps in flight are still expected to spend; ``None``
        without a limit on calls, tokens or cost."""
        return self.spending.runs_affordable(self._fresh_run_ratio())

    def binding_limit(self) -> str | None:
        """The limit of :meth:`runs_affordable` that pays for the fewest program runs, or ``None`` without
        one; it names the limit, deciding nothing."""
        return self.spending.binding_limit(self._fresh_run_ratio())

    def _fresh_run_ratio(self) -> float:
        """How much more a program run of a new combination costs than the run's mean so far: the mean
        counts cache hits (a stage whose prompt another combination shares), a new combination's run
        sends a request per predictor."""
        per_run = self.spending.costs.calls_per_run
        return max(1.0, len(self.predictors) / per_run) if per_run else 1.0

    async def run_strategy(self, strategy: Strategy) -> tuple[Candidates, SearchOutcome]:
        """Run ``strategy`` on this context under the run's meter; when a limit refuses a step or a
        request, the step is abandoned and the best program so far is returned (``stopped_by`` names the
        limit).

        Raises:
            RunLimitError: a limit stopped the run before the baseline was scored.
            ConfigError: the program's first run showed ``max_lm_calls`` cannot pay for one trial.
        """
        spending = self.spending
        try:
            with metering(spending.meter):
                try:
                    outcome = await strategy.run(self)
                except BaseException as exc:
                    refusal = limit_reached_in(exc)
                    if refusal is None:
                        if (cancellation := cancellation_beside_refusals(exc)) is not None:
                            raise cancellation from None
                        raise
                else:
                    spending.ledger.ended_whole = True
                    await self._phases.finish_cut()
                    return outcome
            # The steps the limit dropped are the stop's, as in the uninterrupted run: a resume under the
            # same limit replays it.
            spending.ledger.ended_whole = True
            stopped = await stopped_outcome(self, refusal)
            await self._phases.finish_cut()
            return stopped
        finally:
            spending.check_own_limit()
            spending.checkpoint(final=True)

    async def memo(
        self,
        kind: str,
        key: str,
        compute: Callable[[], Awaitable[T]],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> T:
        """``compute()``, or its journaled result when this run already did it (resume): see
        :func:`~aprompt._optimize.step_memo.memo`.

        Every expensive step goes through here with a key that is a pure function of the run's config
        and the step, so a resumed run re-executes its deterministic flow and reads back what it paid for.
        """
        return await step_memo.memo(self.spending, kind, key, compute, encode, decode)

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
