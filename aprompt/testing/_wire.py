"""What the fake servers share: the requests they record, the faults they inject, their rate limit and
their token count. Importable on its own; :mod:`aprompt.testing.fake_openai` re-exports every name."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "FROM_RESPONDER",
    "ChatRequest",
    "Fault",
    "RecordedRequest",
    "ServerRateLimit",
    "estimate_tokens",
]


class _FromResponder(enum.Enum):
    FROM_RESPONDER = "the responder's text"


#: A scripted reply's ``content`` when the responder's text should be sent.
FROM_RESPONDER = _FromResponder.FROM_RESPONDER


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
    """One injected failure, or one scripted reply. Build with the class methods.

    Faults are queued (``server.queue_faults``), drawn at seeded rates (``fault_rates``) or scripted
    per request (``server.script``).
    """

    kind: str
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0
    message: str = ""
    content: str | _FromResponder | None = FROM_RESPONDER
    finish_reason: str | None = None
    fields: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    chunk_bytes: int = 0
    body_bytes: int = 0
    chunked: bool = False

    @classmethod
    def reply(
        cls,
        content: str | _FromResponder | None = FROM_RESPONDER,
        *,
        finish_reason: str | None = None,
        status: int = 200,
        delay: float = 0.0,
        fields: Mapping[str, Any] | None = None,
    ) -> Fault:
        """A scripted answer: ``content`` as the assistant's text (``None`` sends JSON ``null``;
        default: the responder's text), ending with ``finish_reason`` in OpenAI's words (``"stop"``,
        ``"length"``, ``"content_filter"``; the Anthropic fake sends its ``stop_reason``
        equivalent, and any other value as it is; default: the server's own), after ``delay``
        seconds more. ``fields`` override top-level fields of the answer. A ``status`` other than
        200 answers that HTTP error instead, with ``content`` as its message."""
        return cls(
            "reply",
            status=status,
            seconds=delay,
            content=content,
            finish_reason=finish_reason,
            fields=dict(fields) if fields else None,
        )

    @classmethod
    def empty_content(cls) -> Fault:
        """Answer 200 with an empty assistant message that says it finished normally."""
        return cls.reply("", finish_reason="stop")

    @classmethod
    def null_content(cls) -> Fault:
        """Answer 200 with ``null`` content (OpenAI) or no content blocks (Anthropic)."""
        return cls.reply(None, finish_reason="stop")

    @classmethod
    def content_filter(cls, content: str = "") -> Fault:
        """Answer 200 with ``finish_reason: "content_filter"`` (Anthropic: ``stop_reason: "refusal"``)."""
        return cls.reply(content, finish_reason="content_filter")

    @classmethod
    def truncated(cls, content: str | _FromResponder = FROM_RESPONDER) -> Fault:
        """Answer 200 with ``finish_reason: "length"`` (Anthropic: ``"max_tokens"``): a reply cut short."""
        return cls.reply(content, finish_reason="length")

    @classmethod
    def slow_body(cls, chunk_bytes: int = 1, every: float = 0.5) -> Fault:
        """Answer 200 at once, but send the body ``chunk_bytes`` bytes every ``every`` seconds
        (a slow-loris server: each read gets something, the whole takes long)."""
        return cls("slow_body", chunk_bytes=chunk_bytes, seconds=every)

    @classmethod
    def huge_body(cls, megabytes: float, *, chunked: bool = False) -> Fault:
        """Answer 200 with a valid answer padded to ``megabytes`` MiB, streamed in 64 KiB pieces
        (never built in memory); with ``chunked``, without a Content-Length."""
        return cls("huge_body", body_bytes=int(megabytes * 2**20), chunk_bytes=65536, chunked=chunked)

    @classmethod
    def http_status(
        cls, status: int, message: str = "injected failure", retry_after: str | None = None
    ) -> Fault:
        """HTTP ``status``; ``retry_after`` (sent verbatim) adds a Retry-After header, as a 503 may."""
        return cls("status", status=status, message=message, retry_after=retry_after)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Fault:
        """HTTP 429; ``retry_after`` is sent verbatim (seconds or an HTTP date); None omits it."""
        return cls("status", status=429, retry_after=retry_after, message="rate limit exceeded")

    @classmethod
    def quota_exhausted(cls) -> Fault:
        """The account's quota spent: OpenAI's 429 with ``insufficient_quota`` as its error's ``code`` and
        ``type`` (the Anthropic fake: its 402 ``billing_error``)."""
        return cls("quota")

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
    def html_page(cls) -> Fault:
        """Answer 200 with a web page, as a web server does at an address that is not its API."""
        return cls("html_page")

    @classmethod
    def event_stream(cls) -> Fault:
        """Answer 200 with the reply as Server-Sent Events, as a server set to stream every reply does."""
        return cls("event_stream")

    @classmethod
    def encoded(cls, coding: str = "br") -> Fault:
        """Answer 200 with ``Content-Encoding: coding`` whatever the request accepts (the body is not
        really encoded), as a proxy set to compress every reply does."""
        return cls("encoded", message=coding)

    @classmethod
    def missing_choices(cls) -> Fault:
        """Answer 200 with JSON that lacks ``choices``."""
        return cls("missing_choices")


@attrs.frozen
class ServerRateLimit:
    """A hard server-side limit: more than ``requests_per_minute`` requests (or
    ``tokens_per_minute`` prompt+completion tokens) in any trailing 60 s window are answered 429
    with Retry-After.

    ``period`` changes the window (for tests). With ``headers``, every answer (429s included) carries
    ``x-ratelimit-limit-*``, ``-remaining-*`` and ``-reset-*`` headers as OpenAI sends them."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    period: float = 60.0
    headers: bool = False


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


#: The body of ``Fault.html_page``: a site's front page.
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Welcome</title></head><body><h1>It works!</h1></body></html>\n"
)
