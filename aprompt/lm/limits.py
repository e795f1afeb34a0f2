"""Client-side rate limits: continuous token buckets for requests and tokens per minute, and a pause
shared by every task after an HTTP 429.

The guarantee. A :class:`TokenBucket` for ``limit`` per ``period`` seconds holds at most
``capacity`` tokens (default ``max(1, limit / 60)``, one second's worth) and refills continuously at
``(limit - capacity) / period`` per second. It starts full and a request is admitted only when the
bucket holds its cost. Hence, in **every** interval of ``w`` seconds, the tokens handed out are at
most::

    capacity + w * (limit - capacity) / period

which for ``w = period`` is exactly ``limit``: no 60 s window ever holds more than
``requests_per_minute`` requests, and the documented initial burst is ``capacity``. The price is a
steady rate lower than ``limit / period`` by ``capacity / period`` (1/60 of the limit with the
default capacity).

Two caveats apply to the *token* bucket only. A request whose cost exceeds ``capacity`` could never
be admitted, so it waits for a full bucket and then borrows (the level goes negative); a window can
then hold up to ``max(capacity, largest cost) + w * rate``. And costs are estimates reserved before
the call (:func:`estimate_prompt_tokens` + the completion budget) that are settled against the usage
the server reports afterwards: refunds make room, under-estimates are charged (the level may go
negative) and delay later requests, so only requests in flight can push a window over, by their
under-estimate.

After a 429, :meth:`RateLimiter.pause` blocks every acquisition until the ``Retry-After`` time,
empties the buckets (no burst when the pause ends) and halves the refill rate (down to
``min_rate_factor``), which then recovers linearly to the full rate over one ``period`` (AIMD:
multiplicative decrease, additive increase). Several 429s within one pause count as one decrease.
Both only ever lower the rate, so the guarantee above still holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from aprompt._errors import ConfigError

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "RateLimiter",
    "TokenBucket",
    "estimate_prompt_tokens",
    "estimate_request_tokens",
]

#: Tokens reserved for the completion when the request sets neither ``max_tokens`` nor
#: ``max_completion_tokens``; settled against the real count afterwards.
DEFAULT_COMPLETION_TOKENS = 256

# Role, separators and framing the chat template adds to each message.
_TOKENS_PER_MESSAGE = 4


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimate prompt tokens before the call: characters / 4 (rounded up) plus 4 per message.

    Example:
        >>> estimate_prompt_tokens([{"role": "user", "content": "How many legs has a cat?"}])
        10
    """
    chars = sum(len(str(message.get("content") or "")) for message in messages)
    return math.ceil(chars / 4) + _TOKENS_PER_MESSAGE * len(messages)


def estimate_request_tokens(messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> int:
    """Tokens to reserve for a request: the prompt estimate plus the completion budget
    (``max_tokens`` or ``max_completion_tokens``, else :data:`DEFAULT_COMPLETION_TOKENS`)."""
    budget = params.get("max_tokens") or params.get("max_completion_tokens")
    completion = int(budget) if isinstance(budget, int | float) else DEFAULT_COMPLETION_TOKENS
    return estimate_prompt_tokens(messages) + completion


class TokenBucket:
    """A continuously refilled bucket that never hands out more than ``limit`` per ``period``.

    Not async itself (:class:`RateLimiter` serializes access); the module docstring gives the bound.

    Args:
        limit: tokens allowed in any window of ``period`` seconds.
        period: the window, in seconds.
        capacity: the burst size; default ``max(1, limit / 60)``. Must be below ``limit``.
        now: the clock reading the bucket starts (full) at.
    """

    __slots__ = (
        "_factor",
        "_updated",
        "capacity",
        "level",
        "limit",
        "min_factor",
        "period",
        "rate",
    )

    def __init__(
        self,
        limit: float,
        *,
        period: float = 60.0,
        capacity: float | None = None,
        min_factor: float = 0.25,
        now: float = 0.0,
    ) -> None:
        capacity = max(1.0, limit / 60.0) if capacity is None else float(capacity)
        if not (0 < capacity < limit) or period <= 0:
            raise ConfigError(
                f"a rate limit needs 0 < burst capacity < limit (got limit={limit}, "
                f"capacity={capacity}); use a limit of at least 2 per minute"
            )
        self.limit = float(limit)
        self.period = float(period)
        self.capacity = capacity
        self.rate = (self.limit - capacity) / self.period
        self.min_factor = min_factor
        self.level = capacity
        self._updated = now
        self._factor = 1.0

    @property
    def rate_factor(self) -> float:
        """The fraction of the full refill rate in force (below 1 for a while after a 429)."""
        return self._factor

    def refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed <= 0:
            return
        # The factor only rises between refills, so its value at the start is a safe lower bound.
        self.level = min(self.capacity, self.level + elapsed * self.rate * self._factor)
        self._factor = min(1.0, self._factor + elapsed / self.period)
        self._updated = now

    def delay(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` can be taken (costs above capacity wait for a full bucket)."""
        self.refill(now)
        missing = min(cost, self.capacity) - self.level
        return 0.0 if missing <= 1e-9 else missing / (self.rate * self._factor)

    def take(self, cost: float) -> None:
        self.level -= cost

    def give(self, amount: float) -> None:
        """Refund ``amount`` (or charge it, if negative); the level never exceeds capacity."""
        self.level = min(self.capacity, self.level + amount)

    def throttle(self, now: float) -> None:
        """After a 429: empty the bucket and halve the refill rate (AIMD decrease)."""
        self.refill(now)
        self.level = min(self.level, 0.0)
        self._factor = max(self.min_factor, self._factor * 0.5)


class RateLimiter:
    """Request and token buckets plus a shared pause, acquired in FIFO order.

    Tasks queue on a fair lock; only the task at the head sleeps until its request fits in both
    buckets and the pause (if any) is over, so admission order is arrival order and no task starves.
    A task cancelled while waiting takes nothing. With no limits configured only the pause applies.

    Args:
        requests_per_minute: the request limit, or None.
        tokens_per_minute: the token limit (prompt + completion), or None.
        period: the window of both limits in seconds (60; shorter only for tests).
        request_burst: the request bucket's capacity (default one second's worth, at least 1).
        token_burst: the token bucket's capacity (default one second's worth, at least 1).
        min_rate_factor: the lowest fraction of the rate repeated 429s can throttle to.
        clock: a monotonic clock in seconds.

    Example:
        >>> limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=100_000)
        >>> async def call() -> None:  # doctest: +SKIP
        ...     await limiter.acquire(tokens=900)
        ...     ...  # send the request, read usage
        ...     limiter.settle(reserved=900, used=640)
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        period: float = 60.0,
        request_burst: float | None = None,
        token_burst: float | None = None,
        min_rate_factor: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        now = clock()
        self._clock = clock
        self._requests = (
            None
            if requests_per_minute is None
            else TokenBucket(
                requests_per_minute,
                period=period,
                capacity=request_burst,
                min_factor=min_rate_factor,
                now=now,
            )
        )
        self._tokens = (
            None
            if tokens_per_minute is None
            else TokenBucket(
                tokens_per_minute,
                period=period,
                capacity=token_burst,
                min_factor=min_rate_factor,
                now=now,
            )
        )
        self._lock = anyio.Lock()
        self._paused_until = -math.inf

    @property
    def limited(self) -> bool:
        """True when a request or token limit is configured."""
        return self._requests is not None or self._tokens is not None

    @property
    def request_bucket(self) -> TokenBucket | None:
        return self._requests

    @property
    def token_bucket(self) -> TokenBucket | None:
        return self._tokens

    @property
    def paused_until(self) -> float:
        """The clock reading before which nothing is admitted (``-inf`` when never paused)."""
        return self._paused_until

    def is_paused(self) -> bool:
        return self._clock() < self._paused_until

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request costing ``tokens`` is admitted, then take it from the buckets."""
        if not self.limited:
            while True:
                delay = self._paused_until - self._clock()
                if delay <= 0:
                    return
                await anyio.sleep(delay)
        async with self._lock:
            while True:
                delay = self._delay(tokens)
                if delay <= 0:
                    break
                await anyio.sleep(delay)
            if self._requests is not None:
                self._requests.take(1)
            if self._tokens is not None:
                self._tokens.take(tokens)

    def _delay(self, tokens: int) -> float:
        now = self._clock()
        delay = self._paused_until - now
        if self._requests is not None:
            delay = max(delay, self._requests.delay(1, now))
        if self._tokens is not None:
            delay = max(delay, self._tokens.delay(tokens, now))
        return delay

    def settle(self, reserved: int, used: int) -> None:
        """Correct a reservation of ``reserved`` tokens to the ``used`` the server reported."""
        if self._tokens is not None and used != reserved:
            self._tokens.give(reserved - used)

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (a 429's Retry-After); throttle buckets once per pause."""
        now = self._clock()
        if now >= self._paused_until:
            for bucket in (self._requests, self._tokens):
                if bucket is not None:
                    bucket.throttle(now)
        self._paused_until = max(self._paused_until, now + seconds)

    def __repr__(self) -> str:
        parts = [
            f"{name}={bucket.limit:g}/{bucket.period:g}s"
            for name, bucket in (("requests", self._requests), ("tokens", self._tokens))
            if bucket is not None
        ]
        return f"RateLimiter({', '.join(parts)})"
