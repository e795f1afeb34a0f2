"""The retry policy of the HTTP LM clients: which failures are retried, how long to back off, and
how an HTTP error status becomes a typed error. Provider-independent; built on tenacity.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs
import tenacity

from aprompt._errors import (
    AuthenticationError,
    BadResponseError,
    ConfigError,
    ContextOverflowError,
    LMConnectionError,
    LMStatusError,
    LMTimeoutError,
    QuotaExhaustedError,
    RateLimitError,
    RequestRejectedError,
    ServerError,
    TLSCertificateError,
    TruncatedResponseError,
    UnreadableResponseError,
)

__all__ = [
    "RETRYABLE_ERRORS",
    "RetryPolicy",
    "error_codes",
    "error_for_status",
    "parse_retry_after",
    "raw_retry_after",
    "retry_after_from",
]

#: Worth another attempt: 429, 5xx/408/409, timeouts, dropped connections (not a refused TLS certificate,
#: :class:`TLSCertificateError`, which no retry changes), malformed, empty, filtered or too large bodies
#: (:class:`BadResponseError` and its subclasses) -- except a
#: :class:`TruncatedResponseError`, which the client re-sends once itself, with a larger ``max_tokens``
#: (the same request would be cut the same way again), and an :class:`UnreadableResponseError` (every
#: reply comes in the same unreadable form).
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    RateLimitError,
    ServerError,
    LMTimeoutError,
    LMConnectionError,
    BadResponseError,
)


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, RETRYABLE_ERRORS) and not isinstance(
        error, TruncatedResponseError | UnreadableResponseError | TLSCertificateError
    )


def _within(low: float, high: float = math.inf, *, integer: bool = False) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: a number (an integer with ``integer``) in ``[low, high]``, else a
    :class:`~aprompt._errors.ConfigError` naming the field."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        number = isinstance(value, kinds) and not isinstance(value, bool)
        if not number or not low <= float(value) <= high:
            wanted = "an integer" if integer else "a number"
            bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise ConfigError(f"RetryPolicy.{attribute.name} must be {wanted} {bounds}, got {value!r}")

    return check


@attrs.frozen
class RetryPolicy:
    """How often and how patiently a failed request is re-sent.

    The wait before retry ``n`` (1-based) is
    ``min(max_backoff, initial_backoff * multiplier**(n-1))``, scaled by a random factor in
    ``[1 - jitter, 1]`` (jitter spreads the retries of many tasks). With the defaults: about
    0.25-0.5, 0.5-1, 1-2, 2-4, 4-8, 8-16 s, 31 s at most in all. After a 429 the endpoint's shared
    limiter also holds the retry until the ``Retry-After`` has passed, and then a random share of
    ``pause_jitter`` times the pause (2 s at most), so that the retries a pause held do not all arrive
    at its end at once.

    Attributes:
        max_retries: re-sends after the first attempt; then the last failure's error is raised.
        initial_backoff, multiplier, max_backoff: the exponential back-off, in seconds.
        jitter: the fraction of each back-off that is randomized (0 = none, 1 = full jitter).
        max_retry_after: the longest ``Retry-After`` honoured, in seconds (longer ones are capped); a
            429's pauses its endpoint, a 5xx's delays that request's re-send.
        rate_limit_pause: the pause after a 429 that carries no ``Retry-After``, in seconds.
        pause_jitter: the fraction of a pause over which the attempts it held are spread after it.

    Example:
        >>> RetryPolicy(max_retries=3, initial_backoff=0.01).backoff(2, random.Random(0)) <= 0.02
        True
    """

    max_retries: int = attrs.field(default=6, validator=_within(0, integer=True))
    initial_backoff: float = attrs.field(default=0.5, validator=_within(0))
    multiplier: float = attrs.field(default=2.0, validator=_within(1))
    max_backoff: float = attrs.field(default=30.0, validator=_within(0))
    jitter: float = attrs.field(default=0.5, validator=_within(0, 1))
    max_retry_after: float = attrs.field(default=60.0, validator=_within(0))
    rate_limit_pause: float = attrs.field(default=1.0, validator=_within(0))
    pause_jitter: float = attrs.field(default=0.25, validator=_within(0))

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the ``retry``-th re-send (1-based)."""
        full = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        draw = (rng or random).random()
        return full * (1.0 - self.jitter * draw)

    def pause_after_rate_limit(self, retry_after: float | None) -> float:
        """How long a 429 pauses its endpoint: the server's Retry-After (capped), or the default."""
        if retry_after is None:
            return self.rate_limit_pause
        return min(max(retry_after, 0.0), self.max_retry_after)

    def retrying(
        self, before_sleep: Callable[[tenacity.RetryCallState], None] | None = None
    ) -> tenacity.AsyncRetrying:
        """A fresh tenacity controller for one call (they keep per-call state: never share one).

        It retries :data:`RETRYABLE_ERRORS` only, re-raises the last error itself when attempts run
        out (never tenacity's ``RetryError``), and sleeps with :func:`anyio.sleep` (asyncio, trio).
        """
        return tenacity.AsyncRetrying(
            sleep=anyio.sleep,
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        wait = self.backoff(state.attempt_number)
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, ServerError) and error.retry_after is not None:
            # A 503 saying when to come back: re-sent no sooner (capped like a 429's). A 429's wait is
            # its endpoint's pause, which every request honours.
            wait = max(wait, min(max(error.retry_after, 0.0), self.max_retry_after))
        return wait


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delta-seconds or an HTTP-date.

    None if absent or unreadable; dates in the past give 0.

    Example:
        >>> parse_retry_after("1.5")
        1.5
        >>> now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=now)
        5.0
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds else None  # NaN is unreadable
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else datetime.now(UTC)
    return max((when - reference).total_seconds(), 0.0)


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """Seconds an answer's headers ask to wait: ``retry-after-ms`` (OpenAI's exact wait, in
    milliseconds) when readable, else ``retry-after`` (:func:`parse_retry_after`, often whole seconds,
    rounded up).

    Example:
        >>> retry_after_from({"retry-after": "1", "retry-after-ms": "120"})
        0.12
    """
    exact = headers.get("retry-after-ms")
    if exact is not None:
        try:
            milliseconds = float(exact.strip())
        except ValueError:
            milliseconds = math.nan
        if milliseconds >= 0:  # NaN and negatives are unreadable
            return milliseconds / 1000
    return parse_retry_after(headers.get("retry-after"))


#: How servers word a refusal of a prompt longer than the model's context: OpenAI, vLLM, OpenRouter,
#: Mistral ("maximum context length"), llama.cpp ("exceeds the available context size"), Anthropic ("prompt
#: is too long", and "input length and `max_tokens` exceed context limit" for a prompt that leaves no room
#: for the reply's budget), Bedrock ("input is too long"), Gemini ("input token count ... exceeds the
#: maximum number of tokens"), TGI ("`inputs` tokens + `max_new_tokens` must be <= ...").
_CONTEXT_OVERFLOW = re.compile(
    r"context[ _-]?(?:length|size|window|limit)|prompt is too long|input is too long"
    r"|exceeds the maximum number of tokens|max_new_tokens` must be",
    re.IGNORECASE,
)


#: The ``code`` or ``type`` of an error that says the account's quota is spent rather than a rate limit
#: reached: OpenAI's (on a 429), Anthropic's (on a 402). Read from those fields only: other providers word
#: per-minute limits, which do clear, as "exceeded your quota" too.
_QUOTA_SPENT = frozenset({"insufficient_quota", "billing_error"})

_SPENT_HINT = (
    "the account's quota or credit is spent, which no wait clears: add credit to this endpoint's account "
    "or raise its spending limit, then call again (an optimization with a run_dir resumes)"
)


def error_codes(content: bytes) -> frozenset[str]:
    """The ``code`` and ``type`` strings of an error body's ``error`` object (OpenAI's and Anthropic's
    shape); empty for any other body."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError, RecursionError):
        return frozenset()
    if not isinstance(error, dict):
        return frozenset()
    return frozenset(value for value in (error.get("code"), error.get("type")) if isinstance(value, str))


def error_for_status(
    status: int,
    server_message: str,
    *,
    endpoint: str,
    retry_after: float | None = None,
    codes: frozenset[str] = frozenset(),
) -> LMStatusError:
    """The typed error for an HTTP error status: a 402, or a 429 or other 4xx whose error ``codes`` (see
    :func:`error_codes`) say the account's quota is spent → :class:`QuotaExhaustedError`, another 429 →
    :class:`RateLimitError`, 401/403 → :class:`AuthenticationError`, 408/409/5xx → :class:`ServerError`
    (retried), a 400/413/422 saying the prompt is longer than the model's context →
    :class:`ContextOverflowError`, any other 4xx → :class:`RequestRejectedError` (none but those
    retried). The message carries the server's own message."""
    message = f"HTTP {status}: {server_message}" if server_message else f"HTTP {status}"
    if status == 402 or (400 <= status < 500 and codes & _QUOTA_SPENT):
        return QuotaExhaustedError(
            f"{message}; {_SPENT_HINT}",
            status_code=status,
            server_message=server_message,
            endpoint=endpoint,
            retry_after=retry_after,
        )
    if status == 429:
        return RateLimitError(
            message, server_message=server_message, endpoint=endpoint, retry_after=retry_after
        )
    kind: type[LMStatusError] = LMStatusError
    if status in (401, 403):
        kind = AuthenticationError
    elif status in (408, 409) or status >= 500:
        kind = ServerError
    elif status in (400, 413, 422) and _CONTEXT_OVERFLOW.search(server_message):
        kind = ContextOverflowError
    elif 400 <= status < 500:
        kind = RequestRejectedError
    return kind(
        message, status_code=status, server_message=server_message, endpoint=endpoint, retry_after=retry_after
    )


def raw_retry_after(raw: Iterable[tuple[bytes, bytes]]) -> float | None:
    """:func:`retry_after_from` of raw ``(name, value)`` byte pairs, names in any case.

    Example:
        >>> raw_retry_after([(b"Retry-After", b"3")])
        3.0
    """
    found = {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in raw
        if name[:11].lower() == b"retry-after"
    }
    return retry_after_from(found)
