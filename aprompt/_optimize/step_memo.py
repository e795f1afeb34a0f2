"""The run's expensive steps, each computed once (``RunContext.memo``): a step's result is journaled under a
key that is a pure function of the run's config and the step, so a resumed run re-executes its
deterministic flow and reads back what it paid for. As a step ends, what it spent is counted in the run's
limits bookkeeping (:mod:`aprompt._optimize.run_spending`): it leaves the admitted steps in flight, and its
program runs measure what one costs.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any, TypeVar

import attrs

from aprompt._errors import JournalError
from aprompt._optimize.run_spending import RunSpending
from aprompt._optimize.search_records import FullEval, RungEval, Trial
from aprompt.lm._meter_context import measuring
from aprompt.lm.cache._run_caches import replay_step

T = TypeVar("T")


@attrs.define
class _StepRuns:
    """The program runs of the step a :func:`memo` is computing, when its result does not tell them
    (``None``: read them from the result)."""

    runs: int | None = None


# The step being computed in this task (and in the tasks it starts): steps overlap, so what one step
# reports of its runs must not reach another.
_STEP_RUNS: contextvars.ContextVar[_StepRuns | None] = contextvars.ContextVar(
    "aprompt_step_runs", default=None
)


def note_runs(runs: int) -> None:
    """Tell the step being computed (inside :func:`memo`) how many program runs it made, when its result
    does not tell them (a bootstrap's runs; ``0`` for a result made by another step): what a program run
    costs is measured from them."""
    step = _STEP_RUNS.get()
    if step is not None:
        step.runs = runs


async def memo(
    spending: RunSpending,
    kind: str,
    key: str,
    compute: Callable[[], Awaitable[T]],
    encode: Callable[[T], Any],
    decode: Callable[[Any], T],
) -> T:
    """``compute()``, or its journaled result when this run already did it (resume); what it spent is
    counted in ``spending``.

    Raises:
        JournalError: the journaled result cannot be read back.
    """
    journal = spending.journal
    if journal is not None:
        found = journal.latest(kind, key)
        if found is not None:
            spending.commitments.pop((kind, key))
            try:
                return decode(found)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                raise JournalError(
                    f"run journal {journal.path} holds a malformed {kind!r} record ({key!r}): "
                    f"{type(exc).__name__}: {exc}; use resume=False to start over",
                    path=str(journal.path),
                ) from None
    outermost = _STEP_RUNS.get() is None
    step_id = f"{kind}:{key}"
    # Run again after a stop left it unfinished: the answers it had then come from the cache, free,
    # but the uninterrupted run paid for them, so they count as its own (what a program run costs,
    # and what the step still has to spend, are measured as in that run).
    before = None
    if outermost:
        before = spending.ledger.take(step_id)
    step = _StepRuns()
    token = _STEP_RUNS.set(step)
    try:
        with measuring() as used:
            spending.commitments.started((kind, key), used)
            if before is not None:
                used.requests += before[1]
                used.calls += before[1]  # answered then: not the cache hits they are now
                used.settled += before[1]
                used.prompt_tokens += before[2]
                used.completion_tokens += before[3]
            if outermost:
                spending.ledger.open[step_id] = used
            try:
                # A judge's answers are keyed by the step, so that running it again replays them.
                with replay_step(step_id) if outermost else nullcontext():
                    value = await compute()
            except BaseException:
                if outermost:
                    spending.ledger.failed(step_id, used)
                raise
            finally:
                spending.ledger.open.pop(step_id, None)
    finally:
        _STEP_RUNS.reset(token)
        # Ended (or failed): what it spent is in the meter now, whether admitted before the step
        # started or inside it (a screen admits itself).
        ended = spending.commitments.pop((kind, key))
    runs = _program_runs(value) if step.runs is None else step.runs
    if ended is not None and ended.held:
        # Counted at its estimate, and its cost per run unmeasured, until it is retired.
        spending.commitments.end_held((kind, key), ended, runs, used.snapshot())
    elif runs:
        spending.costs.add(runs, used.snapshot())
    if journal is not None:
        journal.append(kind, encode(value), key=key)
        spending.checkpoint()
    return value


def _program_runs(value: object) -> int:
    """Program runs a step made, as its result tells them (to measure what one costs)."""
    if isinstance(value, Trial):
        return len(value.example_ids)
    if isinstance(value, FullEval):
        return len(value.scores) + value.n_unscored - value.reused
    if isinstance(value, RungEval):
        return len(value.example_ids)
    return 0
