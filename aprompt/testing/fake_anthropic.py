"""A fake Anthropic Messages API server on loopback, with the fault injection of the OpenAI fake.

:class:`FakeAnthropicServer` answers ``POST /v1/messages`` like the real API: it requires the
``x-api-key`` (when configured; on every route, ``GET /v1/models`` included) and the
``anthropic-version`` headers, validates the body as strictly as the API does (``max_tokens``
required, user and assistant alternating from a user turn, text content only and none blank, no
unknown fields, temperature within 0..1), honours ``stop_sequences`` and ``max_tokens``, and reports errors as
``{"type": "error", "error": {"type", "message"}}`` with the API's status codes (429
``rate_limit_error`` with ``retry-after``, 529 ``overloaded_error``, ...). Connections, recording,
latency, queued, scripted or seeded :class:`~aprompt.testing.fake_openai.Fault` (every fault mode
listed in :mod:`aprompt.testing.fake_openai`: slow and huge bodies, scripted replies, outages), and
the hard :class:`~aprompt.testing.fake_openai.ServerRateLimit` come from
:class:`~aprompt.testing.fake_openai.FakeOpenAIServer`, which it extends. A scripted
``finish_reason`` is sent as its ``stop_reason``: ``"stop"`` → ``"end_turn"``, ``"length"`` →
``"max_tokens"``, ``"content_filter"`` → ``"refusal"``, ``"tool_calls"`` → ``"tool_use"`` (a
``tool_use`` block follows the text), any other as it is; ``None`` content sends no content blocks.

Example::

    async with FakeAnthropicServer(responder=lambda req: "Answer: 42") as server:
        lm = AnthropicLM("fake-claude", server.base_url)
        server.queue_faults(Fault.http_status(529, "Overloaded"))
        ...
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import attrs

from aprompt.testing._wire import HTML_PAGE
from aprompt.testing.fake_openai import (
    Answer,
    ChatRequest,
    FakeOpenAIServer,
    Fault,
    RecordedRequest,
    ServerRateLimit,
    estimate_tokens,
)

__all__ = [
    "ERROR_TYPES",
    "FakeAnthropicServer",
    "Fault",
    "MessagesRequest",
    "RecordedRequest",
    "ServerRateLimit",
    "anthropic_error_body",
]

#: The API's error ``type`` for each status it uses (any other 5xx is ``api_error``).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
    }
)

# The answer to GET /v1/models: a one-model listing in the API's shape.
_MODEL_LIST = json.dumps(
    {
        "data": [
            {
                "type": "model",
                "id": "fake-claude",
                "display_name": "Fake Claude",
                "created_at": "2025-01-01T00:00:00Z",
            }
        ],
        "has_more": False,
        "first_id": "fake-claude",
        "last_id": "fake-claude",
    }
).encode()

# A scripted finish_reason (OpenAI's words) as the stop_reason this API sends.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
}

# The content block of a reply that stopped to call a tool.
_TOOL_CALL = {"type": "tool_use", "id": "toolu_fake", "name": "lookup", "input": {"query": "x"}}


@attrs.frozen
class MessagesRequest(ChatRequest):
    """A Messages API request as the responder sees it: :attr:`messages` with their content as plain
    text (text blocks joined), the top-level :attr:`system` text, the other fields in :attr:`params`."""

    system: str = ""

    @property
    def prompt_text(self) -> str:
        return "\n".join([self.system, *(str(m["content"]) for m in self.messages)]).lstrip("\n")


def anthropic_error_body(status: int, message: str) -> bytes:
    """The API's error body for ``status``."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


@attrs.define
class FakeAnthropicServer(FakeOpenAIServer):
    """A loopback server answering ``POST /v1/messages``; arguments as for
    :class:`~aprompt.testing.fake_openai.FakeOpenAIServer`, except that:

    - ``api_key``, when set, is required in the ``x-api-key`` header on every route (else 401);
    - ``GET /v1/models`` answers a one-model listing (what the client's up-front probe asks for);
    - the responder receives a :class:`MessagesRequest`; a reply ``(text, fields)`` overrides
      fields of the answer (e.g. ``{"content": [...]}``, ``{"usage": ...}``);
    - ``Fault.missing_choices()`` answers 200 with a message lacking ``content``;
    - every request must carry an ``anthropic-version`` header (else 400).
    """

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the client appends ``/v1/messages``."""
        return f"http://{self.host}:{self.port}"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded requests to ``/v1/messages``."""
        return [r for r in self.requests if r.path.rstrip("/") == "/v1/messages"]

    async def __aenter__(self) -> FakeAnthropicServer:
        await super().__aenter__()
        return self

    def _error_payload(self, status: int, message: str) -> bytes:
        return anthropic_error_body(status, message)

    def _quota_spent(self) -> Answer:
        message = "Your credit balance is too low to access the Anthropic API."
        return 402, anthropic_error_body(402, message), {}, "quota"

    def _over_context(self, prompt_tokens: int) -> Answer | None:
        if self.context_tokens is None or prompt_tokens <= self.context_tokens:
            return None
        message = f"prompt is too long: {prompt_tokens} tokens > {self.context_tokens} maximum"
        return 400, anthropic_error_body(400, message), {}, "context_length"

    def _more_headers(self, method: str, status: int) -> dict[str, str]:
        headers = super()._more_headers(method, status)
        if self.rate_limit is None or not self.rate_limit.headers:
            return headers
        # The same figures in Anthropic's names; its reset is the time the limit is full again.
        now = time.time()
        for kind in ("requests", "tokens"):
            for field in ("limit", "remaining", "reset"):
                value = headers.pop(f"x-ratelimit-{field}-{kind}", None)
                if value is not None and field == "reset":
                    moment = datetime.fromtimestamp(now + float(value.rstrip("s")), tz=UTC)
                    value = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                if value is not None:
                    headers[f"anthropic-ratelimit-{kind}-{field}"] = value
        return headers

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> Answer:
        # As the API does, the key is checked before the route: the client's up-front probe
        # (GET /v1/models) must see a wrong key refused, not a 404 that lets the run start.
        if self.api_key is not None and headers.get("x-api-key") != self.api_key:
            return 401, anthropic_error_body(401, "invalid x-api-key"), {}, None
        route = path.partition("?")[0].rstrip("/")
        if method == "GET" and route == "/v1/models":
            return 200, _MODEL_LIST, {}, None
        if method != "POST" or route != "/v1/messages":
            return 404, anthropic_error_body(404, f"Not found: {method} {path}"), {}, None
        if not headers.get("anthropic-version"):
            return 400, anthropic_error_body(400, "anthropic-version: header is required"), {}, None
        if not isinstance(body, dict):
            return 400, anthropic_error_body(400, "the body is not a JSON object"), {}, None
        problem = _invalid_body(body)
        if problem:
            return 400, anthropic_error_body(400, problem), {}, None

        fault = self._next_fault()
        latency = self.latency(self._rng) if callable(self.latency) else self.latency
        if fault is not None and fault.kind in ("delay", "reply"):
            latency += fault.seconds
        failed = await self._injected_failure(fault, latency)
        if failed is not None:
            return failed

        request = MessagesRequest(
            model=str(body["model"]),
            messages=[{"role": m["role"], "content": _text(m["content"])} for m in body["messages"]],
            params={k: v for k, v in body.items() if k not in ("model", "messages", "system")},
            headers=headers,
            system=_text(body.get("system", "")),
        )
        overflow = self._over_context(estimate_tokens(request.prompt_text))
        if overflow is not None:
            return overflow
        reply, extra_fields, finish = await self._reply(request, fault)
        text, stop_reason, stop_sequence = _cut(reply or "", body)
        if finish is not None:
            stop_reason, stop_sequence = _STOP_REASONS.get(finish, finish), None
        input_tokens, output_tokens = estimate_tokens(request.prompt_text), estimate_tokens(text)
        if stop_reason == "max_tokens":  # cut by its budget: it wrote all of it, as the API reports
            output_tokens = int(body["max_tokens"])
        limited = self._over_rate_limit(input_tokens + output_tokens)
        if limited is not None:
            message = "This request would exceed your organization's rate limit."
            return 429, anthropic_error_body(429, message), {"retry-after": f"{limited:.3f}"}, "rate_limit"
        await anyio.sleep(latency)
        if fault is not None and fault.kind == "invalid_json":
            return 200, b'{"type": "message", "content": [{"type": "text", "text": ', {}, "invalid_json"
        if fault is not None and fault.kind == "html_page":
            return 200, HTML_PAGE, {}, "html_page"
        if fault is not None and fault.kind == "missing_choices":
            return 200, json.dumps({"id": "msg_x", "type": "message"}).encode(), {}, "missing_choices"
        payload = {
            "id": f"msg_fake{len(self.requests):06d}",
            "type": "message",
            "role": "assistant",
            "content": [
                *([{"type": "text", "text": text}] if reply is not None else []),
                *([_TOOL_CALL] if stop_reason == "tool_use" else []),
            ],
            "model": request.model,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            **extra_fields,
        }
        return self._answered(json.dumps(payload).encode(), fault)


def _text(content: Any) -> str:
    """A message's or the system's content as text: a string, or the texts of its blocks."""
    if isinstance(content, str):
        return content
    return "".join(str(block.get("text", "")) for block in content)


def _cut(text: str, body: dict[str, Any]) -> tuple[str, str, str | None]:
    """The reply as generation would end it: at the first stop sequence, or after max_tokens."""
    stops = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s and s in text]
    if stops:
        at, sequence = min(stops)
        return text[:at], "stop_sequence", sequence
    budget = int(body["max_tokens"])
    if estimate_tokens(text) > budget:
        return text[: budget * 4], "max_tokens", None
    return text, "end_turn", None


def _invalid_body(body: dict[str, Any]) -> str:
    """The API's complaint about a body, or "" when it is valid."""
    extra = sorted(set(body) - _FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required (a positive integer)"
    temperature = body.get("temperature", 0.0)
    if not isinstance(temperature, int | float) or not 0.0 <= temperature <= 1.0:
        return "temperature: Input should be less than or equal to 1"
    if "system" in body and not _is_text(body["system"], allow_empty=True):
        return "system: Input should be a valid string or a list of text blocks"
    stops = body.get("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        return "stop_sequences: Input should be a valid list of strings"
    return _invalid_messages(body.get("messages"))


def _invalid_messages(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        if not _is_text(message.get("content"), allow_empty=False):
            return "messages: text content blocks must contain non-whitespace text"
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            if index == 0:
                return "messages: first message must use the 'user' role"
            return "messages: roles must alternate between 'user' and 'assistant'"
    return ""


def _is_text(content: Any, *, allow_empty: bool) -> bool:
    # The API refuses a message whose text is empty or only whitespace.
    if isinstance(content, str):
        return allow_empty or bool(content.strip())
    if not isinstance(content, list) or (not content and not allow_empty):
        return False
    return all(
        isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
        and (allow_empty or bool(block["text"].strip()))
        for block in content
    )
