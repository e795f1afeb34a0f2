"""The pauses and rates of an HTTP chat client: a 429 pausing its endpoint (and the client, when it has
limits of its own), attempts waiting out a pause outside every slot and released spread over a share of
it, and the fastest the configured or learned limits let requests go (see :mod:`aprompt.lm._http`)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import anyio

from aprompt._errors import RateLimitError
from aprompt.lm.limits import RateLimiter
from aprompt.lm.retry import RetryPolicy

__all__ = ["pause_after_rate_limit", "pooled_rates", "wait_out_pause"]

# The most that the attempts a pause held are spread over after it, in seconds.
_MAX_PAUSE_SPREAD = 2.0

#: Requests and tokens per second (over a burst window); None where unknown.
Rates = tuple[float | None, float | None]


def pause_after_rate_limit(
    error: RateLimitError, endpoint: RateLimiter, client: RateLimiter, retry: RetryPolicy
) -> float | None:
    """Pause ``endpoint``'s limiter after ``error``, and the ``client``'s when it has limits of its own:
    the pause's length if this 429 started one, None if it came within one already running."""
    pause = retry.pause_after_rate_limit(error.retry_after)
    started = endpoint.pause(pause)
    if client.limited:
        started = client.pause(pause) or started
    return pause if started else None


async def wait_out_pause(
    client: RateLimiter, endpoints: Sequence[RateLimiter], *, pause_jitter: float, rng: random.Random
) -> None:
    """Wait, holding no slot, until a 429 pause lets requests through (every endpoint paused, or the
    client), plus a random share of the pause so that the attempts it held do not all go at once."""
    while True:
        paused = min(endpoints, key=lambda limiter: limiter.paused_until)
        if client.paused_until > paused.paused_until:
            paused = client
        delay = paused.paused_until - time.monotonic()
        if delay <= 0:
            return
        spread = min(pause_jitter * paused.pause_seconds, _MAX_PAUSE_SPREAD)
        await anyio.sleep(delay + spread * rng.random())


def pooled_rates(own_rates: Rates, endpoint_rates: Sequence[Rates]) -> Rates:
    """The fastest requests and tokens may go: the client's own rates, or the endpoints' sum when each has
    a limit, whichever is lower; None where neither is known."""
    rates: list[float | None] = []
    for own, theirs in (
        (own_rates[0], [requests for requests, _ in endpoint_rates]),
        (own_rates[1], [tokens for _, tokens in endpoint_rates]),
    ):
        known = [rate for rate in theirs if rate is not None]
        pooled = sum(known) if len(known) == len(theirs) else None
        rates.append(min(own, pooled) if own is not None and pooled is not None else own or pooled)
    return rates[0], rates[1]
