"""How many requests an HTTP client keeps in flight when the user fixes no ``max_concurrency``.

With a rate limit known (configured, or stated by the server's ``x-ratelimit-limit-*`` headers), the
cap follows Little's law: to sustain ``rate`` requests per second at ``latency`` seconds each,
``rate × latency`` must be in flight. The cap is::

    ceil(target_rate × latency × HEADROOM), clamped to [1, maximum]

with ``target_rate = min(requests per second, tokens per second ÷ mean tokens per request)`` and
``latency`` an exponentially weighted mean of successful exchanges' durations, measured as the run goes
(a guess of 1 s, and 500 tokens per request, until the first answer). The rates are the fastest the
limiter admits: its burst caps (by default three times the even share of ``requests_per_minute`` and
``tokens_per_minute``, see :mod:`aprompt.lm.limits`), not the long-run average, because a run that has
not used its window's allowance (every run shorter than a minute, any run after a slow start) may go
that fast. Once the window is full the limiter holds the surplus; a request it holds keeps its slot,
ready to go the moment allowance frees, which costs nothing at the server. ``HEADROOM`` (1.5) covers the
spread of latencies around their mean.

With no limit known, the cap adapts to 429s, as TCP's congestion window does to losses. It starts at
:data:`INITIAL_CONCURRENCY` in slow start: each answer that arrives while every slot is taken adds 1, so
the cap doubles per round of ``cap`` requests while the server keeps up. The first 429 of a pause
(several 429s of one pause count once) halves it, multiplicatively: the halved cap becomes the
slow-start threshold and the cap restarts at 1, so after the pause a single request finds out whether
the server accepts again, and the cap doubles back to the threshold in a few rounds. Above the
threshold it grows additively: ``1 / cap`` per answer at the cap, one per round. A backlog of retries
therefore never fires at once into a server that still refuses.

A ``max_concurrency`` given by the user is a fixed cap: none of this applies.

:meth:`ConcurrencyController.planned` is the cap a run can plan for before any answer (the optimizer
sizes its window of trials from it, and that window must not depend on timing): the fixed cap, or the
Little's-law cap of the configured limits at the latency and token guesses; None when adaptive with no
limit configured.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from aprompt._slots import Slots

__all__ = ["HEADROOM", "INITIAL_CONCURRENCY", "MAX_CONCURRENCY", "ConcurrencyController"]

#: The most requests an adaptive client keeps in flight (its per-endpoint connection places too).
MAX_CONCURRENCY = 1024
#: The adaptive cap while no rate limit is known, before any 429 (the former fixed default).
INITIAL_CONCURRENCY = 64
#: In-flight requests per request the rate and latency call for (see the module docstring).
HEADROOM = 1.5

_LATENCY_GUESS = 1.0
_TOKENS_GUESS = 500.0
_SMOOTHING = 0.1

#: The client's limits in force as (requests per second, tokens per second), None where unknown.
Rates = Callable[[], tuple[float | None, float | None]]


class ConcurrencyController:
    """The concurrency cap of one client and the slots that enforce it (``async with controller.slots``).

    Args:
        fixed: the user's ``max_concurrency``: a fixed cap; None to adapt.
        maximum: the most the endpoints take at once: the ceiling of a fixed cap, and of an adaptive
            one together with :data:`MAX_CONCURRENCY`.
        rates: reads the limits in force (they change when the server states its own).

    Example:
        >>> controller = ConcurrencyController(None, maximum=1024, rates=lambda: (50.0, None))
        >>> controller.cap  # 50/s x the 1 s latency guess x headroom 1.5
        75
        >>> controller.completed(latency=0.5, tokens=200)
        >>> controller.cap
        38
    """

    def __init__(self, fixed: int | None, *, maximum: int, rates: Rates) -> None:
        self._fixed = fixed
        self._maximum = max(1, min(MAX_CONCURRENCY, maximum) if fixed is None else min(fixed, maximum))
        self._rates = rates
        self._latency: float | None = None
        self._tokens: float | None = None
        self._window = float(min(INITIAL_CONCURRENCY, self._maximum))
        self._threshold = math.inf
        self.slots = Slots(self._maximum if fixed is not None else self._target())

    @property
    def adaptive(self) -> bool:
        return self._fixed is None

    @property
    def cap(self) -> int:
        """Requests allowed in flight now."""
        return int(self.slots.total_tokens)

    @property
    def maximum(self) -> int:
        return self._maximum

    @property
    def latency(self) -> float | None:
        """The mean latency of successful exchanges so far (weighted to recent ones), or None."""
        return self._latency

    def planned(self, rates: tuple[float | None, float | None]) -> int | None:
        """The cap before any answer from ``rates`` (the configured limits, per second): the fixed cap,
        else the Little's-law cap at the guesses, or None when adaptive and neither rate is known.

        Example:
            >>> ConcurrencyController(None, maximum=1024, rates=lambda: (None, None)).planned((30.0, None))
            45
        """
        if self._fixed is not None:
            return self._maximum
        if rates[0] is None and rates[1] is None:
            return None
        return _little_cap(rates, None, None, self._maximum)

    def completed(self, latency: float, tokens: int) -> None:
        """An exchange succeeded after ``latency`` seconds, using ``tokens``; call it holding its slot."""
        if self._fixed is not None:
            return
        self._latency = _smoothed(self._latency, latency)
        if tokens > 0:
            self._tokens = _smoothed(self._tokens, tokens)
        if self.slots.available_tokens <= 0:  # the cap was binding: room to grow
            self._window += 1.0 if self._window < self._threshold else 1.0 / self._window
            self._window = min(self._window, float(self._maximum))
        self._set(self._target())

    def paused(self) -> None:
        """A new pause began (the first 429 of it): halve, then restart from one (see module docstring)."""
        if self._fixed is None:
            self._threshold = max(1.0, self._window / 2)
            self._window = 1.0
            self._set(self._target())

    def _target(self) -> int:
        rates = self._rates()
        if rates[0] is None and rates[1] is None:
            return max(1, min(self._maximum, int(self._window)))
        return _little_cap(rates, self._latency, self._tokens, self._maximum)

    def _set(self, cap: int) -> None:
        if cap != self.slots.total_tokens:
            self.slots.total_tokens = cap


def _little_cap(
    rates: tuple[float | None, float | None], latency: float | None, tokens: float | None, maximum: int
) -> int:
    """``ceil(target_rate × latency × HEADROOM)`` in [1, maximum]; a rate must be known."""
    requests, tokens_rate = rates
    rate = requests
    if tokens_rate is not None:
        by_tokens = tokens_rate / (tokens or _TOKENS_GUESS)
        rate = by_tokens if rate is None else min(rate, by_tokens)
    assert rate is not None
    return max(1, min(maximum, math.ceil(rate * (latency or _LATENCY_GUESS) * HEADROOM)))


def _smoothed(mean: float | None, sample: float) -> float:
    """An exponentially weighted mean moved towards ``sample`` (the first sample starts it)."""
    return float(sample) if mean is None else mean + _SMOOTHING * (sample - mean)
