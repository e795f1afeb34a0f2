"""A run a limit stopped: finding the limit's refusal in what the strategy raised, and the result then;
and a run cancelled while its limit refused requests, whose caller gets the cancellation alone.

A refusal (of a step by the run's limits, or of a request by its meter) abandons the step; the run
returns the best program so far: the search's pick when the search has fully evaluated something, else
the unoptimized program when its evaluation (beside the bootstrap) is scored, else nothing is scored and
the stop is a :class:`~aprompt._errors.RunLimitError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import anyio
import attrs

from aprompt._errors import ConfigError, RunLimitError
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.events import FullEvaluation, NewBest
from aprompt._optimize.final_pick import FinalPick
from aprompt._optimize.search_records import SearchOutcome
from aprompt.lm._limit_reached import LimitReached

if TYPE_CHECKING:
    from aprompt._optimize.run_context import RunContext

_Error = TypeVar("_Error", bound=BaseException)


async def stopped_outcome(ctx: RunContext, refusal: LimitReached) -> tuple[Candidates, SearchOutcome]:
    """The run's result when ``refusal`` stopped it (``ctx.stopped_by`` names the limit).

    Raises:
        ConfigError: the refusal says the limit cannot pay for one trial.
        RunLimitError: nothing was scored yet.
    """
    if refusal.unaffordable:
        raise ConfigError(str(refusal)) from None
    ctx.stopped_by = ctx.stopped_by or refusal.limit
    loop = ctx.search_loop
    if loop is not None and loop.full_evals:
        return loop.candidates, await loop.run_outcome()
    if ctx.baseline is not None:
        # Scored beside the bootstrap, before any search: the unoptimized program is the best so far.
        candidates = Candidates.original(ctx.predictors)
        baseline = attrs.evolve(ctx.baseline, choice=candidates.baseline())
        score = baseline.score
        # The search never recorded it, so never told it: told here, as a search would have.
        await ctx.emit(FullEvaluation(baseline.choice, score, len(ctx.valset), baseline.n_failed, True))
        await ctx.emit(NewBest(dict(baseline.choice), score))
        pick = FinalPick(
            baseline.choice,
            kept_baseline=True,
            reason=f"kept the unoptimized program: {refusal.limit} stopped the run before the search "
            "scored any other program",
        )
        return candidates, SearchOutcome(baseline.choice, score, score, (), (baseline,), pick)
    raise RunLimitError(
        f"{refusal}; the run stopped before the unoptimized program's evaluation finished, so "
        "nothing is scored yet. Raise the limit and call again (with a run_dir it resumes)",
        limit=refusal.limit,
    ) from None


def limit_reached_in(exc: BaseException) -> LimitReached | None:
    """``exc`` when it is a :class:`LimitReached`, or one of a group holding nothing else (the refusal
    reached the run through task groups; an unaffordable limit, a ConfigError to come, is preferred);
    else ``None``."""
    if isinstance(exc, LimitReached):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(LimitReached)
        if matched is not None and rest is None:
            leaves = exception_leaves(matched)
            return next((e for e in leaves if e.unaffordable), leaves[0])
    return None


def exception_leaves(group: BaseExceptionGroup[_Error]) -> list[_Error]:
    """The exceptions of ``group`` and of the groups within it, in order."""
    out: list[_Error] = []
    for inner in group.exceptions:
        out.extend(exception_leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return out


def cancellation_beside_refusals(exc: BaseException) -> BaseException | None:
    """The cancellation to raise in place of ``exc`` when it is a group of the backend's cancellations and
    limit refusals only, else ``None``.

    A run cancelled (its caller's cancel scope, Ctrl-C) while some of its requests were being refused
    ends in such a group. It was cancelled: its caller's scope must take the cancellation and nothing
    more, as when no refusal came with it. Raised on, the refusals (an internal exception) would be what
    is left once the scope has taken its cancellations, and would reach the caller raw.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return None
    refused, rest = exc.split(LimitReached)
    if refused is None or rest is None:
        return None
    cancelled = anyio.get_cancelled_exc_class()
    taken, other = rest.split(cancelled)
    if taken is None or other is not None:
        return None
    # One of them, not a group: asyncio takes a task as cancelled only when a cancellation itself ends it.
    return exception_leaves(taken)[0]
