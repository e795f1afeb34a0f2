"""Chat through Anthropic's Messages API (``POST /v1/messages``).

Only the Anthropic wire format lives here; limits, retries, routing, caching and usage come from
:class:`~aprompt.lm._http.HTTPChatLM`, exactly as for :class:`~aprompt.lm.openai.OpenAICompatibleLM`.
Programs keep speaking our OpenAI-shaped messages and parameters; :func:`messages_request` turns
them into a Messages API request (its rules are listed there).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx

from aprompt._errors import ConfigError
from aprompt.lm._http import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RESPONSE_BYTES, EndpointSpec, HTTPChatLM
from aprompt.lm.cache import ResponseCache
from aprompt.lm.ratelimit_headers import StatedLimits, read_raw_anthropic_rate_limit_headers
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import Completion, Message, TokenUsage

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "DROPPED_PARAMS",
    "AnthropicLM",
    "finish_reason",
    "messages_request",
]

#: The ``anthropic-version`` header sent by default.
ANTHROPIC_VERSION = "2023-06-01"

#: ``max_tokens`` when neither the call nor ``default_params`` sets it (the API requires one).
DEFAULT_MAX_TOKENS = 1024

_BASE_URL_ENV = "ANTHROPIC_BASE_URL"
# The base URL when neither the argument nor ``$ANTHROPIC_BASE_URL`` gives one.
_DEFAULT_BASE_URL = "https://api.anthropic.com"

#: OpenAI sampling parameters the Messages API has no equivalent for; they are not sent (the API
#: rejects unknown fields). Any other parameter is sent as given.
DROPPED_PARAMS = frozenset(
    {
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "parallel_tool_calls",
        "stream_options",
        "user",
    }
)

# Anthropic's stop reasons in the vocabulary of Completion.finish_reason (others pass unchanged).
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_MAX_TEMPERATURE = 1.0


def messages_request(model: str, messages: Sequence[Message], params: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages API body for our OpenAI-shaped ``messages`` and ``params``.

    Rules:

    - every ``system`` message, wherever it stands, goes to the top-level ``system`` string (several
      are joined with a blank line, in order); it is omitted when there is none;
    - the other messages keep their order, and consecutive messages of the same role are merged
      (contents joined with a blank line), since the API requires user and assistant to alternate; a
      message whose content is empty or only whitespace is left out (the API refuses such a turn), so
      that its neighbours merge;
    - ``stop`` (a string or a list) becomes ``stop_sequences`` (appended to any given directly);
      ``max_completion_tokens`` becomes ``max_tokens``; ``temperature`` above 1 (OpenAI allows up
      to 2) is clamped to 1, the API's maximum;
    - the parameters in :data:`DROPPED_PARAMS` are not sent; any other one is sent as given, and
      may override a field computed here.

    Example:
        >>> body = messages_request("claude", [{"role": "system", "content": "Be brief."},
        ...                                    {"role": "user", "content": "Hi"}], {"stop": "\\n", "seed": 1})
        >>> body["system"], body["messages"], body["stop_sequences"], "seed" in body
        ('Be brief.', [{'role': 'user', 'content': 'Hi'}], ['\\n'], False)
    """
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns: list[dict[str, str]] = []
    for message in messages:
        if message["role"] == "system" or not message["content"].strip():
            # A turn without text (a blank reply quoted back in a correction) would fail the whole request.
            continue
        if turns and turns[-1]["role"] == message["role"]:
            turns[-1]["content"] += "\n\n" + message["content"]
        else:
            turns.append({"role": message["role"], "content": message["content"]})
    body: dict[str, Any] = {"model": model}
    if system:
        body["system"] = "\n\n".join(system)
    body["messages"] = turns
    body.update(_translate_params(params))
    return body


def _translate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: value for name, value in params.items() if name not in DROPPED_PARAMS}
    completion_budget = out.pop("max_completion_tokens", None)
    if completion_budget is not None:
        out["max_tokens"] = completion_budget
    stop = out.pop("stop", None)
    if stop is not None:
        given = out.get("stop_sequences") or []
        # A string is one sequence, on either side: spread into a list, it would stop at each character.
        out["stop_sequences"] = [
            *([given] if isinstance(given, str) else given),
            *([stop] if isinstance(stop, str) else stop),
        ]
    temperature = out.get("temperature")
    if isinstance(temperature, int | float) and temperature > _MAX_TEMPERATURE:
        out["temperature"] = _MAX_TEMPERATURE
    return out


def finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic's ``stop_reason`` in OpenAI's words: ``end_turn``/``stop_sequence`` → ``"stop"``,
    ``max_tokens`` → ``"length"``, ``tool_use`` → ``"tool_calls"``, ``refusal`` → ``"content_filter"``;
    any other reason is kept as it is (``model_context_window_exceeded`` too: a reply cut by the
    context window, which a larger ``max_tokens`` would not finish)."""
    if stop_reason is None:
        return None
    return _FINISH_REASONS.get(stop_reason, stop_reason)


class AnthropicLM(HTTPChatLM):
    """A production async client for Anthropic's Messages API, with the same limits, retries,
    endpoint routing, cache and usage accounting as :class:`~aprompt.lm.openai.OpenAICompatibleLM`.

    Messages and parameters are written as for any other aprompt LM (OpenAI-shaped) and translated
    by :func:`messages_request`. A 529 (overloaded) is retried like any 5xx, a 429 after its
    ``retry-after``; the ``anthropic-ratelimit-*`` headers' limits become the endpoint's, and when one
    says none remain the endpoint waits for its reset (:mod:`aprompt.lm.ratelimit_headers`).
    ``usage.prompt_tokens`` counts input tokens read from or written to Anthropic's prompt cache too;
    ``finish_reason`` is mapped by :func:`finish_reason`.

    ``timeout``, ``max_concurrency``, ``requests_per_minute``, ``tokens_per_minute``, ``max_retries``,
    ``retry``, ``cache``, ``default_params``, ``http_client``, ``endpoint_cooldown`` and
    ``max_response_bytes`` are as for :class:`~aprompt.lm.openai.OpenAICompatibleLM`.

    A 200 that is not an answer raises an :class:`~aprompt._errors.IncompleteResponseError`: no text
    content, ``stop_reason`` ``"refusal"`` (:class:`~aprompt._errors.ContentFilteredError`),
    ``"pause_turn"`` (a turn paused before its end), ``"tool_use"`` (a stop to call a tool, which no
    program runs), ``"max_tokens"``
    (:class:`~aprompt._errors.TruncatedResponseError`, after one re-send with twice the
    ``max_tokens``), or ``"model_context_window_exceeded"`` (a ``TruncatedResponseError`` at once: the
    prompt left the reply too little of the context window, which no re-send changes); see
    :mod:`aprompt.lm._http`. A 200 of ``type`` ``"error"``, or carrying an ``error``, is a
    :class:`~aprompt._errors.BadResponseError` naming it (retried), whatever text it holds.

    Args:
        model: the model name sent with each request (e.g. ``"claude-3-5-haiku-latest"``).
        base_url: the API's base URL (``/v1/messages`` is appended); default: ``$ANTHROPIC_BASE_URL``
            when set (and not empty), as in Anthropic's SDK, else ``https://api.anthropic.com``; or several
            endpoints (strings or :class:`~aprompt.lm.endpoints.Endpoint` with their own concurrency,
            rate limits and key).
        api_key: the key, sent as ``x-api-key``; default: the ``api_key_env`` environment variable.
            An empty key sends no ``x-api-key`` header. Keys never appear in ``repr``, logs, errors
            or the cache.
        api_key_env: the environment variable read when ``api_key`` is None.
        anthropic_version: the ``anthropic-version`` header.
        max_tokens: the completion budget when neither the call nor ``default_params`` gives one
            (the API requires it). It is part of every cache key and of the tokens reserved under
            ``tokens_per_minute``.

    Example::

        async with AnthropicLM("claude-3-5-haiku-latest", max_concurrency=16,
                               requests_per_minute=50, cache=cache) as lm:
            completion = await lm.chat([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hi"}], temperature=0.0)
            print(completion.text, lm.usage)
    """

    path: ClassVar[str] = "/v1/messages"
    cache_namespace: ClassVar[str] = "anthropic-messages"
    probe_path: ClassVar[str] = "/v1/models"  # the base URL has no /v1 here

    def __init__(
        self,
        model: str,
        base_url: EndpointSpec | None = None,
        *,
        api_key: str | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        anthropic_version: str = ANTHROPIC_VERSION,
        max_tokens: int = DEFAULT_MAX_TOKENS,
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
    ) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            # Sent as given, anything else makes the API refuse every request.
            raise ConfigError(f"max_tokens must be an integer of at least 1, got {max_tokens!r}")
        # Read by _auth_headers, which the base class calls while it builds the endpoints.
        self._anthropic_version = anthropic_version
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
            # As a default parameter, max_tokens enters the cache key and the tokens reserved.
            default_params={"max_tokens": max_tokens, **(default_params or {})},
            http_client=http_client,
            endpoint_cooldown=endpoint_cooldown,
            max_response_bytes=max_response_bytes,
        )
        self._max_tokens = max_tokens

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        # Every header of a request lives here: the base sends these with each one.
        headers = {"anthropic-version": self._anthropic_version, "content-type": "application/json"}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def _sent_params(self, params: Mapping[str, Any], rollout: int) -> Mapping[str, Any]:
        if "max_tokens" in params or "max_completion_tokens" in params:
            return params
        # A call that passed max_tokens=None: the client's budget is sent, and is the one a cut reply's
        # re-send doubles (unset, the re-send would go with a default that may be below it).
        return {**params, "max_tokens": self._max_tokens}

    def _keyed_params(self, params: Mapping[str, Any], sent: Mapping[str, Any]) -> Mapping[str, Any]:
        # The budget sent, the client's own when the call unset it: clients of other budgets that share a
        # cache must not answer each other's requests.
        return sent

    def _request_body(self, messages: Sequence[Message], params: Mapping[str, Any]) -> Any:
        return messages_request(self._model, messages, params)

    def _parse_completion(self, content: bytes) -> Completion:
        data = json.loads(content)
        if data.get("type") == "error" or data.get("error"):
            # The API's error shape, or a router's report of an upstream failure, beside the text of a reply:
            # a fault, whatever text came with it.
            raise ValueError("the reply carries an error")
        blocks = data["content"]
        if not isinstance(blocks, list):
            raise TypeError(f"content is a {type(blocks).__name__}, not a list of blocks")
        texts = [block["text"] for block in blocks if block.get("type") == "text"]
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("a text block's text is not a string")
        usage = data.get("usage") or {}
        prompt_tokens = sum(
            int(usage.get(name) or 0)
            for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        completion_tokens = int(usage.get("output_tokens") or 0)
        if prompt_tokens < 0 or completion_tokens < 0:
            # Taken as counted, it would lower the tokens and cost a run's limits hold to.
            raise ValueError(f"a token count is negative ({prompt_tokens}, {completion_tokens})")
        return Completion(
            text="".join(texts),
            usage=TokenUsage(prompt_tokens, completion_tokens),
            model=str(data.get("model") or self._model),
            finish_reason=finish_reason(data.get("stop_reason")),
        )

    def _stated_limits(self, raw: list[tuple[bytes, bytes]]) -> StatedLimits | None:
        return read_raw_anthropic_rate_limit_headers(raw)

    def _server_message(self, content: bytes) -> str:
        try:
            error = json.loads(content)["error"]
            if isinstance(error, dict):
                kind, message = error.get("type"), error["message"]
                text = f"{kind}: {message}" if kind else str(message)
            else:
                text = str(error)
            return text
        except (ValueError, KeyError, TypeError):
            return content.decode("utf-8", "replace").strip()
