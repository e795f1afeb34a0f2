"""One sliding-window log of admissions against a limit per period, with a burst cap, throttling after a
429 and limits learned from the server (:mod:`aprompt.lm.limits` gives the guarantee and names
:class:`SlidingWindow`)."""

from __future__ import annotations

import math
from collections import deque

from aprompt._errors import ConfigError

# The burst window is this fraction of the period; the default burst cap is this many even shares.
_BURST_WINDOWS_PER_PERIOD = 60
_DEFAULT_BURST_SHARES = 3.0
#: A window this full of its limit explains a 429 by the client's and the server's counts differing.
NEAR_FULL = 0.9


class Entry:
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
        self.entries: deque[Entry] = deque()
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

    Not async itself (:class:`RateLimiter` serializes access); :mod:`aprompt.lm.limits` gives the bound.

    Args:
        limit: the most admitted in any window of ``period`` seconds, at least 1, or None (unknown: the
            log is kept, nothing is refused; :meth:`learn` sets one later).
        period: the window, in seconds.
        burst: the most admitted in any window of ``period / 60`` seconds; default three times the even
            share (``limit / 20``, at least 1); ``math.inf`` for no cap.
        min_factor: the lowest fraction of the limit repeated throttling leaves in force.
        edge: seconds an admission stays in the log beyond ``period`` (the server counts a request from
            its arrival, a little after the client admitted it: see :mod:`aprompt.lm.limits`).
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
            # The limits recover as the factor rises: the cost may fit before anything expires, once the
            # factor lets it into both logs (the burst log alone may hold it back: no spin till then).
            need = max(
                (log.total + cost) / limit,
                (burst_log.total + cost) / self._burst_cap if burst_log.entries else 0.0,
            )
            if need <= 1.0:
                delay = min(delay, max(self._factor_at + (need - self._factor) * self.period - now, 1e-6))
        return delay

    def admit(self, cost: float, now: float) -> Entry:
        """Log an admission of ``cost`` at ``now`` (call :meth:`delay` first: this does not check)."""
        if self._limit is None:  # keeps the log a period long (with a limit, delay() has just expired it)
            self._log.expire(now, burst=False)
            self._burst_log.expire(now, burst=True)
        entry = Entry(now, float(cost))
        self._log.entries.append(entry)
        self._log.total += entry.cost
        self._burst_log.entries.append(entry)
        self._burst_log.total += entry.cost
        return entry

    def restamp(self, entry: Entry, now: float) -> None:
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

    def settle(self, entry: Entry, cost: float) -> None:
        """Correct ``entry``'s cost (a refund when lower), still charged at its admission time."""
        change = float(cost) - entry.cost
        entry.cost = float(cost)
        if entry.in_window:
            self._log.total += change
        if entry.in_burst:
            self._burst_log.total += change

    def throttle(self, now: float) -> None:
        """After a 429 with no limit known: halve the limits in force (they recover over a period, and
        bind once a limit is learned). A known limit is never halved (see :mod:`aprompt.lm.limits`)."""
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
