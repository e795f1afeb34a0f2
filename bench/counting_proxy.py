"""A loopback proxy in front of an OpenAI-compatible server that counts what passes through it.

Both systems in a benchmark send their requests through one proxy to the same upstream (the local
llama.cpp server), so LM calls and tokens are measured the same way for each: HTTP requests that
reached the model, and the prompt and completion tokens the model reported. It is the fake server of
``aprompt.testing`` with a responder that forwards the request upstream.

Example::

    async with CountingProxy(upstream_url) as proxy:
        before = proxy.counts()
        ...  # point clients at proxy.base_url
        spent = proxy.counts() - before
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer


@attrs.frozen
class Counts:
    """Requests forwarded (answered by the upstream), failed ones, and the upstream's token counts."""

    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.requests - other.requests,
            self.failed - other.failed,
            self.prompt_tokens - other.prompt_tokens,
            self.completion_tokens - other.completion_tokens,
        )


class CountingProxy:
    """Forward ``/v1/chat/completions`` to ``upstream`` (a ``.../v1`` URL) and count it."""

    def __init__(self, upstream: str, *, max_connections: int = 32, timeout: float = 600.0) -> None:
        self._upstream = upstream.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=max_connections))
        self._server = FakeOpenAIServer(responder=self._forward, record=False)
        self._counts = Counts()

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def counts(self) -> Counts:
        return self._counts

    async def __aenter__(self) -> CountingProxy:
        await self._server.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._server.__aexit__(*exc_info)
        await self._http.aclose()

    async def _forward(self, request: ChatRequest) -> tuple[str, dict[str, Any]]:
        params = {k: v for k, v in request.params.items() if k != "stream"}
        body = {"model": request.model, "messages": request.messages, **params}
        try:
            response = await self._http.post(f"{self._upstream}/chat/completions", json=body)
            response.raise_for_status()
            data = response.json()
            text = data["choices"][0]["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            # The fake server can only answer 200 from a responder: an upstream failure becomes an
            # empty reply (each library then fails to parse it) and is counted.
            self._counts = attrs.evolve(self._counts, failed=self._counts.failed + 1)
            return "", {"usage": {"prompt_tokens": 0, "completion_tokens": 0}, "proxy_error": str(exc)}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        c = self._counts
        self._counts = Counts(
            c.requests + 1, c.failed, c.prompt_tokens + prompt, c.completion_tokens + completion
        )
        return text, {"usage": {**usage, "prompt_tokens": prompt, "completion_tokens": completion}}
