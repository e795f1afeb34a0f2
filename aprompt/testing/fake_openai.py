"""A fake OpenAI-compatible chat server on loopback, with scriptable answers and fault injection.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length or chunked bodies) for real clients such
as httpx, and is meant for tests and benchmarks: every request is recorded with its arrival and
finish times, the number of requests in flight is tracked, and faults can be injected.
``python -m aprompt.testing.fake_openai --latency-ms 20`` runs one in its own process.

Fault modes (each a :class:`~aprompt.testing._wire.Fault`; the same on the Anthropic fake):

- failures: ``Fault.http_status(503)``, ``Fault.rate_limited("2")`` (429 with Retry-After),
  ``Fault.quota_exhausted()`` (429 ``insufficient_quota``), ``Fault.delay(s)``,
  ``Fault.drop_connection()``, ``Fault.invalidjson_bytes()``, ``Fault.missing_choices()``;
- answers that are not answers: ``Fault.empty_content()``, ``Fault.null_content()``,
  ``Fault.content_filter()``, ``Fault.truncated()`` (``finish_reason: "length"``), or any
  ``Fault.reply(content, finish_reason=..., status=..., delay=..., fields=...)``;
- bodies: ``Fault.slow_body(chunk_bytes=1, every=0.5)`` (a 200 whose body trickles),
  ``Fault.huge_body(megabytes=200, chunked=False)`` (streamed, never built in memory),
  ``Fault.event_stream()`` and ``Fault.encoded("br")`` (replies in a form the client never reads).

A context window (``context_tokens=N``) refuses every chat request whose prompt is longer than ``N``
tokens (counted as in the answers' usage) with the provider's 400 for a prompt over the model's context.

They apply to chat requests, and are taken, for each request, from the script
(``server.script([...])``: one entry per request in order, ``None`` for a normal answer, or a
function of the request number counted from 0), else from the queue
(``server.queue_faults(...)``), else drawn at the seeded ``fault_rates``.

An outage (``server.outage(seconds=5, mode="503")``) answers every request, of any path, with
that status, or closes the connection without answering (``mode="close"``), from now (or
``after`` seconds from now) for ``seconds``; :meth:`FakeOpenAIServer.end_outage` ends it early.

Example::

    async with FakeOpenAIServer(responder=lambda req: "Answer: 42") as server:
        lm = OpenAICompatibleLM(model="fake", base_url=server.base_url)
        server.script([Fault.content_filter(), None, Fault.http_status(500)])
        server.outage(seconds=2.0, mode="close", after=1.0)
        ...
"""

from __future__ import annotations

import inspect
import json
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from aprompt.testing._faults import (
    FaultSchedule,
    Outage,
    Script,
    fault_name,
    injected_failure,
    responder_reply,
)
from aprompt.testing._http_reply import (
    Answer as Answer,  # the fake Anthropic server's answers are of this shape too
)
from aprompt.testing._http_reply import StreamedBody, error_body, json_bytes, send_reply, shaped
from aprompt.testing._rate_window import Window, admit, limit_headers
from aprompt.testing._serve import main as main  # python -m aprompt.testing.fake_openai
from aprompt.testing._serve import serve_forever as serve_forever
from aprompt.testing._wire import (
    FROM_RESPONDER,
    HTML_PAGE,
    ChatRequest,
    Fault,
    RecordedRequest,
    ServerRateLimit,
    estimate_tokens,
)

__all__ = [
    "FROM_RESPONDER",
    "ChatRequest",
    "FakeOpenAIServer",
    "Fault",
    "RecordedRequest",
    "Script",
    "ServerRateLimit",
    "StreamedBody",
    "estimate_tokens",
]


Reply = str | tuple[str, dict[str, Any]] | Fault
Responder = Callable[[ChatRequest], Reply | Awaitable[Reply]]


def _default_responder(request: ChatRequest) -> str:
    return "Answer: ok"


@attrs.define
class FakeOpenAIServer:
    """A loopback server answering ``POST /v1/chat/completions`` (and ``/chat/completions``).

    Attributes:
        responder: maps a :class:`ChatRequest` to the assistant's text (sync or async), to
            ``(text, fields overriding the answer's)``, or to a ``Fault.reply(...)`` (status 200;
            ``Fault.content_filter()``, ``Fault.truncated("...")``, ...) to answer that way.
        latency: seconds to wait before answering, or a function of a seeded ``random.Random``.
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
        fault_rates: probability per request of each :class:`Fault` (drawn in order, seeded).
        rate_limit: a hard server-side rate limit answered with 429.
        response_headers: extra headers of the ``n``-th POST answer (0-based), or None.
        seed: seeds the latency and fault draws.
        record: keep a :class:`RecordedRequest` per request in :attr:`requests` (turn off for long
            benchmark runs; :attr:`answered` still counts).
        context_tokens: the model's context window: a chat request whose prompt is longer is refused
            with a 400 as the provider words it (OpenAI's ``context_length_exceeded``); None: no limit.
    """

    responder: Responder = _default_responder
    latency: float | Callable[[random.Random], float] = 0.0
    api_key: str | None = None
    fault_rates: Sequence[tuple[Fault, float]] = ()
    rate_limit: ServerRateLimit | None = None
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    record: bool = True
    response_headers: Callable[[int], dict[str, str]] | None = None
    context_tokens: int | None = None

    requests: list[RecordedRequest] = attrs.field(factory=list, init=False)
    in_flight: int = attrs.field(default=0, init=False)
    max_in_flight: int = attrs.field(default=0, init=False)
    answered: int = attrs.field(default=0, init=False)
    connections_opened: int = attrs.field(default=0, init=False)
    refused_in_outage: int = attrs.field(default=0, init=False)
    _schedule: FaultSchedule = attrs.field(factory=FaultSchedule, init=False)
    _outage: Outage | None = attrs.field(default=None, init=False)
    _rng: random.Random = attrs.field(init=False)
    _window: Window = attrs.field(factory=deque, init=False)
    _posts: int = attrs.field(default=0, init=False)
    _task_group: anyio.abc.TaskGroup | None = attrs.field(default=None, init=False)
    _listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # -- scripting ---------------------------------------------------------------------------
    def queue_faults(self, *faults: Fault) -> None:
        """Apply these faults, in order, to the next requests (one fault per request)."""
        self._schedule.queued.extend(faults)

    def script(self, steps: Script | None) -> None:
        """Script the next chat requests: entry ``n`` (or ``steps(n)``) applies to the ``n``-th
        chat request from now (0-based); ``None`` there, or past the end of the list, falls back to
        the queue and the rates. ``script(None)`` removes the script."""
        self._schedule.set_script(steps)

    def outage(self, seconds: float = math.inf, *, mode: str = "503", after: float = 0.0) -> None:
        """Fail every request (any path) from ``after`` seconds from now, for ``seconds``.

        ``mode``: ``"503"`` (or another of ``"500"``, ``"502"``, ``"504"``, ``"529"``, ``"429"``)
        answers that status; ``"close"`` closes the connection without answering. Replaces any
        outage set before; :meth:`end_outage` ends it early.
        """
        self._outage = Outage.starting(time.monotonic(), seconds, mode=mode, after=after)

    def end_outage(self) -> None:
        """End the outage now (requests are answered again)."""
        self._outage = None

    @property
    def in_outage(self) -> bool:
        """Whether a request arriving now would be refused by the outage."""
        return self._outage is not None and self._outage.covers(time.monotonic())

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, ready to pass to a client."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.partition("?")[0].endswith("/chat/completions")]

    def reset_records(self) -> None:
        self.requests.clear()
        self.max_in_flight = self.in_flight

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> FakeOpenAIServer:
        listener = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self.port, reuse_port=False
        )
        self._listener = listener
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(listener.serve, self._handle_connection)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task_group is not None and self._listener is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
        await self._listener.aclose()

    # -- HTTP --------------------------------------------------------------------------------
    async def _handle_connection(self, stream: anyio.abc.SocketStream) -> None:
        self.connections_opened += 1
        reader = BufferedByteReceiveStream(stream)
        async with stream:
            while True:
                try:
                    head = await reader.receive_until(b"\r\n\r\n", 65536)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                except anyio.DelimiterNotFound:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                try:
                    raw = await reader.receive_exactly(length) if length else b""
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                keep_open = await self._handle_request(stream, method, path, headers, raw)
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return

    async def _handle_request(
        self,
        stream: anyio.abc.SocketStream,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
    ) -> bool:
        started = time.monotonic()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        status, fault_name, body = 200, None, None
        recorded = False

        def settle() -> None:
            # Before the reply's last byte goes out: a client holding its reply sees the record and
            # the counters (in flight, answered) that include it.
            nonlocal recorded
            if recorded:
                return
            recorded = True
            self.in_flight -= 1
            if status == 200 and fault_name is None:
                self.answered += 1
            if self.record:
                self.requests.append(
                    RecordedRequest(
                        path=path,
                        body=body,
                        headers={k: v for k, v in headers.items()},
                        started=started,
                        finished=time.monotonic(),
                        status=status,
                        fault=fault_name,
                    )
                )

        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        try:
            refused = self._refuse_in_outage()
            if refused is not None:
                status, payload, extra_headers, fault_name = refused
            else:
                status, payload, extra_headers, fault_name = await self._answer(method, path, headers, body)
            if status < 0:  # dropped connection
                return False
            extra_headers = {**extra_headers, **self._more_headers(method, status)}
            await send_reply(stream, status, payload, extra_headers, before_last=settle)
            return True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        finally:
            settle()

    def _refuse_in_outage(self) -> Answer | None:
        if not self.in_outage:
            return None
        assert self._outage is not None
        self.refused_in_outage += 1
        return self._outage.refusal(self._error_payload)

    def _error_payload(self, status: int, message: str) -> bytes:
        """The body of an error answer (the Anthropic fake uses its API's format)."""
        return error_body(message, "injected")

    def _over_context(self, prompt_tokens: int) -> Answer | None:
        """The 400 refusing a prompt of ``prompt_tokens`` over :attr:`context_tokens`, or None."""
        if self.context_tokens is None or prompt_tokens <= self.context_tokens:
            return None
        message = (
            f"This model's maximum context length is {self.context_tokens} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
        )
        body = json_bytes(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            }
        )
        return 400, body, {}, "context_length"

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> Answer:
        route = path.partition("?")[0].rstrip("/")  # a query (e.g. Azure's api-version) does not route
        if method == "GET" and route.endswith("/models"):
            return (
                200,
                json_bytes({"object": "list", "data": [{"id": "fake", "object": "model"}]}),
                {},
                None,
            )
        if method != "POST" or not route.endswith("/chat/completions"):
            return 404, error_body("not found", "invalid_request_error"), {}, None
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, error_body("Incorrect API key provided.", "invalid_api_key"), {}, None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return (
                400,
                error_body("'messages' is a required property", "invalid_request_error"),
                {},
                None,
            )

        fault = self._next_fault()
        latency = self.latency(self._rng) if callable(self.latency) else self.latency
        if fault is not None and fault.kind in ("delay", "reply"):
            latency += fault.seconds
        failed = await self._injected_failure(fault, latency)
        if failed is not None:
            return failed

        request = ChatRequest(
            model=str(body.get("model", "")),
            messages=body["messages"],
            params={k: v for k, v in body.items() if k not in ("model", "messages")},
            headers=headers,
        )
        prompt_tokens = estimate_tokens(request.prompt_text)
        overflow = self._over_context(prompt_tokens)
        if overflow is not None:
            return overflow
        text, extra_fields, finish = await self._reply(request, fault)
        completion_tokens = estimate_tokens(text or "")
        if finish == "length":  # cut by its budget: it wrote all of it, as servers report
            completion_tokens = _budget(request.params) or completion_tokens
        limited = self._over_rate_limit(prompt_tokens + completion_tokens)
        if limited is not None:
            return (
                429,
                error_body("rate limit exceeded", "rate_limit_exceeded"),
                {"retry-after": f"{limited:.3f}"},
                "rate_limit",
            )
        await anyio.sleep(latency)
        if fault is not None and fault.kind == "invalid_json":
            return 200, b'{"choices": [{"message": ', {}, "invalid_json"
        if fault is not None and fault.kind == "html_page":
            return 200, HTML_PAGE, {}, "html_page"
        if fault is not None and fault.kind == "event_stream":
            event = b"data: " + json_bytes({"choices": [{"index": 0, "delta": {"content": text}}]})
            return 200, event + b"\n\ndata: [DONE]\n\n", {"Content-Type": "text/event-stream"}, "event_stream"
        if fault is not None and fault.kind == "encoded":
            return 200, b"\x1b\x0b\x00\xf8", {"Content-Encoding": fault.message}, "encoded"
        if fault is not None and fault.kind == "missing_choices":
            return 200, json_bytes({"id": "x", "object": "chat.completion"}), {}, "missing_choices"
        payload = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or "fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish or "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            **extra_fields,
        }
        return self._answered(json_bytes(payload), fault)

    @staticmethod
    def _answered(payload: bytes, fault: Fault | None) -> Answer:
        """A 200 carrying ``payload``, sent as ``fault`` says (trickled, padded, or whole)."""
        return 200, shaped(payload, fault), {}, fault_name(fault)

    async def _injected_failure(self, fault: Fault | None, latency: float) -> Answer | None:
        """The answer of a fault that fails before any reply is made, or None."""
        if fault is not None and fault.kind == "quota":
            return self._quota_spent()
        return await injected_failure(fault, latency, self._error_payload)

    def _quota_spent(self) -> Answer:
        """The answer to a request once the account's quota is spent (the Anthropic fake: its own)."""
        error = {
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
        return 429, json_bytes({"error": error}), {}, "quota"

    async def _reply(
        self, request: ChatRequest, fault: Fault | None
    ) -> tuple[str | None, dict[str, Any], str | None]:
        """The assistant's text (None: JSON null), fields overriding the answer's, and the
        scripted finish reason (None: the server's own)."""
        if fault is not None and fault.kind == "reply" and fault.content is not FROM_RESPONDER:
            text: str | None = fault.content if isinstance(fault.content, str) else None
            extra: dict[str, Any] = {}
        else:
            reply = self.responder(request)
            if inspect.isawaitable(reply):
                reply = await reply
            if isinstance(reply, Fault):
                fault = responder_reply(reply)
                await anyio.sleep(fault.seconds)
                text, extra = (fault.content if isinstance(fault.content, str) else None), {}
            else:
                text, extra = (reply, {}) if isinstance(reply, str) else reply
        if fault is not None and fault.kind == "reply":
            return text, {**extra, **(fault.fields or {})}, fault.finish_reason
        return text, extra, None

    def _next_fault(self) -> Fault | None:
        return self._schedule.next(self.fault_rates, self._rng)

    def _more_headers(self, method: str, status: int) -> dict[str, str]:
        """The rate-limit headers (when asked for) and the scripted ones of a POST's answer."""
        headers: dict[str, str] = {}
        if method != "POST":
            return headers
        number, self._posts = self._posts, self._posts + 1
        limit = self.rate_limit
        if limit is not None and limit.headers and status in (200, 429):
            headers.update(limit_headers(self._window, limit))
        if self.response_headers is not None:
            headers.update(self.response_headers(number))
        return headers

    def _over_rate_limit(self, tokens: int) -> float | None:
        """Admit this request into the window, or return the seconds until it would fit."""
        return admit(self._window, self.rate_limit, tokens)


def _budget(params: Mapping[str, Any]) -> int | None:
    """The request's completion budget (``max_completion_tokens``, else ``max_tokens``, as vLLM reads
    them), if a positive int."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


if __name__ == "__main__":
    main()
