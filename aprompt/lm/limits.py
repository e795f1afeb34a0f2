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

Caveats, all about tokens but the last. Token costs are estimates (:func:`estimate_request_tokens`)
settled after the call (:meth:`RateLimiter.settle`), charged at the admission's own reading: refunds
make room, and an under-estimate can push a window over ``T`` only by the under-estimates of requests
that were still unsettled when that window's last request was admitted. A cost above the limit in
force can never fit: it is admitted alone, into a window that holds no other admission. And the
readings are the client's: a server counting arrival times sees the same counts up to the spread of
network delays.

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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from aprompt._errors import ConfigError

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

#: Tokens reserved for the completion when the request sets neither ``max_tokens`` nor
#: ``max_completion_tokens``; settled against the real count afterwards.
DEFAULT_COMPLETION_TOKENS = 256

# Role, separators and framing the chat template adds to each message.
_TOKENS_PER_MESSAGE = 4
# The burst window is this fraction of the period; the default burst cap is this many even shares.
_BURST_WINDOWS_PER_PERIOD = 60
_DEFAULT_BURST_SHARES = 3.0
# The margin by which an admission outlives the server's count of it, as a fraction of the period.
_EDGE_FRACTION = 1 / 120
#: A window this full of its limit explains a 429 by the client's and the server's counts differing.
NEAR_FULL = 0.9
# A calibration ratio is kept within [1 / this, this]: a report further off is a server's quirk.
_MAX_RATIO = 8.0


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimate prompt tokens before the call: characters / 4 (rounded up) plus 4 per message.

    Example:
        >>> estimate_prompt_tokens([{"role": "user", "content": "How many legs has a cat?"}])
        10
    """
    chars = 0
    for message in messages:
        content = message.get("content")
        chars += len(content) if type(content) is str else len(str(content or ""))
    return math.ceil(chars / 4) + _TOKENS_PER_MESSAGE * len(messages)


def estimate_request_tokens(messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> int:
    """Tokens to reserve for a request: the prompt estimate plus the completion budget
    (``max_tokens`` or ``max_completion_tokens``, else :data:`DEFAULT_COMPLETION_TOKENS`)."""
    return estimate_prompt_tokens(messages) + _completion_budget(params)


def _completion_budget(params: Mapping[str, Any]) -> int:
    budget = params.get("max_tokens") or params.get("max_completion_tokens")
    return int(budget) if isinstance(budget, int | float) else DEFAULT_COMPLETION_TOKENS


class TokenEstimator:
    """Token reservations calibrated by the prompt tokens the server reports.

    The character estimate (:func:`estimate_prompt_tokens`) is off by a factor that depends on the
    server's tokenizer and the text (code, other languages, its chat template). A reservation below the
    server's count lets a full window go over the limit by the difference, and the server answers 429.
    So each answer's reported prompt tokens, against the character estimate of its prompt, update a
    running ratio (both summed with exponential decay, so the ratio follows a changing mix of prompts),
    and later prompt estimates are scaled by it, plus ``margin`` for the spread around it. Until the
    first report the character estimate stands. The completion budget is reserved as before
    (:func:`estimate_request_tokens`) and settled against the real count afterwards.

    Args:
        margin: the fraction a calibrated prompt estimate is raised by.
        decay: the weight the sums keep per new report (0.98: the last ~50 reports count most).

    Example:
        >>> estimator = TokenEstimator()
        >>> messages = [{"role": "user", "content": "x" * 396}]
        >>> estimator.request(messages, {"max_tokens": 10})  # 99 + 4 for the message, + 10
        113
        >>> estimator.observe(messages, reported=206)  # the server counts twice the estimate
        >>> estimator.ratio, estimator.request(messages, {"max_tokens": 10})  # ceil(103 x 2 x 1.05) + 10
        (2.0, 227)
    """

    __slots__ = ("_estimated", "_reported", "decay", "margin")

    def __init__(self, *, margin: float = 0.05, decay: float = 0.98) -> None:
        if not margin >= 0:
            raise ConfigError(f"a token estimate's margin must be at least 0, got {margin!r}")
        if not 0 < decay <= 1:
            raise ConfigError(f"a token estimate's decay must be in (0, 1], got {decay!r}")
        self.margin = margin
        self.decay = decay
        self._estimated = 0.0
        self._reported = 0.0

    @property
    def ratio(self) -> float | None:
        """Reported prompt tokens per estimated one (weighted to recent reports); None before any."""
        if self._estimated <= 0:
            return None
        return min(_MAX_RATIO, max(1 / _MAX_RATIO, self._reported / self._estimated))

    def prompt(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """The prompt tokens to reserve for ``messages``: the character estimate, calibrated."""
        return self._calibrated(estimate_prompt_tokens(messages))

    def request(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> int:
        """Tokens to reserve for a request: the calibrated prompt estimate plus the completion budget."""
        return self.reservation(estimate_prompt_tokens(messages), params)

    def reservation(self, estimate: int, params: Mapping[str, Any]) -> int:
        """:meth:`request` for a prompt whose character estimate (:func:`estimate_prompt_tokens`) is
        ``estimate``: a client that estimates each prompt once uses it here and in
        :meth:`observe_estimate`."""
        return self._calibrated(estimate) + _completion_budget(params)

    def observe(self, messages: Sequence[Mapping[str, Any]], reported: int) -> None:
        """The server counted ``reported`` prompt tokens for ``messages`` (a report of 0: none, ignored)."""
        self.observe_estimate(estimate_prompt_tokens(messages), reported)

    def observe_estimate(self, estimate: int, reported: int) -> None:
        """:meth:`observe` for a prompt whose character estimate is ``estimate``."""
        if reported > 0 and estimate > 0:
            self._estimated = self._estimated * self.decay + estimate
            self._reported = self._reported * self.decay + reported

    def _calibrated(self, estimate: int) -> int:
        ratio = self.ratio
        return estimate if ratio is None else math.ceil(estimate * ratio * (1 + self.margin))


class _Entry:
    """One admission in a window's log; its cost is corrected when it is settled."""

    __slots__ = ("at", "cost", "in_burst", "in_window")

    def __init__(self, at: float, cost: float) -> None:
        self.at = at
        self.cost = cost
        self.in_window = True
        self.in_burst = True


class _Log:
    """The admissions of the last ``span`` seconds and the sum of their costs."""

    __slots__ = ("entries", "span", "total")

    def __init__(self, span: float) -> None:
        self.span = span
        self.entries: deque[_Entry] = deque()
        self.total = 0.0

    def expire(self, now: float, *, burst: bool) -> None:
        horizon = now - self.span
        entries = self.entries
        while entries and entries[0].at <= horizon:
            entry = entries.popleft()
            self.total -= entry.cost
            if burst:
                entry.in_burst = False
            else:
                entry.in_window = False
        if not entries:
            self.total = 0.0  # no drift from float sums

    def delay(self, cost: float, limit: float, now: float) -> float:
        """Seconds until ``cost`` fits under ``limit`` by expiry alone (0: it fits now); a cost above
        the limit fits once the log is empty."""
        if not self.entries or self.total + cost <= limit:
            return 0.0
        excess = self.total + cost - limit
        freed = 0.0
        for entry in self.entries:
            freed += entry.cost
            if freed >= excess:
                break
        # Positive even when float rounding makes ``at + span`` land on ``now``: the caller sleeps.
        return max(entry.at + self.span - now, 1e-6)


class SlidingWindow:
    """A log of admissions against ``limit`` per ``period`` seconds and a burst cap per ``period / 60``.

    Not async itself (:class:`RateLimiter` serializes access); the module docstring gives the bound.

    Args:
        limit: the most admitted in any window of ``period`` seconds, at least 1, or None (unknown: the
            log is kept, nothing is refused; :meth:`learn` sets one later).
        period: the window, in seconds.
        burst: the most admitted in any window of ``period / 60`` seconds; default three times the even
            share (``limit / 20``, at least 1); ``math.inf`` for no cap.
        min_factor: the lowest fraction of the limit repeated throttling leaves in force.
        edge: seconds an admission stays in the log beyond ``period`` (the server counts a request from
            its arrival, a little after the client admitted it: see the module docstring).
    """

    __slots__ = (
        "_burst",
        "_burst_cap",
        "_burst_log",
        "_even_burst",
        "_factor",
        "_factor_at",
        "_limit",
        "_log",
        "_stated",
        "configured",
        "edge",
        "min_factor",
        "period",
    )

    def __init__(
        self,
        limit: float | None,
        *,
        period: float = 60.0,
        burst: float | None = None,
        min_factor: float = 0.25,
        edge: float = 0.0,
    ) -> None:
        # Below 1, no window can hold it: a request (or token) is admitted whole, alone in its window,
        # so 0.5 a minute would go at 1 a minute.
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | float) or not 1 <= limit < math.inf
        ):
            raise ConfigError(
                f"a rate limit must be a positive finite number, at least 1 per period (None: no "
                f"limit), got {limit!r}"
            )
        if not period > 0:
            raise ConfigError(f"a rate limit's period must be positive, got {period!r}")
        if burst is not None and not burst > 0:
            raise ConfigError(f"a burst cap must be positive, got {burst!r}")
        if not 0 < min_factor <= 1:
            raise ConfigError(f"min_rate_factor must be in (0, 1], got {min_factor!r}")
        if not edge >= 0:
            raise ConfigError(f"a rate limit's edge margin must be at least 0, got {edge!r}")
        self.configured = None if limit is None else float(limit)
        self.period = float(period)
        self.min_factor = min_factor
        self.edge = float(edge)
        self._stated: float | None = None
        self._burst = burst  # None: the default, derived from the limit in force
        self._even_burst = False  # after a 429: the default cap is the even share
        self._factor = 1.0
        self._factor_at = -math.inf
        self._log = _Log(self.period + self.edge)
        self._burst_log = _Log(self.period / _BURST_WINDOWS_PER_PERIOD)
        self._limit: float | None = None
        self._burst_cap = math.inf
        self._derive()

    def _derive(self) -> None:
        # The limit and burst cap in force change only when a limit is learned or the cap narrowed;
        # every admission reads them, so they are kept, not recomputed.
        stated, configured = self._stated, self.configured
        if stated is None:
            self._limit = configured
        else:
            self._limit = stated if configured is None else min(configured, stated)
        if self._burst is not None:
            self._burst_cap = self._burst
        elif self._limit is None:
            self._burst_cap = math.inf
        else:
            shares = 1.0 if self._even_burst else _DEFAULT_BURST_SHARES
            self._burst_cap = max(1.0, shares * self._limit / _BURST_WINDOWS_PER_PERIOD)

    @property
    def limit(self) -> float | None:
        """The limit before throttling: the lower of the configured and the server-stated one."""
        return self._limit

    @property
    def burst(self) -> float:
        """The burst cap before throttling (``inf`` while no limit is known)."""
        return self._burst_cap

    @property
    def peak_rate(self) -> float | None:
        """The most admitted per second over a burst window (before throttling), None with no limit."""
        return None if self._limit is None else self._burst_cap * _BURST_WINDOWS_PER_PERIOD / self.period

    @property
    def configured_peak_rate(self) -> float | None:
        """:attr:`peak_rate` from the configured limit alone (nothing learned or throttled): what a run
        can plan for before its first answer; None when none is configured."""
        if self.configured is None:
            return None
        burst = self._burst
        if burst is None:
            burst = max(1.0, _DEFAULT_BURST_SHARES * self.configured / _BURST_WINDOWS_PER_PERIOD)
        return burst * _BURST_WINDOWS_PER_PERIOD / self.period

    def factor(self, now: float) -> float:
        """The fraction of the limits in force (below 1 for up to a period after a throttle)."""
        return min(1.0, self._factor + (now - self._factor_at) / self.period)

    def used(self, now: float) -> float:
        """The cost admitted in ``(now - period - edge, now]``."""
        self._log.expire(now, burst=False)
        return self._log.total

    def delay(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` can be admitted (0: now); a lower bound, so callers check again."""
        limit = self._limit
        if limit is None:
            return 0.0
        log, burst_log = self._log, self._burst_log
        log.expire(now, burst=False)
        burst_log.expire(now, burst=True)
        factor = self._factor + (now - self._factor_at) / self.period  # self.factor(now), inlined
        if factor > 1.0:
            factor = 1.0
        # The common case, both logs with room, without calling into them.
        in_window = not log.entries or log.total + cost <= limit * factor
        in_burst = not burst_log.entries or burst_log.total + cost <= self._burst_cap * factor
        if in_window and in_burst:
            return 0.0
        delay = max(
            log.delay(cost, limit * factor, now),
            burst_log.delay(cost, self._burst_cap * factor, now),
        )
        if delay > 0 and factor < 1.0 and log.entries:
            # The limit recovers as the factor rises: the cost may fit before anything expires.
            need = (log.total + cost) / limit
            if need <= 1.0:
                delay = min(delay, max(self._factor_at + (need - self._factor) * self.period - now, 1e-6))
        return delay

    def admit(self, cost: float, now: float) -> _Entry:
        """Log an admission of ``cost`` at ``now`` (call :meth:`delay` first: this does not check)."""
        if self._limit is None:  # keeps the log a period long (with a limit, delay() has just expired it)
            self._log.expire(now, burst=False)
            self._burst_log.expire(now, burst=True)
        entry = _Entry(now, float(cost))
        self._log.entries.append(entry)
        self._log.total += entry.cost
        self._burst_log.entries.append(entry)
        self._burst_log.total += entry.cost
        return entry

    def restamp(self, entry: _Entry, now: float) -> None:
        """Move ``entry`` to ``now`` (the latest admission): counted from then, for a full window again.

        Every admission since ``entry``'s counted it, so it fits at ``now`` as it did then."""
        for log, logged in ((self._log, entry.in_window), (self._burst_log, entry.in_burst)):
            if logged:
                if log.entries[-1] is entry:  # usually the latest still
                    log.entries.pop()
                else:
                    log.entries.remove(entry)
                log.total -= entry.cost
            log.entries.append(entry)
            log.total += entry.cost
        entry.at = now
        entry.in_window = entry.in_burst = True

    def settle(self, entry: _Entry, cost: float) -> None:
        """Correct ``entry``'s cost (a refund when lower), still charged at its admission time."""
        change = float(cost) - entry.cost
        entry.cost = float(cost)
        if entry.in_window:
            self._log.total += change
        if entry.in_burst:
            self._burst_log.total += change

    def throttle(self, now: float) -> None:
        """After a 429 with no limit known: halve the limits in force (they recover over a period, and
        bind once a limit is learned). A known limit is never halved (see the module docstring)."""
        if self._limit is not None:
            return
        self._factor = max(self.min_factor, self.factor(now) * 0.5)
        self._factor_at = now

    def near_full(self, now: float) -> bool:
        """A limit is known and the log holds at least :data:`NEAR_FULL` of it."""
        limit = self._limit
        return limit is not None and self.used(now) >= NEAR_FULL * limit

    def narrow_burst(self) -> None:
        """A default burst cap drops to the even share for good (a 429 far below the known limits: the
        server enforces a sub-minute quantum)."""
        self._even_burst = True
        self._derive()

    def learn(self, stated: float) -> None:
        """The server states its limit: the one in force becomes the lower of it and the configured."""
        if stated > 0:
            self._stated = float(stated)
            self._derive()


class Admission:
    """One admitted request: its entries in the limiter's logs, for :meth:`RateLimiter.settle`."""

    __slots__ = ("_requests", "_tokens", "reserved")

    def __init__(self, requests: _Entry, tokens: _Entry, reserved: int) -> None:
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
        self._lock = anyio.Lock()
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
        if not self._lock.locked() and self._delay(tokens) <= 0:
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
