"""Per-run request metering: every request a run sends is counted, and refused once a limit is spent.

A run creates one :class:`RequestMeter` and enters ``with metering(meter):``; the meter then lives in a
:mod:`contextvars` variable, so it sees the requests of that run (and of every task started inside the
block) and of nothing else. The functions that read the meter from the context (:func:`metering`,
:func:`measuring`, :func:`run_deadline`, :func:`admit_request`, :func:`metered_chat`) are in
:mod:`aprompt.lm._meter_context`; :class:`LimitReached` is in :mod:`aprompt.lm._limit_reached`. The meter
is consulted at two layers aprompt owns:

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

import math
import time
from collections.abc import Callable, Mapping, Sequence

import attrs

from aprompt._errors import ConfigError, ContextOverflowError, LMError, RateLimitError
from aprompt.lm._limit_reached import LimitReached
from aprompt.lm._meter_context import _CALL, _SCOPES
from aprompt.lm._replies import is_answered_failure
from aprompt.lm.types import LM, TokenUsage
from aprompt.lm.usage import UsageCounter, UsageSnapshot

__all__ = ["ANSWERS_CHUNK", "RequestMeter"]

#: Answers whose tokens a run may hold unrecorded under a token or cost limit (``on_answers``).
ANSWERS_CHUNK = 16


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
