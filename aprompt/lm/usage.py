"""Usage accounting: calls, cache hits, tokens and retries, per LM and summed over several; and when the
requests were in flight.

One meaning of **LM calls** everywhere (logs, the command line, reports): requests sent to endpoints,
retries included — what ``max_lm_calls`` counts and ``OptimizeResult.spent["lm_calls"]`` reports. A *cache
hit* is a call answered from the cache (or shared with an identical call in flight): it sends nothing and
is no LM call. So, for calls that did not fail, ``calls == cache_hits + lm_calls - retries``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import attrs

#: The journal kind of a run's requests in flight over time (see :class:`RequestTimeline`).
IN_FLIGHT_KIND = "in_flight"


@attrs.frozen
class UsageSnapshot:
    """Counters at one moment. Snapshots add and subtract, so a phase's usage is ``after - before``.

    Attributes:
        calls: chat calls answered (from the endpoint or the cache).
        cache_hits: calls answered from the cache (memory or disk) or coalesced onto an in-flight call.
        requests: HTTP requests sent, retries included: the LM calls (:attr:`lm_calls`).
        retries: requests that were re-sends after a failure.
        errors: calls that finally failed.
        rate_limited: HTTP 429 answers received.
        prompt_tokens, completion_tokens: tokens of calls that reached the endpoint (cache hits cost none).
    """

    calls: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    errors: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def lm_calls(self) -> int:
        """LM calls: requests sent to endpoints, retries included (what ``max_lm_calls`` counts); cache
        hits are none."""
        return self.requests

    def describe(self) -> str:
        """The usage in the words every report uses, e.g. ``"120 LM calls sent (3 retries), 40 cache hits,
        52,000 tokens"`` (plus the 429 answers, when there were any)."""
        text = (
            f"{self.lm_calls:,} LM calls sent ({self.retries:,} retries), {self.cache_hits:,} cache hits, "
            f"{self.total_tokens:,} tokens"
        )
        return text + (f", {self.rate_limited:,} rate-limited (429)" if self.rate_limited else "")

    def __add__(self, other: UsageSnapshot) -> UsageSnapshot:
        return UsageSnapshot(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in _FIELDS})

    def __sub__(self, other: UsageSnapshot) -> UsageSnapshot:
        return UsageSnapshot(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in _FIELDS})

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


_FIELDS = attrs.fields(UsageSnapshot)


@attrs.define
class UsageCounter:
    """Mutable counters owned by one LM client; read them at any time with :meth:`snapshot`.

    All updates happen on the event loop thread without awaits in between, so no lock is needed.
    """

    calls: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    errors: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Answers whose usage a run's meter settled (not part of a snapshot): a run tells by it whether a
    #: stop caught an answer between its arrival and the end of its call (see ``RunContext``).
    settled: int = 0

    def snapshot(self) -> UsageSnapshot:
        return UsageSnapshot(**{f.name: getattr(self, f.name) for f in _FIELDS})

    def reset(self) -> None:
        for f in _FIELDS:
            setattr(self, f.name, 0)


def total_usage(snapshots: Iterable[UsageSnapshot]) -> UsageSnapshot:
    """Sum several LMs' snapshots into one total."""
    total = UsageSnapshot()
    for snap in snapshots:
        total = total + snap
    return total


class RequestTimeline:
    """When the requests sent inside a :func:`timing_requests` block were in flight (from send to answer
    or failure), kept as one pair of times per request."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._spans: list[tuple[float, float]] = []

    def add(self, start: float, end: float) -> None:
        """One request, sent at ``start`` and done at ``end`` (``time.monotonic()`` seconds)."""
        self._spans.append((start - self.started, max(start, end) - self.started))

    def __len__(self) -> int:
        return len(self._spans)

    def peak(self) -> int:
        """The most requests in flight at once."""
        events = sorted([(s, 1) for s, _ in self._spans] + [(e, -1) for _, e in self._spans])
        most = now = 0
        for _, step in events:  # at equal times an end (-1) sorts before a start: touching is not overlap
            now += step
            most = max(most, now)
        return most

    def series(self, points: int = 120) -> list[tuple[float, float]]:
        """``(seconds since the block began, mean requests in flight)`` over ``points`` equal slices of
        the time from the block's start to the last request's end (the mean over a slice: the area
        under the in-flight count divided by the slice's width)."""
        if not self._spans:
            return []
        end = max(e for _, e in self._spans)
        width = end / points if end > 0 else 1.0
        area = [0.0] * points
        for start, stop in self._spans:
            first, last = int(start // width), min(points - 1, int(stop // width))
            for index in range(max(0, first), last + 1):
                low, high = index * width, (index + 1) * width
                area[index] += max(0.0, min(stop, high) - max(start, low))
        return [(round((i + 0.5) * width, 3), round(a / width, 3)) for i, a in enumerate(area)]

    def record(self, points: int = 120) -> dict[str, object]:
        """JSON for the journal: the series, the peak and the number of requests."""
        return {"points": self.series(points), "peak": self.peak(), "requests": len(self)}


_TIMELINE: contextvars.ContextVar[RequestTimeline | None] = contextvars.ContextVar(
    "aprompt_request_timeline", default=None
)


@contextmanager
def timing_requests() -> Iterator[RequestTimeline]:
    """Record when each request sent in this block (and in tasks started inside it) was in flight."""
    timeline = RequestTimeline()
    token = _TIMELINE.set(timeline)
    try:
        yield timeline
    finally:
        _TIMELINE.reset(token)


def note_request(start: float, end: float) -> None:
    """For LM clients: one request was in flight from ``start`` to ``end`` (recorded only inside a
    :func:`timing_requests` block; costs nothing outside one)."""
    timeline = _TIMELINE.get()
    if timeline is not None:
        timeline.add(start, end)
