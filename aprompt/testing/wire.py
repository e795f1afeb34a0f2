"""What the fake servers share: the requests they record, the faults they inject, their rate limit and
their token count. Importable on its own; :mod:`aprompt.testing.fake_openai` re-exports every name."""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["ChatRequest", "Fault", "RecordedRequest", "ServerRateLimit", "estimate_tokens"]


def estimate_tokens(text: str) -> int:
    """The fake server's token count: one token per 4 characters, at least 1 for non-empty text."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


@attrs.frozen
class ChatRequest:
    """A chat-completions request as the responder sees it."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    headers: dict[str, str]

    @property
    def prompt_text(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages)

    @property
    def last_user(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""


@attrs.frozen
class Fault:
    """One injected failure. Build with the class methods."""

    kind: str
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0
    message: str = ""

    @classmethod
    def http_status(cls, status: int, message: str = "injected failure") -> Fault:
        return cls("status", status=status, message=message)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Fault:
        """HTTP 429; ``retry_after`` is sent verbatim (seconds or an HTTP date); None omits it."""
        return cls("status", status=429, retry_after=retry_after, message="rate limit exceeded")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds``."""
        return cls("delay", seconds=seconds)

    @classmethod
    def drop_connection(cls) -> Fault:
        """Close the connection without answering."""
        return cls("drop")

    @classmethod
    def invalid_json(cls) -> Fault:
        """Answer 200 with a body that is not JSON."""
        return cls("invalid_json")

    @classmethod
    def missing_choices(cls) -> Fault:
        """Answer 200 with JSON that lacks ``choices``."""
        return cls("missing_choices")


@attrs.frozen
class ServerRateLimit:
    """A hard server-side limit: more than ``requests_per_minute`` requests (or
    ``tokens_per_minute`` prompt+completion tokens) in any trailing 60 s window are answered 429
    with Retry-After."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


@attrs.frozen
class RecordedRequest:
    """What the server saw of one request."""

    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    started: float
    finished: float
    status: int
    fault: str | None
