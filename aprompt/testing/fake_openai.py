"""A fake OpenAI-compatible chat server on loopback, with scriptable answers and fault injection.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) for real clients such as httpx,
and is meant for tests and benchmarks: every request is recorded with its arrival and finish times,
the number of requests in flight is tracked, and faults (429 with Retry-After, 5xx, delays, dropped
connections, invalid JSON, bodies missing fields) can be queued for the next requests or drawn at
seeded rates. ``python -m aprompt.testing.fake_openai --latency-ms 20`` runs one in its own process.

Example::

    async with FakeOpenAIServer(responder=lambda req: "Answer: 42") as server:
        lm = OpenAICompatibleLM(model="fake", base_url=server.base_url)
        ...
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.abc
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from aprompt.testing.wire import ChatRequest, Fault, RecordedRequest, ServerRateLimit, estimate_tokens

__all__ = [
    "ChatRequest",
    "FakeOpenAIServer",
    "Fault",
    "RecordedRequest",
    "ServerRateLimit",
    "estimate_tokens",
]


Reply = str | tuple[str, dict[str, Any]]
Responder = Callable[[ChatRequest], Reply | Awaitable[Reply]]


def _default_responder(request: ChatRequest) -> str:
    return "Answer: ok"


@attrs.define
class FakeOpenAIServer:
    """A loopback server answering ``POST /v1/chat/completions`` (and ``/chat/completions``).

    Attributes:
        responder: maps a :class:`ChatRequest` to the assistant's text (sync or async).
        latency: seconds to wait before answering, or a function of a seeded ``random.Random``.
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
        fault_rates: probability per request of each :class:`Fault` (drawn in order, seeded).
        rate_limit: a hard server-side rate limit answered with 429.
        seed: seeds the latency and fault draws.
        record: keep a :class:`RecordedRequest` per request in :attr:`requests` (turn off for long
            benchmark runs; :attr:`answered` still counts).
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

    requests: list[RecordedRequest] = attrs.field(factory=list, init=False)
    in_flight: int = attrs.field(default=0, init=False)
    max_in_flight: int = attrs.field(default=0, init=False)
    answered: int = attrs.field(default=0, init=False)
    connections_opened: int = attrs.field(default=0, init=False)
    _faults: deque[Fault] = attrs.field(factory=deque, init=False)
    _rng: random.Random = attrs.field(init=False)
    _window: deque[tuple[float, int]] = attrs.field(factory=deque, init=False)
    _task_group: anyio.abc.TaskGroup | None = attrs.field(default=None, init=False)
    _listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # -- scripting ---------------------------------------------------------------------------
    def queue_faults(self, *faults: Fault) -> None:
        """Apply these faults, in order, to the next requests (one fault per request)."""
        self._faults.extend(faults)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, ready to pass to a client."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

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
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        try:
            status, payload, extra_headers, fault_name = await self._answer(method, path, headers, body)
            if status < 0:  # dropped connection
                return False
            await _send(stream, status, payload, extra_headers)
            return True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        finally:
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

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return (
                200,
                _json({"object": "list", "data": [{"id": "fake", "object": "model"}]}),
                {},
                None,
            )
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, _error_body("not found", "invalid_request_error"), {}, None
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, _error_body("Incorrect API key provided.", "invalid_api_key"), {}, None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return (
                400,
                _error_body("'messages' is a required property", "invalid_request_error"),
                {},
                None,
            )

        fault = self._next_fault()
        latency = self.latency(self._rng) if callable(self.latency) else self.latency
        if fault is not None and fault.kind == "delay":
            latency += fault.seconds
        if fault is not None and fault.kind == "status":
            extra = {"retry-after": fault.retry_after} if fault.retry_after else {}
            await anyio.sleep(min(latency, 0.05))
            return (
                fault.status,
                _error_body(fault.message, "injected"),
                extra,
                f"status:{fault.status}",
            )
        if fault is not None and fault.kind == "drop":
            await anyio.sleep(min(latency, 0.05))
            return -1, b"", {}, "drop"

        request = ChatRequest(
            model=str(body.get("model", "")),
            messages=body["messages"],
            params={k: v for k, v in body.items() if k not in ("model", "messages")},
            headers=headers,
        )
        reply = self.responder(request)
        if inspect.isawaitable(reply):
            reply = await reply
        text, extra_fields = (reply, {}) if isinstance(reply, str) else reply
        prompt_tokens = estimate_tokens(request.prompt_text)
        completion_tokens = estimate_tokens(text)
        limited = self._over_rate_limit(prompt_tokens + completion_tokens)
        if limited is not None:
            return (
                429,
                _error_body("rate limit exceeded", "rate_limit_exceeded"),
                {"retry-after": f"{limited:.3f}"},
                "rate_limit",
            )
        await anyio.sleep(latency)
        if fault is not None and fault.kind == "invalid_json":
            return 200, b'{"choices": [{"message": ', {}, "invalid_json"
        if fault is not None and fault.kind == "missing_choices":
            return 200, _json({"id": "x", "object": "chat.completion"}), {}, "missing_choices"
        payload = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or "fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            **extra_fields,
        }
        return 200, _json(payload), {}, fault.kind if fault is not None else None

    def _next_fault(self) -> Fault | None:
        if self._faults:
            return self._faults.popleft()
        for fault, rate in self.fault_rates:
            if self._rng.random() < rate:
                return fault
        return None

    def _over_rate_limit(self, tokens: int) -> float | None:
        """Admit this request into the 60 s window, or return the seconds until it would fit."""
        limit = self.rate_limit
        if limit is None:
            return None
        now = time.monotonic()
        while self._window and self._window[0][0] <= now - 60.0:
            self._window.popleft()
        count = len(self._window)
        used = sum(t for _, t in self._window)
        over_requests = limit.requests_per_minute is not None and count + 1 > limit.requests_per_minute
        over_tokens = limit.tokens_per_minute is not None and used + tokens > limit.tokens_per_minute
        if not (over_requests or over_tokens):
            self._window.append((now, tokens))
            return None
        oldest = self._window[0][0] if self._window else now
        return max(0.001, oldest + 60.0 - now)


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _error_body(message: str, code: str) -> bytes:
    return _json({"error": {"message": message, "type": code, "code": code}})


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
}


async def _send(
    stream: anyio.abc.SocketStream, status: int, payload: bytes, extra_headers: dict[str, str]
) -> None:
    reason = _REASONS.get(status, "Error" if status >= 400 else "OK")
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: keep-alive",
    ]
    head += [f"{name}: {value}" for name, value in extra_headers.items()]
    await stream.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)


async def serve_forever(server: FakeOpenAIServer, *, ready: Callable[[str], None]) -> None:
    """Run ``server`` until SIGINT or SIGTERM, calling ``ready(base_url)`` once it listens."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server:
            ready(server.base_url)
            async for _ in signals:
                return


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m aprompt.testing.fake_openai --port 0 --latency-ms 20``: serve in this process.

    Prints the base URL as the first line of stdout once listening (for benchmarks that run the
    server in a separate process, so that its CPU does not count as the client's), then serves
    until SIGINT or SIGTERM and prints how many chat requests it answered.
    """
    parser = argparse.ArgumentParser(prog="python -m aprompt.testing.fake_openai")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of each answer")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--text", default="Answer: ok", help="the assistant's reply")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    args = parser.parse_args(argv)
    text = args.text
    server = FakeOpenAIServer(
        responder=lambda request: text,
        latency=args.latency_ms / 1000.0,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        record=False,
    )

    def ready(base_url: str) -> None:
        print(base_url, flush=True)

    anyio.run(partial(serve_forever, server, ready=ready), backend=args.backend)
    print(f"answered {server.answered} chat requests", flush=True)


if __name__ == "__main__":
    main()
