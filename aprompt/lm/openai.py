"""Chat completions against any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, ...).

Only the OpenAI wire format lives here; limits, retries, routing, caching and usage come from
:class:`~aprompt.lm._http.HTTPChatLM`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx

from aprompt.lm._http import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RESPONSE_BYTES, EndpointSpec, HTTPChatLM
from aprompt.lm._replies import REFUSAL_REASON
from aprompt.lm.cache import ResponseCache
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import Completion, Message, TokenUsage

__all__ = ["OpenAICompatibleLM"]

# The environment variable read for the base URL when none is given (as the OpenAI SDK does).
_BASE_URL_ENV = "OPENAI_BASE_URL"

# The base URL when neither the argument nor ``$OPENAI_BASE_URL`` gives one.
_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAICompatibleLM(HTTPChatLM):
    """A production async client for OpenAI-compatible ``/chat/completions`` endpoints.

    Args:
        model: the model name sent with each request.
        base_url: a base URL, or several (strings or :class:`~aprompt.lm.endpoints.Endpoint` with
            their own concurrency, rate limits and key); each request goes to the least-loaded
            healthy one. Default: ``$OPENAI_BASE_URL`` when set (and not empty), else
            ``https://api.openai.com/v1``.
        api_key: the key; default: the ``api_key_env`` environment variable. An empty key sends no
            ``Authorization`` header. Keys never appear in ``repr``, logs, errors or the cache.
        api_key_env: the environment variable read when ``api_key`` is None.
        timeout: seconds one attempt may take in all: connecting, sending, and receiving the whole
            response (then it fails with :class:`~aprompt._errors.LMTimeoutError` and is retried).
        max_concurrency: a fixed cap on the requests in flight at once over all endpoints (each
            endpoint keeps up to this many keep-alive connections, in lanes: see
            :mod:`aprompt.lm._connections`); None (the default) adapts it to the rate limits and the
            measured latency, or to 429s when no limit is known (:mod:`aprompt.lm.adaptive`).
        requests_per_minute: a client-wide request limit shared by all endpoints (see
            :mod:`aprompt.lm.limits` for the exact guarantee); None for no limit.
        tokens_per_minute: a client-wide limit on prompt + completion tokens, shared the same way;
            None for no limit.
        max_retries: re-sends after a retryable failure (overrides ``retry.max_retries``).
        retry: the back-off policy (:class:`~aprompt.lm.retry.RetryPolicy`; default 6 retries, 0.5 s
            doubling to 30 s, half jitter).
        cache: a :class:`~aprompt.lm.cache.ResponseCache`; hits make no request. Not closed by us.
        default_params: sampling parameters sent with every request unless overridden per call.
        http_client: an ``httpx.AsyncClient`` to send every request with instead of our own
            HTTP/1.1 connection lanes (not closed by us; keep its pool small: httpcore's pool costs
            CPU per request in proportion to the square of its connections). Without one, an
            endpoint behind a proxy named by the environment (``HTTPS_PROXY`` ...) is reached through
            httpx clients of our own, and that proxy's credentials are scrubbed from errors like the
            key; the credentials of a proxy configured on a client passed here are not known to us,
            and a proxy's error page that quotes them would show them.
        endpoint_cooldown: seconds an endpoint is avoided after a connection error, timeout, 5xx or
            malformed reply.
        max_response_bytes: the longest response body read (default 10 MiB); a longer one fails the
            attempt with :class:`~aprompt._errors.BadResponseError` (retried).
        seed_rollouts: send each request's rollout (``chat(..., rollout=k)``, 0 by default) as the
            OpenAI ``seed`` parameter, unless the request sets ``seed`` itself: sampled replies (the
            optimizer's instruction proposals, at temperature 1) to the same request then repeat from run
            to run on a server that honours it (llama.cpp, vLLM; OpenAI on a best-effort basis), as they
            do from the cache.
            Off by default: a server that rejects ``seed`` would refuse every request. The embedded
            model (:func:`aprompt.local_lm`) turns it on.

    A 200 that is not an answer (empty or ``null`` content, a ``refusal`` in place of the content
    (:class:`~aprompt._errors.ContentFilteredError` naming it), ``finish_reason`` ``"content_filter"``,
    ``"length"``, or ``"error"``/``"abort"``/``"insufficient_system_resource"`` for a generation that
    failed on the server) raises an :class:`~aprompt._errors.IncompleteResponseError` instead of being
    returned; a 200 carrying an ``error`` (in the body or in its choice, as routers report a generation
    that failed upstream) raises a :class:`~aprompt._errors.BadResponseError` naming it, whatever text
    came with it; see :mod:`aprompt.lm._http` for how each is retried.

    Example::

        async with OpenAICompatibleLM("gpt-4o-mini", max_concurrency=32,
                                      requests_per_minute=500, cache=cache) as lm:
            completion = await lm.chat([{"role": "user", "content": "Hi"}], temperature=0.0)
            print(completion.text, lm.usage)
    """

    path: ClassVar[str] = "/chat/completions"

    def __init__(
        self,
        model: str,
        base_url: EndpointSpec | None = None,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_concurrency: int | None = DEFAULT_MAX_CONCURRENCY,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        default_params: Mapping[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
        endpoint_cooldown: float = 5.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        seed_rollouts: bool = False,
    ) -> None:
        if base_url is None:
            base_url = os.environ.get(_BASE_URL_ENV) or _DEFAULT_BASE_URL
        super().__init__(
            model,
            base_url,
            api_key=api_key,
            api_key_env=api_key_env,
            timeout=timeout,
            max_concurrency=max_concurrency,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            max_retries=max_retries,
            retry=retry,
            cache=cache,
            default_params=default_params,
            http_client=http_client,
            endpoint_cooldown=endpoint_cooldown,
            max_response_bytes=max_response_bytes,
        )
        self._seed_rollouts = seed_rollouts

    def _sent_params(self, params: Mapping[str, Any], rollout: int) -> Mapping[str, Any]:
        if not self._seed_rollouts or "seed" in params:
            return params
        return {**params, "seed": rollout}

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        # The body is sent pre-serialized, so the JSON content type is declared here.
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def _request_body(self, messages: Sequence[Message], params: Mapping[str, Any]) -> Any:
        return {
            "model": self._model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            **params,
        }

    def _parse_completion(self, content: bytes) -> Completion:
        data = json.loads(content)
        choice = data["choices"][0]
        if data.get("error") or choice.get("error"):
            # A router's report of a generation that failed upstream (OpenRouter's), beside what text came
            # before the failure: a fault, whatever the reply holds.
            raise ValueError("the reply carries an error")
        usage = data.get("usage") or {}
        message = choice["message"]
        text, finish = _content_text(message["content"]), choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):  # compared with reasons, it could not hash
            raise TypeError(f"finish_reason is a {type(finish).__name__}, not a string")
        refusal = message.get("refusal")
        if not text and isinstance(refusal, str) and refusal.strip():
            # OpenAI's refusal: no content, the model's reason in a field of its own, and finish_reason
            # "stop"; it is a refusal, not an empty reply.
            text, finish = refusal, REFUSAL_REASON
        prompt_tokens, completion_tokens = (
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )
        if prompt_tokens < 0 or completion_tokens < 0:
            # Taken as counted, it would lower the tokens and cost a run's limits hold to.
            raise ValueError(f"a token count is negative ({prompt_tokens}, {completion_tokens})")
        return Completion(
            text=text,
            usage=TokenUsage(prompt_tokens, completion_tokens),
            model=str(data.get("model") or self._model),
            finish_reason=finish,
        )

    def _server_message(self, content: bytes) -> str:
        try:
            data = json.loads(content)
            error = data.get("error") or data["choices"][0]["error"]  # a 2xx's may be in its choice
            message = error["message"] if isinstance(error, dict) else error
            return str(message)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return content.decode("utf-8", "replace").strip()


def _content_text(content: Any) -> str:
    """A message's content as text: a string as is, ``null`` as empty, a list of parts (as some servers
    send it) as the text of its ``"text"`` parts; raises TypeError for anything else."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = [
            part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"
        ]
        strings = [text for text in texts if isinstance(text, str)]
        if len(strings) < len(texts):
            raise TypeError("a text part of the message content is not a string")
        return "".join(strings)
    raise TypeError(f"the message content is a {type(content).__name__}, not a string")
