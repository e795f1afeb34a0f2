"""The rate-limit headers OpenAI-compatible servers send with their answers (429s included), and what
the client does with them.

``x-ratelimit-limit-requests`` / ``-tokens`` state the server's limits: :func:`apply_stated_limits`
makes them limits of the endpoint's :class:`~aprompt.lm.limits.RateLimiter` (the one in force is the
lower of the configured and the stated one; they are taken per minute, as OpenAI means them).
``x-ratelimit-remaining-requests`` / ``-tokens`` with ``x-ratelimit-reset-requests`` / ``-tokens``
(durations such as ``1s``, ``6m0s``, ``20ms``): when none remain, the endpoint holds its requests until
the reset instead of collecting 429s.

Anthropic states the same in its own names (:func:`read_anthropic_rate_limit_headers`):
``anthropic-ratelimit-requests-limit`` / ``-remaining`` / ``-reset``, likewise ``-tokens-``,
``-input-tokens-`` and ``-output-tokens-``, each reset an RFC 3339 time (when the limit is fully
replenished), per minute too. Our token windows count input and output together, so the input-token
limit (else ``tokens``) is taken as the token limit: staying under it in total keeps the input under it;
an output limit reached is met by holding until its reset like any other. ``retry-after`` on a 429 is
read by :mod:`aprompt.lm.retry` for both providers.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from datetime import datetime

import attrs

from aprompt.lm.limits import RateLimiter

__all__ = [
    "StatedLimits",
    "apply_stated_limits",
    "parse_duration",
    "parse_reset_time",
    "read_anthropic_rate_limit_headers",
    "read_rate_limit_headers",
    "read_raw_anthropic_rate_limit_headers",
    "read_raw_rate_limit_headers",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@attrs.frozen
class StatedLimits:
    """What one answer's headers say; None where a header is absent or unreadable.

    Attributes:
        requests_limit, tokens_limit: the server's limits (per minute).
        requests_remaining, tokens_remaining: what remains of them now.
        requests_reset, tokens_reset: seconds until they are replenished.
    """

    requests_limit: float | None = None
    tokens_limit: float | None = None
    requests_remaining: float | None = None
    tokens_remaining: float | None = None
    requests_reset: float | None = None
    tokens_reset: float | None = None


def parse_duration(text: str | None) -> float | None:
    """Seconds in a reset header: a number of seconds, or a Go-style duration (``1h2m3.5s``, ``20ms``).

    Example:
        >>> parse_duration("6m0s"), parse_duration("20ms"), parse_duration("1.5")
        (360.0, 0.02, 1.5)
    """
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    # No number float() reads ends in a unit letter: a Go-style duration (most servers' form) skips the
    # attempt, whose exception cost more than the rest of the parse.
    if text[-1] not in "hms":
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            return seconds if seconds >= 0 else None  # NaN and negatives are unreadable
    # Seconds alone ("59.412s", OpenAI's usual reset) without the pattern: digits and at most one dot.
    seconds_text = text[:-1]
    if text[-1] == "s" and seconds_text.replace(".", "", 1).isdigit():
        try:
            return float(seconds_text)
        except ValueError:  # a digit float() does not read ("²"): the pattern decides
            pass
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if 0 <= value < math.inf else None  # NaN, infinity and negatives are unreadable


def read_rate_limit_headers(headers: Mapping[str, str]) -> StatedLimits | None:
    """The ``x-ratelimit-*`` headers of an answer, or None when it has none.

    Example:
        >>> read_rate_limit_headers({"x-ratelimit-limit-requests": "600"}).requests_limit
        600.0
    """
    limit_requests = headers.get("x-ratelimit-limit-requests")
    limit_tokens = headers.get("x-ratelimit-limit-tokens")
    remaining_requests = headers.get("x-ratelimit-remaining-requests")
    remaining_tokens = headers.get("x-ratelimit-remaining-tokens")
    if (
        limit_requests is None
        and limit_tokens is None
        and remaining_requests is None
        and remaining_tokens is None
    ):
        return None
    return StatedLimits(
        requests_limit=_number(limit_requests),
        tokens_limit=_number(limit_tokens),
        requests_remaining=_number(remaining_requests),
        tokens_remaining=_number(remaining_tokens),
        requests_reset=parse_duration(headers.get("x-ratelimit-reset-requests")),
        tokens_reset=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def read_raw_rate_limit_headers(raw: Iterable[tuple[bytes, bytes]]) -> StatedLimits | None:
    """:func:`read_rate_limit_headers` of raw ``(name, value)`` byte pairs (``httpx.Headers.raw``): one
    pass over them, cheaper per answer than looking each name up (most answers have none)."""
    # The first byte is tested first: most headers are other names, passed over without a call.
    found = {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in raw
        if name[:1] in b"xX" and name[:12].lower() == b"x-ratelimit-"
    }
    return read_rate_limit_headers(found) if found else None


def parse_reset_time(text: str | None, now: float) -> float | None:
    """Seconds from ``now`` (a ``time.time()`` reading) to an RFC 3339 reset time (0 when past).

    Example:
        >>> parse_reset_time("1970-01-01T00:01:00Z", now=30.0)
        30.0
    """
    if text is None or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:  # RFC 3339 requires an offset: a time without one is unreadable
        return None
    return max(0.0, moment.timestamp() - now)


def read_anthropic_rate_limit_headers(
    headers: Mapping[str, str], *, now: float | None = None
) -> StatedLimits | None:
    """The ``anthropic-ratelimit-*`` headers of an answer (names in lower case), or None when it has none;
    resets in seconds from ``now`` (default: ``time.time()``). The token limit is the input-token one when
    stated (see the module docstring); the token reset is that of an exhausted token limit, if any.

    Example:
        >>> stated = read_anthropic_rate_limit_headers(
        ...     {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0",
        ...      "anthropic-ratelimit-requests-reset": "1970-01-01T00:00:12Z"}, now=10.0)
        >>> stated.requests_limit, stated.requests_remaining, stated.requests_reset
        (50.0, 0.0, 2.0)
    """
    prefix = "anthropic-ratelimit-"
    if not any(name.startswith(prefix) for name in headers):
        return None
    clock = time.time() if now is None else now

    def read(kind: str) -> tuple[float | None, float | None, float | None]:
        return (
            _number(headers.get(f"{prefix}{kind}-limit")),
            _number(headers.get(f"{prefix}{kind}-remaining")),
            parse_reset_time(headers.get(f"{prefix}{kind}-reset"), clock),
        )

    requests = read("requests")
    token_kinds = [read(kind) for kind in ("input-tokens", "tokens", "output-tokens")]
    tokens_limit = next((limit for limit, _, _ in token_kinds[:2] if limit is not None), None)
    stated_remaining = [(remaining, reset) for _, remaining, reset in token_kinds if remaining is not None]
    # The limit that holds the client longest decides: an exhausted one, else the scarcest.
    exhausted = [(remaining, reset or 0.0) for remaining, reset in stated_remaining if remaining < 1]
    tokens_remaining: float | None = None
    tokens_reset: float | None = None
    if exhausted:
        tokens_remaining, tokens_reset = max(exhausted, key=lambda pair: pair[1])
    elif stated_remaining:
        tokens_remaining, tokens_reset = min(stated_remaining, key=lambda pair: pair[0])
    return StatedLimits(
        requests_limit=requests[0],
        tokens_limit=tokens_limit,
        requests_remaining=requests[1],
        tokens_remaining=tokens_remaining,
        requests_reset=requests[2],
        tokens_reset=tokens_reset,
    )


def read_raw_anthropic_rate_limit_headers(raw: Iterable[tuple[bytes, bytes]]) -> StatedLimits | None:
    """:func:`read_anthropic_rate_limit_headers` of raw ``(name, value)`` byte pairs, in one pass."""
    found = {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in raw
        if name[:1] in b"aA" and name[:20].lower() == b"anthropic-ratelimit-"
    }
    return read_anthropic_rate_limit_headers(found) if found else None


def apply_stated_limits(limiter: RateLimiter, stated: StatedLimits, *, max_hold: float) -> None:
    """Make the stated limits ``limiter``'s, and hold it until the reset when nothing remains (for at
    most ``max_hold`` seconds)."""
    limiter.learn(stated.requests_limit, stated.tokens_limit)
    for remaining, reset in (
        (stated.requests_remaining, stated.requests_reset),
        (stated.tokens_remaining, stated.tokens_reset),
    ):
        if remaining is not None and remaining < 1 and reset:
            limiter.hold(min(reset, max_hold))
