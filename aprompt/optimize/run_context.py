"""What every strategy shares during one run: inputs, LMs, events, and per-phase usage."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs

from aprompt._errors import JournalError
from aprompt.lm.types import LM
from aprompt.lm.usage import UsageSnapshot, total_usage
from aprompt.optimize.budget import Budget
from aprompt.optimize.evaluate import Metric
from aprompt.optimize.events import Event, EventCallback, PhaseFinished, PhaseStarted
from aprompt.optimize.examples import Example
from aprompt.optimize.outage import DEFAULT_OUTAGE_POLICY, OutagePolicy
from aprompt.optimize.propose import Grounding
from aprompt.optimize.result import PhaseUsage
from aprompt.program.predictor import Predict
from aprompt.run.journal import RunJournal
from aprompt.run.limits import LimitWatch, RunLimits

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
    _watch: LimitWatch | None = None
    phases: list[PhaseUsage] = attrs.field(factory=list)
    dropped: list[tuple[str, int, str]] = attrs.field(factory=list)
    failures: dict[str, str] = attrs.field(factory=dict)
    _lms: list[Any] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        found: dict[int, Any] = {}
        for lm in (self.lm, self.proposer_lm, self.teacher_lm, *(p.lm for _, p in self.predictors)):
            if lm is not None and hasattr(lm, "usage"):
                found.setdefault(id(lm), lm)
        self._lms = list(found.values())
        self._watch = LimitWatch(self.limits, self._lms)

    def limit_reached(self) -> str | None:
        """Check the run's limits (at a safe point); remembers the first one reached."""
        if self.stopped_by is None and self._watch is not None:
            self.stopped_by = self._watch.reached()
        return self.stopped_by

    def usage(self) -> UsageSnapshot:
        """Total usage of every LM this run touches (those that count usage)."""
        return total_usage(lm.usage for lm in self._lms if isinstance(lm.usage, UsageSnapshot))

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
        value = await compute()
        if self.journal is not None:
            self.journal.append(kind, encode(value), key=key)
        return value

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
