"""What every strategy shares during one run: inputs, LMs, events, per-phase usage, and the run limits.

Limits: the run's :class:`~aprompt.lm.metering.RequestMeter` counts every request of the run (any LM);
:meth:`RunContext.admit_step` refuses a step the remaining budget cannot pay for, and
:meth:`RunContext.run_strategy` turns a refusal (of a step, or of a request by the meter) into a stop
with the best program so far. What was spent is journaled after every step (see
:mod:`aprompt.run.limits`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from aprompt._errors import ConfigError, JournalError, RunLimitError
from aprompt.lm.metering import LimitReached, RequestMeter, measuring, metering
from aprompt.lm.types import LM
from aprompt.lm.usage import UsageSnapshot
from aprompt.optimize.budget import Budget
from aprompt.optimize.candidates import Candidates
from aprompt.optimize.evaluate import Metric
from aprompt.optimize.events import Event, EventCallback, PhaseFinished, PhaseStarted
from aprompt.optimize.examples import Example
from aprompt.optimize.outage import DEFAULT_OUTAGE_POLICY, OutagePolicy
from aprompt.optimize.propose import Grounding
from aprompt.optimize.racing import RungEval
from aprompt.optimize.result import PhaseUsage
from aprompt.optimize.search import FullEval, SearchOutcome, Trial
from aprompt.program.predictor import Predict
from aprompt.run.journal import RunJournal
from aprompt.run.limits import (
    SPENT_KIND,
    RunCosts,
    RunLimits,
    meter_for,
    spent_record,
    step_estimate,
    unaffordable,
)
from aprompt.run.preflight import check_limits

if TYPE_CHECKING:
    from aprompt.optimize.search import SearchLoop
    from aprompt.optimize.strategies.base import Strategy

#: Step kinds that score programs; every other step (bootstrap, proposals) keeps the budget of the
#: baseline's evaluation and one mini-batch untouched.
_SCORING_STEPS = frozenset({"trial", "full_eval", "race"})

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
    journal: RunJournal | None = None
    limits: RunLimits = attrs.field(factory=RunLimits)
    stopped_by: str | None = None
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY
    phases: list[PhaseUsage] = attrs.field(factory=list)
    dropped: list[tuple[str, int, str]] = attrs.field(factory=list)
    failures: dict[str, str] = attrs.field(factory=dict)
    #: The search loop of the run, once a strategy made one: what a stopped run returns comes from it.
    search_loop: SearchLoop | None = None
    #: Program runs of the step being computed that its result does not tell (a bootstrap's runs).
    pending_runs: int = 0
    meter: RequestMeter = attrs.field(init=False)
    costs: RunCosts = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        record = self.journal.latest(SPENT_KIND) if self.journal is not None else None
        runs, what = self.first_trial_runs()
        try:
            self.meter, self.costs = meter_for(
                self.limits, record, on_reserve=self._reserve, first_run_budget=(runs, what)
            )
        except (KeyError, TypeError, ValueError) as exc:
            assert self.journal is not None
            raise JournalError(
                f"run journal {self.journal.path} holds a malformed {SPENT_KIND!r} record: "
                f"{type(exc).__name__}: {exc}; use resume=False to start over",
                path=str(self.journal.path),
            ) from None

    def first_trial_runs(self) -> tuple[int, str]:
        """Program runs that score one trial (the baseline's evaluation and one mini-batch), described."""
        n_val, n_batch = len(self.valset), min(self.budget.minibatch_size, len(self.valset))
        what = f"the baseline's evaluation ({n_val} runs) and one mini-batch ({n_batch} runs)"
        return n_val + n_batch, what

    def check_limits(self) -> None:
        """:func:`~aprompt.run.preflight.check_limits` with the calls per run measured by earlier calls
        of this run (a resumed run knows them before it spends anything)."""
        runs, _ = self.first_trial_runs()
        check_limits(self.limits, [], runs=runs, calls_per_run=self.costs.calls_per_run)

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

    def admit_step(self, what: str, parts: Sequence[tuple[str, str, int]], *, calls: bool = False) -> None:
        """Refuse a step the remaining budget cannot pay for, by raising
        :class:`~aprompt.lm.metering.LimitReached`.

        Args:
            what: the step, for the message.
            parts: ``(journal kind, key, size)`` of the step's parts; parts already journaled are free.
                ``size`` counts program runs, or LM calls when ``calls`` is set.
        """
        todo = sum(size for kind, key, size in parts if not self._journaled(kind, key))
        if todo == 0:
            return
        runs, n_calls = (0, todo) if calls else (todo, 0)
        if not all(kind in _SCORING_STEPS for kind, _, _ in parts):
            runs += self._reserved_runs()
        estimate = step_estimate(self.meter, self.costs, runs=runs, calls=n_calls)
        limit = unaffordable(self.meter, estimate)
        if limit is None:
            return
        self.stopped_by = self.stopped_by or limit
        raise LimitReached(
            limit,
            f"{self.meter.describe(limit)} cannot pay for {what} (about {estimate[0]:.0f} more LM calls, "
            f"{estimate[1]:.0f} tokens)",
        )

    def _reserved_runs(self) -> int:
        """Runs kept for the baseline's evaluation and the first mini-batch, while they are to come."""
        loop = self.search_loop
        baseline_done = loop is not None and bool(loop.full_evals)
        trial_done = loop is not None and bool(loop.trials)
        n_val = len(self.valset)
        return (0 if baseline_done else n_val) + (0 if trial_done else min(self.budget.minibatch_size, n_val))

    def _journaled(self, kind: str, key: str) -> bool:
        return self.journal is not None and self.journal.latest(kind, key) is not None

    def _reserve(self, meter: RequestMeter) -> None:
        # Durable before the request is sent: a crash then never forgets a request that may have been sent.
        if self.journal is not None:
            self.journal.append(SPENT_KIND, spent_record(meter, self.costs, requests=meter.reserved))

    def checkpoint(self) -> None:
        """Journal what the run has spent so far (a resumed run continues from it)."""
        if self.journal is not None:
            self.journal.append(SPENT_KIND, spent_record(self.meter, self.costs))
            self.meter.reserved = self.meter.usage.requests

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
                    return await strategy.run(self)
                except BaseException as exc:
                    refusal = limit_reached_in(exc)
                    if refusal is None:
                        raise
            return await self._stopped(refusal)
        finally:
            self.checkpoint()

    async def _stopped(self, refusal: LimitReached) -> tuple[Candidates, SearchOutcome]:
        if refusal.unaffordable:
            raise ConfigError(str(refusal)) from None
        self.stopped_by = self.stopped_by or refusal.limit
        loop = self.search_loop
        if loop is None or not loop.full_evals:
            raise RunLimitError(
                f"{refusal}; the run stopped before the unoptimized program's evaluation finished, so "
                "nothing is scored yet. Raise the limit and call again (with a run_dir it resumes)",
                limit=refusal.limit,
            ) from None
        return loop.candidates, await loop.run_outcome()

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
                try:
                    return decode(found)
                except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                    raise JournalError(
                        f"run journal {self.journal.path} holds a malformed {kind!r} record ({key!r}): "
                        f"{type(exc).__name__}: {exc}; use resume=False to start over",
                        path=str(self.journal.path),
                    ) from None
        with measuring() as used:
            value = await compute()
        runs = self._program_runs(value)
        if runs:
            self.costs.add(runs, used.snapshot())
        if self.journal is not None:
            self.journal.append(kind, encode(value), key=key)
            self.checkpoint()
        return value

    def _program_runs(self, value: object) -> int:
        """Program runs a step made (to measure what one costs)."""
        if isinstance(value, Trial):
            return len(value.example_ids)
        if isinstance(value, FullEval):
            return len(value.scores) + value.n_unscored - value.reused
        if isinstance(value, RungEval):
            return len(value.example_ids)
        runs, self.pending_runs = self.pending_runs, 0
        return runs

    async def emit(self, event: Event) -> None:
        if self.on_event is None:
            return
        outcome = self.on_event(event)
        if inspect.isawaitable(outcome):
            await outcome

    @asynccontextmanager
    async def phase(self, name: str, detail: str = "") -> AsyncIterator[None]:
        """Time a phase and record its LM usage; emits PhaseStarted/PhaseFinished."""
        await self.emit(PhaseStarted(name, detail))
        started, before = time.monotonic(), self.usage()
        try:
            yield
        finally:
            record = PhaseUsage(name, time.monotonic() - started, self.usage() - before)
            self.phases.append(record)
            if self.journal is not None:
                self.journal.append(
                    "phase", {"phase": name, "seconds": record.seconds, "usage": record.usage.as_dict()}
                )
        await self.emit(PhaseFinished(name, record.seconds, record.usage))


def limit_reached_in(exc: BaseException) -> LimitReached | None:
    """``exc`` when it is a :class:`LimitReached`, or one of a group holding nothing else (the refusal
    reached the run through task groups; an unaffordable limit, a ConfigError to come, is preferred);
    else ``None``."""
    if isinstance(exc, LimitReached):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(LimitReached)
        if matched is not None and rest is None:
            leaves = _leaves(matched)
            return next((e for e in leaves if e.unaffordable), leaves[0])
    return None


def _leaves(group: BaseExceptionGroup[LimitReached]) -> list[LimitReached]:
    out: list[LimitReached] = []
    for inner in group.exceptions:
        out.extend(_leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return out
