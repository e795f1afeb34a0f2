"""Value types of the LM layer and the :class:`LM` protocol every provider implements."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypedDict, runtime_checkable

import attrs


class Message(TypedDict):
    """One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

    role: str
    content: str


@attrs.frozen
class TokenUsage:
    """Tokens reported by the server for one completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# A str holds a surrogate only alone: JSON's escaped pairs are read as the one character they make.
_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (``"\\ud83d"`` without its other half: valid JSON, not text
    UTF-8 can hold) replaced by U+FFFD, so that a reply can be cached and journaled as it was returned."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


@attrs.frozen
class Completion:
    """The result of one chat call.

    Attributes:
        text: the assistant message content (a lone surrogate in it, which a server may send, is
            replaced by U+FFFD: see :func:`well_formed`).
        usage: tokens the call cost when it was made (also set on cache hits: what it cost originally).
        model: the model name the server reported, or the requested one.
        finish_reason: the server's finish reason (``"stop"``, ``"length"``, ...), if given.
        cached: True when this completion came from the cache instead of the endpoint.
    """

    text: str = attrs.field(converter=well_formed)
    usage: TokenUsage = TokenUsage()
    model: str = ""
    finish_reason: str | None = None
    cached: bool = False


@runtime_checkable
class LM(Protocol):
    """What aprompt needs from a language model: an async chat call.

    ``rollout`` distinguishes otherwise identical requests (e.g. sampling at temperature > 0 for several
    diverse demos); it is part of the cache key and is never sent to the server. ``params`` are sampling
    parameters passed through to the provider (``temperature``, ``max_tokens``, ``stop``, ...).
    """

    @property
    def model(self) -> str: ...

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion: ...


def canonical_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``None`` values and sort keys, so equal requests compare and hash equal."""
    return {key: params[key] for key in sorted(params) if params[key] is not None}
