"""Value types of the LM layer and the :class:`LM` protocol every provider implements."""

from __future__ import annotations

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


@attrs.frozen
class Completion:
    """The result of one chat call.

    Attributes:
        text: the assistant message content.
        usage: tokens the call cost when it was made (also set on cache hits: what it cost originally).
        model: the model name the server reported, or the requested one.
        finish_reason: the server's finish reason (``"stop"``, ``"length"``, ...), if given.
        cached: True when this completion came from the cache instead of the endpoint.
    """

    text: str
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
