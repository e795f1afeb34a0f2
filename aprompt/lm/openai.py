"""Chat completions against any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, ...)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from aprompt._errors import BadResponseError, LMStatusError
from aprompt.lm.types import Completion, Message, TokenUsage, canonical_params
from aprompt.lm.usage import UsageCounter, UsageSnapshot


class OpenAICompatibleLM:
    """An async chat client for an OpenAI-compatible ``/chat/completions`` endpoint.

    Minimal first version: one endpoint, one shared ``httpx.AsyncClient``.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        default_params: Mapping[str, Any] | None = None,
    ) -> None:
        self._model = model
        self._base_url = base_url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)
        self._default_params = dict(default_params or {})
        self._usage = UsageCounter()

    @property
    def model(self) -> str:
        return self._model

    @property
    def usage(self) -> UsageSnapshot:
        return self._usage.snapshot()

    def __repr__(self) -> str:
        return f"OpenAICompatibleLM(model={self._model!r}, base_url={self._base_url!r})"

    async def chat(
        self, messages: Sequence[Message], *, rollout: int = 0, **params: Any
    ) -> Completion:
        body = {
            "model": self._model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            **canonical_params({**self._default_params, **params}),
        }
        self._usage.calls += 1
        self._usage.requests += 1
        response = await self._client.post(f"{self._base_url}/chat/completions", json=body)
        if response.status_code >= 400:
            raise LMStatusError(
                f"HTTP {response.status_code}",
                status_code=response.status_code,
                server_message=response.text[:500],
                endpoint=self._base_url,
            )
        try:
            data = response.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            completion = Completion(
                text=choice["message"]["content"] or "",
                usage=TokenUsage(
                    int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
                ),
                model=str(data.get("model", self._model)),
                finish_reason=choice.get("finish_reason"),
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BadResponseError(
                f"malformed chat completion: {exc!r}", endpoint=self._base_url
            ) from None
        self._usage.prompt_tokens += completion.usage.prompt_tokens
        self._usage.completion_tokens += completion.usage.completion_tokens
        return completion

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> OpenAICompatibleLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
