"""A fake server's hard rate limit (:class:`~aprompt.testing._wire.ServerRateLimit`): a sliding window
of the requests admitted, with their tokens, that admits a request or says how long until it would fit,
and the ``x-ratelimit-*`` headers that state it (see :mod:`aprompt.testing.fake_openai`)."""

from __future__ import annotations

import time
from collections import deque

from aprompt.testing._wire import ServerRateLimit

__all__ = ["Window", "admit", "limit_headers"]

#: The requests admitted within the limit's period: (monotonic time admitted, tokens), oldest first.
Window = deque[tuple[float, int]]


def _expire(window: Window, now: float, period: float) -> None:
    while window and window[0][0] <= now - period:
        window.popleft()


def admit(window: Window, limit: ServerRateLimit | None, tokens: int) -> float | None:
    """Admit a request of ``tokens`` into ``window`` (None), or return the seconds until it would fit."""
    if limit is None:
        return None
    now = time.monotonic()
    _expire(window, now, limit.period)
    count = len(window)
    used = sum(t for _, t in window)
    over_requests = limit.requests_per_minute is not None and count + 1 > limit.requests_per_minute
    over_tokens = limit.tokens_per_minute is not None and used + tokens > limit.tokens_per_minute
    if not (over_requests or over_tokens):
        window.append((now, tokens))
        return None
    oldest = window[0][0] if window else now
    return max(0.001, oldest + limit.period - now)


def limit_headers(window: Window, limit: ServerRateLimit) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers (limit, remaining, reset) for requests and tokens, as ``window``
    stands now."""
    headers: dict[str, str] = {}
    now = time.monotonic()
    _expire(window, now, limit.period)
    reset = f"{(window[0][0] + limit.period - now) if window else 0.0:.3f}s"
    for kind, allowed, used in (
        ("requests", limit.requests_per_minute, len(window)),
        ("tokens", limit.tokens_per_minute, sum(t for _, t in window)),
    ):
        if allowed is not None:
            headers[f"x-ratelimit-limit-{kind}"] = f"{allowed:g}"
            headers[f"x-ratelimit-remaining-{kind}"] = f"{max(0.0, allowed - used):g}"
            headers[f"x-ratelimit-reset-{kind}"] = reset
    return headers
