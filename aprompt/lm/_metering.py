"""Per-run request metering: every request a run sends is counted, and refused once a limit is spent.

A run creates one :class:`RequestMeter` and enters ``with metering(meter):``; the meter then lives in a
:mod:`contextvars` variable, so it sees the requests of that run (and of every task started inside the
block) and of nothing else. It is consulted at two layers aprompt owns:

* :class:`~aprompt.lm._http.HTTPChatLM` asks it (:func:`admit_request`) before each HTTP request, retries
  included, and reports the tokens the server counted (:meth:`RequestMeter.settle`). Cache hits send
  no request and cost nothing.
* :func:`metered_chat` is how aprompt itself calls an LM (predictors, the outage canary). For an LM that
  meters itself (``meters_requests = True``, as :class:`HTTPChatLM`) it only counts the call; for any
  other object with ``model`` and ``async chat(...)`` it admits one request before the call and records
  the completion's tokens after it (a completion with ``cached=True`` is refunded). A wrapper around an
  HTTP client is counted once: the wrapped client's first attempt uses the request admitted for the
  wrapper.

A request is counted when it is admitted, before it is sent, so the requests a run sends never exceed
``max_requests``; tokens and cost are known only when an answer arrives, so they may pass their limit by
what the requests in flight at that moment cost. Once a limit is spent, or the deadline has passed, the
next request is refused with :class:`LimitReached`, and :func:`metered_chat` cancels a call still in
flight at the deadline with the same exception (as :class:`HTTPChatLM` does its own calls, through
:func:`run_deadline`: those a metric makes of its judge reach no :func:`metered_chat`).

:class:`LimitReached` derives from :class:`BaseException`, like a cancellation, on purpose: it must never
be caught by ``except Exception`` in a program or an evaluator and scored as a wrong answer, nor be
taken for a provider fault (it is not an :class:`~aprompt._errors.LMError`). The run that entered
``metering`` catches it, abandons the step it interrupted and stops.

Example::

    meter = RequestMeter(max_requests=100)
    with metering(meter):
        completion = await metered_chat(lm, [{"role": "user", "content": "Hi"}])
    meter.usage.requests
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import anyio
import attrs

from aprompt._errors import ConfigError, ContextOverflowError, LMError, RateLimitError
from aprompt.lm._replies import is_answered_failure
from aprompt.lm.types import LM, Completion, Message, TokenUsage
from aprompt.lm.usage import UsageCounter, UsageSnapshot

__all__ = [
    "BudgetKept",
    "LimitReached",
    "RequestMeter",
    "admit_request",
    "current_meter",
    "measuring",
    "metered_chat",
    "metering",
    "run_deadline",
]

#: Answers whose tokens a run may hold unrecorded under a token or cost limit (``on_answers``).
ANSWERS_CHUNK = 16

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


class LimitReached(BaseException):
    """A run limit refused a request or a step (see the module docstring for why it is a
    ``BaseException``).

    Attributes:
        limit: ``"max_lm_calls"``, ``"max_tokens"``, ``"max_cost"`` or ``"max_time"``.
        unaffordable: set when the limit can never pay for the run's first trial (the message says why);
            the run turns this into a :class:`~aprompt._errors.ConfigError`.
    """

    def __init__(self, limit: str, message: str, *, unaffordable: bool = False) -> None:
        super().__init__(message)
        self.limit = limit
        self.unaffordable = unaffordable


class BudgetKept(LimitReached):
    """A step refused to keep what a later step needs (a search's last evaluation, see
    ``RunContext.admit_step``'s ``keep``): the run goes on to that step instead of stopping."""


class _MeteredCall:
    """One :func:`metered_chat` call in progress: the program run it belongs to (an opaque object, one per
    run, see ``unit``), and whether it admitted its first request for an LM that does not meter itself
    (``prepaid``), which an HTTP client inside it (a wrapper around one) has not yet ``claimed``."""

    __slots__ = ("claimed", "prepaid", "unit")

    def __init__(self, unit: object, prepaid: bool) -> None:
        self.unit = unit
        self.prepaid = prepaid
        self.claimed = False


@attrs.define
class _FirstRun:
    """The first program run the meter saw, and the requests it has sent so far."""

    unit: object
    requests: int = 0


class RequestMeter:
    """Counts one run's requests, tokens and cost, and refuses requests past its limits.

    Args:
        max_requests: requests (retries included) the run may send; ``None``: unlimited.
        max_tokens: prompt + completion tokens the run may spend.
        max_cost: money the run may spend, priced with ``prices``.
        max_seconds: seconds the run may take (measured from the meter's creation, plus ``spent_seconds``).
        prices: model name -> (input, output) price per million tokens.
        spent: usage already spent by earlier calls of the same run (a resumed run continues its budget).
        spent_cost, spent_seconds: likewise, money and seconds.
        spent_unpriced: ``{model: [prompt, completion]}`` tokens earlier calls spent on models they had no
            price for; those ``prices`` now prices are added to the cost, the rest stay in
            :attr:`unpriced`.
        on_reserve: called with the meter before admitting a request beyond the last reservation, so the
            caller can make the reservation durable (a run journals it): a crash then never forgets a
            request that may have been sent. Reservations are ``reserve_chunk`` requests ahead.
        on_answers: called with the meter once ``answers_chunk`` answers have settled since the meter
            last handed its counts to a callback (or since :meth:`mark_recorded`), so the caller can make
            the tokens and cost spent durable (a run journals them): after a crash, fewer than
            ``answers_chunk`` answers are missing from the record.
        first_run_budget: ``(runs, what)``: the first program run must cost at most
            ``max_requests / runs`` requests, else the limit cannot pay for ``what`` (see
            :meth:`observe_unit`).
    """

    def __init__(
        self,
        *,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        max_cost: float | None = None,
        max_seconds: float | None = None,
        prices: Mapping[str, tuple[float, float]] | None = None,
        spent: UsageSnapshot | None = None,
        spent_cost: float = 0.0,
        spent_seconds: float = 0.0,
        spent_unpriced: Mapping[str, Sequence[int]] | None = None,
        on_reserve: Callable[[RequestMeter], None] | None = None,
        on_answers: Callable[[RequestMeter], None] | None = None,
        reserve_chunk: int = 16,
        answers_chunk: int = ANSWERS_CHUNK,
        first_run_budget: tuple[int, str] | None = None,
    ) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.max_seconds = max_seconds
        self.prices = dict(prices or {})
        self._counter = UsageCounter(**(spent or UsageSnapshot()).as_dict())
        self.cost = spent_cost
        #: Tokens settled for models without a price, ``{model: [prompt, completion]}``: a later call of
        #: the run with prices for them adds their cost (a run's cost is cumulative over its calls).
        self.unpriced: dict[str, list[int]] = {}
        for model, (prompt, completion) in (spent_unpriced or {}).items():
            self._price(str(model), int(prompt), int(completion))
        self._spent_seconds = spent_seconds
        self._started = time.monotonic()
        self._on_reserve = on_reserve
        self._on_answers = on_answers
        # Answers settled since the meter's counts were last handed to a callback or recorded.
        self._unrecorded_answers = 0
        self._chunk = max(1, reserve_chunk)
        self._answers_chunk = max(1, answers_chunk)
        self.reserved = self._counter.requests
        self.first_run_budget = first_run_budget
        self._first: _FirstRun | None = None
        # The model of an answer that came without token usage, while a token or cost limit is set.
        self._uncounted: str | None = None
        #: LMs a call of the run failed on, by id: the outage guard checks them beside the run's own, so an
        #: LM the run was never given (an LM-judged metric's judge) is waited for while it is down.
        self.failed_lms: dict[int, LM] = {}

    # -- reading -----------------------------------------------------------------------------
    @property
    def usage(self) -> UsageSnapshot:
        """Everything counted so far (earlier calls of the run included)."""
        return self._counter.snapshot()

    @property
    def seconds(self) -> float:
        """Seconds the run has taken, earlier calls included."""
        return self._spent_seconds + time.monotonic() - self._started

    def seconds_left(self) -> float:
        """Seconds until ``max_seconds`` is spent (``inf`` without one; never negative)."""
        if self.max_seconds is None:
            return math.inf
        return max(0.0, self.max_seconds - self.seconds)

    def reached(self) -> str | None:
        """The first limit that is spent (no further request would be admitted), or ``None``."""
        used = self._counter
        checks: Sequence[tuple[str, float | None, float]] = (
            ("max_lm_calls", self.max_requests, used.requests),
            ("max_tokens", self.max_tokens, used.prompt_tokens + used.completion_tokens),
            ("max_cost", self.max_cost, self.cost),
        )
        for name, limit, value in checks:
            if limit is not None and value >= limit:
                return name
        if self.max_seconds is not None and self.seconds >= self.max_seconds:
            return "max_time"
        return None

    def describe(self, limit: str) -> str:
        """``"max_lm_calls=100 (100 spent)"``-style text for a limit."""
        used = self._counter
        value: dict[str, tuple[float | None, str]] = {
            "max_lm_calls": (self.max_requests, f"{used.requests} requests sent"),
            "max_tokens": (self.max_tokens, f"{used.prompt_tokens + used.completion_tokens} tokens spent"),
            "max_cost": (self.max_cost, f"{self.cost:.4g} spent"),
            "max_time": (self.max_seconds, f"{self.seconds:.1f} s taken"),
        }
        limit_value, spent = value[limit]
        return f"{limit}={limit_value:g} ({spent})" if limit_value is not None else limit

    # -- counting ----------------------------------------------------------------------------
    def admit(self, model: str, *, retry: bool = False) -> None:
        """Count one request about to be sent, or raise :class:`LimitReached` when a limit is spent.

        Raises:
            LimitReached: a limit is spent (nothing is counted), or one that cannot be held: an answer
                came without token usage while ``max_tokens`` or ``max_cost`` is set (``unaffordable``).
            ConfigError: ``max_cost`` is set and ``model`` has no price (nothing is sent unpriced).
        """
        if self._uncounted is not None:
            name = "max_tokens" if self.max_tokens is not None else "max_cost"
            raise LimitReached(
                name,
                f"{name} cannot be held: model {self._uncounted!r} answered with no token usage (zero "
                "prompt and completion tokens), so what the run spends is not known; use an LM that "
                "reports usage, or limit the run with max_lm_calls or max_time instead",
                unaffordable=True,
            )
        limit = self.reached()
        if limit is not None:
            raise LimitReached(limit, f"run limit reached: {self.describe(limit)}")
        self.check_priced(model)
        if not retry:
            # A retry repeats a call the first run already made: it says nothing of the calls a run needs.
            self.observe_unit()
        if self._on_reserve is not None and self._counter.requests + 1 > self.reserved:
            ahead = self._counter.requests + self._chunk
            self.reserved = ahead if self.max_requests is None else min(self.max_requests, ahead)
            self._on_reserve(self)
            self._unrecorded_answers = 0  # the reservation's record carries the tokens settled so far
        for counter in (self._counter, *_SCOPES.get()):
            counter.requests += 1
            if retry:
                counter.retries += 1

    def check_priced(self, model: str) -> None:
        """Raise :class:`ConfigError` when ``max_cost`` is set and ``model`` has no price (nothing is sent
        unpriced: its answer would cost nothing against the limit)."""
        if self.max_cost is not None and model not in self.prices:
            raise ConfigError(f"max_cost is set but prices has no entry for model {model!r}")

    def observe_unit(self) -> None:
        """Count a request of the first program run; refuse it when that run alone shows the limit
        cannot pay for ``first_run_budget`` runs."""
        call = _CALL.get()
        unit = None if call is None else call.unit
        if unit is None or self.first_run_budget is None:
            return
        if self._first is None:
            self._first = _FirstRun(unit)
        if self._first.unit is not unit:
            return
        runs, what = self.first_run_budget
        if self.max_requests is not None and (self._first.requests + 1) * runs > self.max_requests:
            needed = (self._first.requests + 1) * runs
            raise LimitReached(
                "max_lm_calls",
                f"max_lm_calls={self.max_requests} cannot pay for {what}: the program's first run "
                f"sent {self._first.requests} LM calls and needs at least {self._first.requests + 1}, so "
                f"{runs} runs take at least {needed} calls; raise max_lm_calls to {needed} or more",
                unaffordable=True,
            )
        self._first.requests += 1

    def refund(self) -> None:
        """Uncount an admitted request that never reached an endpoint (answered from a cache)."""
        self._add("requests", -1)

    def settle(self, model: str, usage: TokenUsage) -> None:
        """Record the tokens (and their cost) the endpoint reported for one request; an answer without
        any (no usage reported) refuses the next request when a token or cost limit is set."""
        if usage.prompt_tokens + usage.completion_tokens == 0 and (
            self.max_tokens is not None or self.max_cost is not None
        ):
            self._uncounted = self._uncounted or model
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        for counter in (self._counter, *_SCOPES.get()):
            counter.prompt_tokens += prompt
            counter.completion_tokens += completion
            counter.settled += 1
        self._price(model, prompt, completion)
        self._unrecorded_answers += 1
        if self._on_answers is not None and self._unrecorded_answers >= self._answers_chunk:
            self._unrecorded_answers = 0
            self._on_answers(self)

    def _price(self, model: str, prompt: int, completion: int) -> None:
        price = self.prices.get(model)
        if price is not None:
            self.cost += (prompt * price[0] + completion * price[1]) / 1e6
        elif prompt or completion:
            tokens = self.unpriced.setdefault(model, [0, 0])
            tokens[0] += prompt
            tokens[1] += completion

    def mark_recorded(self) -> None:
        """Say that the caller has made everything counted so far durable (``on_answers`` counts its
        chunk of answers from here)."""
        self._unrecorded_answers = 0

    def note_failure(self, error: BaseException) -> None:
        """Count a failed request (a 429 is counted as such)."""
        if isinstance(error, RateLimitError):
            self._add("rate_limited", 1)

    def note_failed_lm(self, lm: LM, error: BaseException) -> None:
        """Remember ``lm`` after a call of it failed with ``error``, unless the failure is the request's
        own (a reply that is not an answer, a prompt over the context): no outage could explain those."""
        if isinstance(error, LMError) and not (
            is_answered_failure(error) or isinstance(error, ContextOverflowError)
        ):
            self.failed_lms.setdefault(id(lm), lm)

    def note_call(self, *, cached: bool = False, failed: bool = False) -> None:
        """Count one finished chat call (answered, from a cache, or failed)."""
        if failed:
            self._add("errors", 1)
            return
        for counter in (self._counter, *_SCOPES.get()):
            counter.calls += 1
            if cached:
                counter.cache_hits += 1

    def _add(self, name: str, amount: int) -> None:
        setattr(self._counter, name, getattr(self._counter, name) + amount)
        for scope in _SCOPES.get():
            setattr(scope, name, getattr(scope, name) + amount)


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
