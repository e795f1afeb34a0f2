"""The run's meter as context: which :class:`~aprompt.lm._metering.RequestMeter` the requests of this task
count against (:func:`metering`), the steps measured apart (:func:`measuring`), the run's deadline
(:func:`run_deadline`), and :func:`metered_chat`, how aprompt itself calls an LM. See
:mod:`aprompt.lm._metering` for what is counted when."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import anyio

from aprompt.lm._limit_reached import LimitReached
from aprompt.lm.types import LM, Completion, Message
from aprompt.lm.usage import UsageCounter

if TYPE_CHECKING:
    from aprompt.lm._metering import RequestMeter

__all__ = [
    "admit_request",
    "current_meter",
    "measuring",
    "meter_for_own_call",
    "metered_chat",
    "metering",
    "run_deadline",
]

_METER: contextvars.ContextVar[RequestMeter | None] = contextvars.ContextVar("aprompt_meter", default=None)
# Counters of the steps being measured in this context (see measuring()).
_SCOPES: contextvars.ContextVar[tuple[UsageCounter, ...]] = contextvars.ContextVar(
    "aprompt_meter_scopes", default=()
)
# Set inside metered_chat, which counts the call itself (see meter_for_own_call()): the call's program run
# and what it prepaid. One variable, not three: every LM call sets it, and each set makes a few objects.
_CALL: contextvars.ContextVar[_MeteredCall | None] = contextvars.ContextVar(
    "aprompt_metered_call", default=None
)


class _MeteredCall:
    """One :func:`metered_chat` call in progress: the program run it belongs to (an opaque object, one per
    run, see ``unit``), and whether it admitted its first request for an LM that does not meter itself
    (``prepaid``), which an HTTP client inside it (a wrapper around one) has not yet ``claimed``."""

    __slots__ = ("claimed", "prepaid", "unit")

    def __init__(self, unit: object, prepaid: bool) -> None:
        self.unit = unit
        self.prepaid = prepaid
        self.claimed = False


def current_meter() -> RequestMeter | None:
    """The meter of the run this task belongs to, or ``None``."""
    return _METER.get()


@contextmanager
def metering(meter: RequestMeter) -> Iterator[RequestMeter]:
    """Meter the requests made in this block (and in tasks started inside it) with ``meter``."""
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def run_deadline() -> AbstractContextManager[None]:
    """End the block at the deadline of the run's ``max_time`` with :class:`LimitReached` (as
    :func:`metered_chat` ends its calls); outside a run, or without a time limit, nothing ends it (one
    shared null context: this is on every call's path)."""
    meter = _METER.get()
    if meter is None or meter.max_seconds is None:
        return _NO_DEADLINE
    return _until_deadline(meter)


_NO_DEADLINE: AbstractContextManager[None] = nullcontext()


@contextmanager
def _until_deadline(meter: RequestMeter) -> Iterator[None]:
    with anyio.CancelScope(deadline=anyio.current_time() + meter.seconds_left()) as scope:
        yield
    if scope.cancelled_caught:
        raise LimitReached("max_time", f"run limit reached: {meter.describe('max_time')}")


@contextmanager
def measuring() -> Iterator[UsageCounter]:
    """Count, apart, what the run's meter counts in this block (and in tasks started inside it)."""
    counter = UsageCounter()
    token = _SCOPES.set((*_SCOPES.get(), counter))
    try:
        yield counter
    finally:
        _SCOPES.reset(token)


def meter_for_own_call() -> RequestMeter | None:
    """For an LM that meters itself: the run's meter to count a finished chat call with
    (:meth:`RequestMeter.note_call`) when no :func:`metered_chat` counts it (a metric's judge called
    directly), else ``None``. Counted, its answers are the step's own when a resumed run runs the step
    again (from the cache), as a predictor's are."""
    return None if _CALL.get() is not None else _METER.get()


def admit_request(model: str, *, retry: bool = False) -> RequestMeter | None:
    """For an LM that meters itself: admit one request about to be sent (see :meth:`RequestMeter.admit`);
    returns the meter to settle with, or ``None`` outside a metered run."""
    meter = _METER.get()
    if meter is None:
        return None
    call = _CALL.get()
    if call is not None and call.prepaid and not call.claimed and not retry:
        # The wrapper's call already paid for this first attempt; its answer is priced by this
        # request's own model, which the wrapper's name may not be.
        meter.check_priced(model)
        call.claimed = True
        return meter
    meter.admit(model, retry=retry)
    return meter


async def metered_chat(
    lm: LM, messages: Sequence[Message], *, rollout: int = 0, unit: object = None, **params: Any
) -> Completion:
    """``lm.chat(messages, rollout=rollout, **params)``, counted by the run's meter (if any).

    ``unit`` identifies the program run the call belongs to (any object, the same for every call of one
    run): the meter measures the first run's calls with it.

    Raises:
        LimitReached: a limit is spent, or the run's deadline passed while the call was in flight.
    """
    meter = _METER.get()
    if meter is None:
        return await lm.chat(messages, rollout=rollout, **params)
    prepaid = getattr(lm, "meters_requests", False) is not True
    call = _MeteredCall(unit, prepaid)
    token = _CALL.set(call)
    try:
        if prepaid:
            meter.admit(lm.model)
        with run_deadline():
            completion = await lm.chat(messages, rollout=rollout, **params)
    except Exception as error:
        meter.note_call(failed=True)
        meter.note_failed_lm(lm, error)
        if prepaid and not call.claimed:
            meter.note_failure(error)
        raise
    finally:
        _CALL.reset(token)
    if prepaid and not call.claimed:
        if completion.cached:
            meter.refund()
        else:
            meter.settle(lm.model, completion.usage)
    meter.note_call(cached=completion.cached)
    return completion
