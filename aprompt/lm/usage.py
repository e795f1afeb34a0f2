"""Usage accounting: calls, cache hits, tokens and retries, per LM and summed over several."""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class UsageSnapshot:
    """Counters at one moment. Snapshots add and subtract, so a phase's usage is ``after - before``.

    Attributes:
        calls: chat calls answered (from the endpoint or the cache).
        cache_hits: calls answered from the cache (memory or disk) or coalesced onto an in-flight call.
        requests: HTTP requests sent, retries included.
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
        """Calls that were not served from the cache."""
        return self.calls - self.cache_hits

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
