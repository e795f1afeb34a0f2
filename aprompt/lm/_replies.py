"""What makes a 2xx reply an answer, for the HTTP clients: its body within a size cap, and a finish
that is neither empty, filtered, paused, stopped on a server fault or for a tool call, nor cut at its
token budget (see :mod:`aprompt.lm._http` for how each failure is retried); and what a redirect, or a
2xx carrying an error, tells the caller."""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from aprompt._errors import (
    ContentFilteredError,
    EmptyResponseError,
    IncompleteResponseError,
    TruncatedResponseError,
)
from aprompt.lm.types import Completion

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "REFUSAL_REASON",
    "TRUNCATION_RETRY_MAX_TOKENS",
    "WINDOW_CUT_REASON",
    "WINDOW_CUT_REASONS",
    "accepting_cut_replies",
    "carries_error",
    "cut_reply_acceptor",
    "incomplete_reply",
    "is_answered_failure",
    "is_cut",
    "larger_budget",
    "read_capped",
    "redirect_message",
]

#: The longest response body read (10 MiB); a chat completion is a few kilobytes.
DEFAULT_MAX_RESPONSE_BYTES = 10 * 2**20

#: ``max_tokens`` of the one re-send after a truncated reply when the request set no budget.
TRUNCATION_RETRY_MAX_TOKENS = 4096


async def read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """The body of a streamed ``response``, read up to ``cap`` bytes, and whether it was longer (then
    it is cut, and the rest is not read)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return b"", True
    pieces, size = [], 0
    async for piece in response.aiter_bytes():
        pieces.append(piece)
        size += len(piece)
        if size > cap:
            return b"".join(pieces)[:cap], True
    return b"".join(pieces), False


#: Finish reasons that say the generation failed on the server's side, whatever text came with it:
#: OpenRouter's ``"error"`` (an upstream failure mid-reply), vLLM's ``"abort"``/``"error"`` and DeepSeek's
#: ``"insufficient_system_resource"`` (a reply its servers broke off for want of capacity).
_FAULT_REASONS = frozenset({"error", "abort", "insufficient_system_resource"})

#: Finish reasons of a turn the provider paused before its end, whatever text came with it: Anthropic's
#: ``"pause_turn"`` (a long turn with server tools, to be continued by another request).
_PAUSED_REASONS = frozenset({"pause_turn"})

#: Finish reasons of a reply that stopped to call a tool (OpenAI's, and Anthropic's ``"tool_use"`` in its
#: words): a program reads text and runs no tool, and the text before the call only leads up to it.
_TOOL_REASONS = frozenset({"tool_calls", "function_call"})

#: The finish reason of a reply the model's context window cut (Anthropic's): the prompt left the reply too
#: little of the window, so a larger token budget would be cut at the same place.
WINDOW_CUT_REASON = "model_context_window_exceeded"

#: Finish reasons of a reply the context window cut: Anthropic's, and Mistral's ``"model_length"``.
WINDOW_CUT_REASONS = frozenset({WINDOW_CUT_REASON, "model_length"})

#: The finish reason a client gives a reply the model refused in words of its own instead of answering (an
#: OpenAI ``refusal`` field in place of the content); its text is the refusal.
REFUSAL_REASON = "refusal"

#: Finish reasons of a reply cut before its end: at its token budget, or by the context window.
_CUT_REASONS = frozenset({"length", *WINDOW_CUT_REASONS})

#: How much of a refusal's text its error shows.
_REFUSAL_CHARS = 200

#: Set by a caller that can tell a cut reply which already holds its whole answer (a predictor whose
#: every output field was written, each ended before the cut): such a reply is an answer.
_CUT_REPLY_IS_ANSWER: contextvars.ContextVar[Callable[[str], bool] | None] = contextvars.ContextVar(
    "aprompt_cut_reply_is_answer", default=None
)


@contextmanager
def accepting_cut_replies(is_answer: Callable[[str], bool]) -> Iterator[None]:
    """Within the block, a reply cut at its token budget whose text satisfies ``is_answer`` is an
    answer, not a :class:`~aprompt._errors.TruncatedResponseError` (and is not re-sent).

    Example::

        with accepting_cut_replies(lambda text: "\n" in text):
            completion = await lm.chat(messages, max_tokens=16)
    """
    token = _CUT_REPLY_IS_ANSWER.set(is_answer)
    try:
        yield
    finally:
        _CUT_REPLY_IS_ANSWER.reset(token)


def cut_reply_acceptor() -> Callable[[str], bool] | None:
    """The test set by the innermost :func:`accepting_cut_replies` block, or ``None`` outside one."""
    return _CUT_REPLY_IS_ANSWER.get()


def is_cut(finish_reason: str | None) -> bool:
    """Whether a reply of ``finish_reason`` was cut before its end (its last sentence is unfinished)."""
    return finish_reason in _CUT_REASONS


def incomplete_reply(
    completion: Completion,
    endpoint: str,
    budget: int | None = None,
    scrub: Callable[[str], str] = str,
) -> IncompleteResponseError | None:
    """The error for a well-formed reply that is not an answer, or None for an answer.

    ``scrub``: what the reply's text goes through before the error quotes or holds it (a client's keys
    taken out: a refusal may echo what was sent). ``budget``: the completion budget the request was sent
    with, when known. A ``length`` reply that
    reports fewer completion tokens than it was cut by the context window, not the budget (llama.cpp and
    vLLM say ``length`` for both), and is raised as such: a larger budget would be cut at the same place.
    """
    reason = completion.finish_reason
    is_answer = _CUT_REPLY_IS_ANSWER.get()
    if is_cut(reason) and completion.text and is_answer is not None and is_answer(completion.text):
        return None
    text = scrub(completion.text)  # scrubbed whole, then cut: no key is left half-cut
    written = completion.usage.completion_tokens
    if reason in WINDOW_CUT_REASONS or (reason == "length" and budget is not None and 0 < written < budget):
        shown = repr(reason) if reason != "length" else f"'length' after {written} of {budget} tokens"
        error = TruncatedResponseError(
            f"the reply was cut where the prompt and it filled the model's context window (finish_reason "
            f"{shown}): a larger max_tokens would not finish it; shorten the prompt (fewer or shorter "
            "demos, shorter inputs) or give the model a larger context (a local model's ctx_per_slot)",
            finish_reason=reason,
            text=text,
            endpoint=endpoint,
        )
        error.by_window = True
        return error
    if reason == "length":
        return TruncatedResponseError(
            "the reply was cut at its token budget (finish_reason 'length')",
            finish_reason=reason,
            text=text,
            endpoint=endpoint,
        )
    if reason == "content_filter":
        return ContentFilteredError(
            "the provider withheld the reply (finish_reason 'content_filter')",
            finish_reason=reason,
            text=text,
            endpoint=endpoint,
        )
    if reason == REFUSAL_REASON:
        return ContentFilteredError(
            f"the model refused to answer: {text[:_REFUSAL_CHARS]!r}",
            finish_reason=reason,
            text=text,
            endpoint=endpoint,
        )
    if reason in _PAUSED_REASONS:
        return IncompleteResponseError(
            f"the provider paused the reply before its end (finish_reason {reason!r})",
            finish_reason=reason,
            text=text,
            endpoint=endpoint,
        )
    if reason in _FAULT_REASONS:
        return IncompleteResponseError(
            f"the provider stopped the reply on a fault (finish_reason {reason!r})",
            finish_reason=reason,
            text=text,
            endpoint=endpoint,
        )
    if reason in _TOOL_REASONS:
        return IncompleteResponseError(
            f"the model stopped to call a tool (finish_reason {reason!r}) instead of answering; programs "
            "read text replies and run no tools: leave tools and tool_choice out of the LM's parameters",
            finish_reason=reason,
            text=text,
            endpoint=endpoint,
        )
    if not completion.text:
        return EmptyResponseError(
            f"the reply is empty (finish_reason {reason!r})", finish_reason=reason, endpoint=endpoint
        )
    return None


def is_answered_failure(error: BaseException) -> bool:
    """Whether ``error`` is a reply that is not an answer yet shows the LM works, and would come back the
    same if asked again (cut, empty, filtered): not one the provider stopped on a fault (finish_reason
    ``"error"``/``"abort"``), which is an outage's symptom like a 5xx."""
    return isinstance(error, IncompleteResponseError) and error.finish_reason not in _FAULT_REASONS


def larger_budget(params: Mapping[str, Any]) -> tuple[str, int | None, int]:
    """The completion-budget parameter to raise after a truncated reply: its name, its value (None:
    unset), and the value to re-send with (twice it, or :data:`TRUNCATION_RETRY_MAX_TOKENS`)."""
    name = "max_completion_tokens" if params.get("max_completion_tokens") else "max_tokens"
    given = params.get(name)
    if isinstance(given, int) and not isinstance(given, bool) and given > 0:
        return name, given, 2 * given
    return name, None, TRUNCATION_RETRY_MAX_TOKENS


def redirect_message(headers: list[tuple[bytes, bytes]]) -> str:
    """What a redirect answer means for the caller: requests are not sent on (a POST redirected could be
    sent twice, or its key to another host), so the endpoint's URL must be the one redirected to."""
    location = next((value for name, value in headers if name.lower() == b"location"), b"")
    where = f" to {location.decode('latin-1')}" if location else ""
    return (
        f"the server redirects{where}; redirects are not followed: "
        "give the endpoint the base URL it redirects to"
    )


def carries_error(content: bytes) -> bool:
    """Whether a body is a JSON object with an ``error`` field, at its top or in its first choice (a fault
    reported in a 2xx, as routers report one upstream, with or without the reply's text)."""
    if b'"error"' not in content:
        return False
    try:
        data = json.loads(content)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    return bool(data.get("error")) or (isinstance(choice, dict) and bool(choice.get("error")))
