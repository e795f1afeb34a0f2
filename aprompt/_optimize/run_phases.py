"""A run's phases (warm-up, bootstrap, proposals, search, ...): each timed, with the LM usage of the code
inside it, journaled, and told to the run's event callback as ``PhaseStarted``/``PhaseFinished``
(``RunContext.phase``); a phase a stop cut short is told finished when the run goes on to its result.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs

from aprompt._optimize.events import Event, EventCallback, PhaseFinished, PhaseStarted
from aprompt._optimize.result import PhaseUsage
from aprompt.lm._meter_context import measuring
from aprompt.lm.usage import UsageSnapshot
from aprompt.run.journal import RunJournal


async def emit_to(on_event: EventCallback | None, event: Event) -> None:
    """Tell ``event`` to ``on_event`` (awaited when it returns an awaitable); nothing without one."""
    if on_event is None:
        return
    outcome = on_event(event)
    if inspect.isawaitable(outcome):
        await outcome


@attrs.define
class EventSink:
    """A run's ``on_event``, told each event until it raises: the run then stops with that error, and
    events its concurrent steps reach before they are cancelled are not told (each would raise again,
    and ``optimize`` would raise a group of them instead of the callback's error)."""

    callback: EventCallback | None
    failed: bool = False

    async def __call__(self, event: Event) -> None:
        if self.failed:
            return
        try:
            await emit_to(self.callback, event)
        except Exception:
            # A call of an async callback begun before the first failure that fails too: the first error
            # is the one the run stops with.
            if self.failed:
                return
            self.failed = True
            raise


@attrs.define
class PhaseLog:
    """The phases of a run, in the order they started (``phases``, shared with the run's context)."""

    phases: list[PhaseUsage]
    on_event: EventCallback | None
    journal: RunJournal | None
    #: The run's start, for the phases' start times.
    started: float = attrs.field(factory=time.monotonic)
    #: Phases (by their slot in ``phases``) that ended by an exception, their ``PhaseFinished`` not told yet.
    _cut: list[int] = attrs.field(factory=list)

    @asynccontextmanager
    async def phase(self, name: str, detail: str = "") -> AsyncIterator[None]:
        """See ``RunContext.phase``."""
        await emit_to(self.on_event, PhaseStarted(name, detail))
        started = time.monotonic()
        slot = len(self.phases)
        self.phases.append(PhaseUsage(name, 0.0, UsageSnapshot(), started - self.started))
        try:
            with measuring() as used:
                yield
        except BaseException:
            # Cut short (a limit's refusal, a sibling step's cancellation): its PhaseFinished is told when
            # the run goes on to its result (:meth:`finish_cut`), not from a cancelled task.
            self._cut.append(slot)
            raise
        finally:
            record = PhaseUsage(name, time.monotonic() - started, used.snapshot(), started - self.started)
            self.phases[slot] = record
            if self.journal is not None:
                self.journal.append(
                    "phase",
                    {
                        "phase": name,
                        "seconds": record.seconds,
                        "started": record.started,
                        "usage": record.usage.as_dict(),
                    },
                )
        await emit_to(self.on_event, PhaseFinished(name, record.seconds, record.usage))

    async def finish_cut(self) -> None:
        """Tell the ``PhaseFinished`` of each phase a stop cut short, in the order they started: every
        ``PhaseStarted`` of a run that returns a result has its ``PhaseFinished``."""
        cut, self._cut = sorted(self._cut), []
        for slot in cut:
            record = self.phases[slot]
            await emit_to(self.on_event, PhaseFinished(record.phase, record.seconds, record.usage))
