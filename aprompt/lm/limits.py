"""Client-side rate limits: sliding-window logs of the requests and tokens admitted in the last
``period`` seconds, a burst cap, and a pause shared by every task after an HTTP 429.

The guarantee. A :class:`RateLimiter` keeps a log of every admission: its clock reading and its cost
(1 request; the tokens reserved, settled later against the usage the server reports). It admits a
request costing ``c`` tokens at reading ``t`` only if, over the admissions logged at readings in
``(t - period, t]`` (those admitted at ``t`` before it included)::

    requests + 1 <= R(t)   and   tokens + c <= T(t)

where ``R(t) <= requests_per_minute`` and ``T(t) <= tokens_per_minute`` are the limits in force.
Hence in **every** window ``[s, s + period)`` of clock readings at most ``requests_per_minute``
requests, and ``tokens_per_minute`` tokens, are admitted: the last admission ``t`` of such a window
has every other one in ``[s, t]``, inside ``(t - period, t]``, and counted them all. Nothing else is
lost: allowance a window leaves unused (a slow start, a pause) can be spent later, as soon as the
burst cap below lets it.

Caveats, all about tokens but the last. Token costs are estimates (:class:`TokenEstimator`) settled
after the call (:meth:`RateLimiter.settle`), charged at the admission's own reading: refunds make room,
and an under-estimate can push a window over ``T`` only by the under-estimates of requests that were
still unsettled when that window's last request was admitted. So the estimates err high: a request
without a completion budget reserves the longest completion reported so far (at least
:data:`DEFAULT_COMPLETION_TOKENS`), and the HTTP client sends the first such request alone under a token
limit until its reply tells that length; only a reply longer than every one before it is under-estimated.
A cost above the limit in force can never fit: it is admitted alone, into a window that holds no other
admission (the HTTP client warns once). And the readings are the client's: a server counting arrival
times sees the same counts up to the spread of network delays.

The burst cap. In every window of ``period / 60`` seconds (one second for per-minute limits) at most
``request_burst`` requests and ``token_burst`` tokens are admitted; by default three times the even
share (``limit / 20``, at least 1; a single larger cost is admitted alone, like above). So a run
catches up on unused allowance at up to three times the steady rate, but never spends a minute's
allowance in one instant: providers (OpenAI, Anthropic) say they may enforce a per-minute limit over
shorter intervals (e.g. 60 RPM as 1 per second). ``math.inf`` disables the cap.

After a 429, :meth:`RateLimiter.pause` blocks every acquisition until the ``Retry-After`` time. What
else it does depends on whether the limit is known. Under a KNOWN limit (configured, or stated by the
server) the 429 says the client's count and the server's differ a little (a token estimate below the
server's count, a window edge a few milliseconds apart): the limit stays in force, and the causes are
corrected where they arise: estimates are calibrated by the counts the server reports
(:class:`TokenEstimator`), and an admission leaves the client's log a small margin (``period / 120``,
0.5 s a minute) after it would leave the server's. Only a 429 with every known window far from full
(below :data:`NEAR_FULL` of its limit) says the server enforces something tighter, such as a sub-minute
quantum: then a default burst cap drops to the even share for good. With the limit UNKNOWN, the limits
in force are halved (down to ``min_rate_factor``; they bind once a limit is learned) and recover
linearly to the full limits over one ``period`` (AIMD: multiplicative decrease, additive increase; the
concurrency cap of :mod:`aprompt.lm.adaptive` does the same). Several 429s within one pause count as
one.

Limits the server states (``x-ratelimit-limit-*`` headers, :mod:`aprompt.lm.ratelimit_headers`) are
applied with :meth:`RateLimiter.learn`: the limit in force becomes the lower of the configured and the
stated one. The log holds every admission whether or not a limit is known, so a limit learned mid-run
also counts what was admitted before it was known. :meth:`RateLimiter.hold` (the server said nothing
remains until its reset) blocks acquisitions like a pause, without throttling.

Pauses, throttling, learning and the edge margin only ever lower the limits in force, so the guarantee
always holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio

from aprompt._slots import Slots
from aprompt.lm._sliding_window import NEAR_FULL, Entry, SlidingWindow
from aprompt.lm._token_estimate import (
    DEFAULT_COMPLETION_TOKENS,
    TokenEstimator,
    estimate_prompt_tokens,
    estimate_request_tokens,
)

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "NEAR_FULL",
    "Admission",
    "RateLimiter",
    "SlidingWindow",
    "TokenEstimator",
    "estimate_prompt_tokens",
    "estimate_request_tokens",
]

# The margin by which an admission outlives the server's count of it, as a fraction of the period.
_EDGE_FRACTION = 1 / 120


class Admission:
    """One admitted request: its entries in the limiter's logs, for :meth:`RateLimiter.settle`."""

    __slots__ = ("_requests", "_tokens", "reserved")

    def __init__(self, requests: Entry, tokens: Entry, reserved: int) -> None:
        self._requests = requests
        self._tokens = tokens
        self.reserved = reserved

    @property
    def at(self) -> float:
        """The limiter's clock reading when it was admitted."""
        return self._requests.at


class RateLimiter:
    """Request and token windows plus a shared pause, acquired in FIFO order.

    Tasks queue on a fair lock; only the task at the head sleeps until its request fits in both
    windows and the pause (if any) is over, so admission order is arrival order and no task starves.
    A task cancelled while waiting takes nothing. With no limit known, only the pause applies (the
    logs are still kept, for a limit learned later).

    Args:
        requests_per_minute: the request limit, or None.
        tokens_per_minute: the token limit (prompt + completion), or None.
        period: the window of both limits in seconds (60; shorter only for tests).
        request_burst: the most requests admitted in any ``period / 60`` (see the module docstring).
        token_burst: the most tokens admitted in any ``period / 60``.
        min_rate_factor: the lowest fraction of the limits repeated 429s can throttle to (limits not
            known only).
        edge_margin: seconds an admission is counted beyond ``period`` (default ``period / 120``): the
            server counts a request from its arrival, after the client's admission.
        clock: a monotonic clock in seconds.

    Example:
        >>> limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=100_000)
        >>> async def call() -> None:  # doctest: +SKIP
        ...     admission = await limiter.acquire(tokens=900)
        ...     ...  # send the request, read usage
        ...     limiter.settle(admission, used=640)
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
        edge_margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        edge = period * _EDGE_FRACTION if edge_margin is None else edge_margin
        self._requests = SlidingWindow(
            requests_per_minute, period=period, burst=request_burst, min_factor=min_rate_factor, edge=edge
        )
        self._tokens = SlidingWindow(
            tokens_per_minute, period=period, burst=token_burst, min_factor=min_rate_factor, edge=edge
        )
        # Not an anyio.Lock: that is bound to the loop it was made on, and a client may serve one loop
        # after another (asyncio.run called again, trio after asyncio); a slot's waits are the caller's.
        self._lock = Slots(1)
        self._paused_until = -math.inf
        self._pause_ends = -math.inf  # the end of the latest 429 pause (holds do not count)
        self._pause_seconds = 0.0

    @property
    def limited(self) -> bool:
        """True when a request or token limit is configured or learned."""
        return self._requests._limit is not None or self._tokens._limit is not None

    @property
    def request_window(self) -> SlidingWindow:
        return self._requests

    @property
    def token_window(self) -> SlidingWindow:
        return self._tokens

    @property
    def period(self) -> float:
        return self._requests.period

    @property
    def peak_rates(self) -> tuple[float | None, float | None]:
        """The most requests and tokens admitted per second over a burst window (the burst caps in
        force, before throttling): the fastest this limiter lets a run go; None where no limit."""
        return self._requests.peak_rate, self._tokens.peak_rate

    @property
    def configured_peak_rates(self) -> tuple[float | None, float | None]:
        """:attr:`peak_rates` from the configured limits alone (see
        :attr:`SlidingWindow.configured_peak_rate`)."""
        return self._requests.configured_peak_rate, self._tokens.configured_peak_rate

    @property
    def paused_until(self) -> float:
        """The clock reading before which nothing is admitted (``-inf`` when never paused)."""
        return self._paused_until

    @property
    def pause_seconds(self) -> float:
        """The length of the latest pause or hold, in seconds."""
        return self._pause_seconds

    def is_paused(self) -> bool:
        return self._clock() < self._paused_until

    async def acquire(self, tokens: int = 0) -> Admission:
        """Wait until one request costing ``tokens`` is admitted; log it and return its admission."""
        while not self.limited:
            delay = self._paused_until - self._clock()
            if delay <= 0:
                return self._admit(tokens)
            await anyio.sleep(delay)
            # A limit learned during the pause (an answer's x-ratelimit-* headers) binds this request:
            # the loop ends and the windows below decide, in arrival order.
        # Nobody queued (a held lock is the only sign of waiters: it is handed on to the next) and it
        # fits now: admitted at once, in arrival order still, without the lock's trip through the loop.
        if not self._lock.borrowed_tokens and self._delay(tokens) <= 0:
            return self._admit(tokens)
        async with self._lock:
            while True:
                delay = self._delay(tokens)
                if delay <= 0:
                    return self._admit(tokens)
                await anyio.sleep(delay)

    def _admit(self, tokens: int) -> Admission:
        now = self._clock()
        return Admission(self._requests.admit(1, now), self._tokens.admit(tokens, now), tokens)

    def _delay(self, tokens: int) -> float:
        now = self._clock()
        delay = self._paused_until - now
        for window, cost in ((self._requests, 1), (self._tokens, tokens)):
            wait = window.delay(cost, now)
            if wait > delay:
                delay = wait
        return delay

    def refresh(self, admission: Admission) -> None:
        """Count ``admission`` from now when it was made more than the edge margin ago: a request
        admitted here and then held elsewhere (another limiter, a pause) before it is sent reaches the
        server later than its entry says, and would leave the window early."""
        now = self._clock()
        if now - admission.at > self._requests.edge:
            self._requests.restamp(admission._requests, now)
            self._tokens.restamp(admission._tokens, now)

    def settle(self, admission: Admission, used: int) -> None:
        """Correct an admission's reserved tokens to the ``used`` the server reported."""
        if used != admission.reserved:
            self._tokens.settle(admission._tokens, used)
            admission.reserved = used

    def pause(self, seconds: float) -> bool:
        """Admit nothing for ``seconds`` (a 429's Retry-After); once per pause, throttle the limits not
        known, and narrow the burst caps when no known window is near full (see the module docstring).

        Returns True when this starts a new pause (the first 429 of it), False within one.
        """
        now = self._clock()
        started = now >= self._pause_ends
        if started:
            windows = (self._requests, self._tokens)
            known = [window for window in windows if window.limit is not None]
            if known and not any(window.near_full(now) for window in known):
                for window in known:
                    window.narrow_burst()
            for window in windows:
                window.throttle(now)
        self._pause_ends = max(self._pause_ends, now + seconds)
        self._hold(now, seconds)
        return started

    def hold(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (the server says none remain until then); no throttling."""
        self._hold(self._clock(), seconds)

    def _hold(self, now: float, seconds: float) -> None:
        if now + seconds > self._paused_until:
            self._paused_until = now + seconds
            self._pause_seconds = seconds

    def learn(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None) -> None:
        """Apply limits the server states (per period); the ones in force never exceed them."""
        if requests_per_minute is not None:
            self._requests.learn(requests_per_minute)
        if tokens_per_minute is not None:
            self._tokens.learn(tokens_per_minute)

    def __repr__(self) -> str:
        parts = [
            f"{name}={window.limit:g}/{window.period:g}s"
            for name, window in (("requests", self._requests), ("tokens", self._tokens))
            if window.limit is not None
        ]
        return f"RateLimiter({', '.join(parts)})"
