"""The check of a chat call's messages before anything is sent: each must be ``{"role": str,
"content": str}``, and a mistake names the first message that is not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aprompt._errors import ConfigError
from aprompt.lm.types import Message

__all__ = ["check_messages"]


def check_messages(messages: Sequence[Message]) -> None:
    """Raise a ConfigError naming the first message that is not ``{"role": str, "content": str}``."""
    # A list of dicts (every caller's in practice) is checked without the slower ABC isinstance tests.
    if type(messages) is not list and (
        isinstance(messages, str | bytes) or not isinstance(messages, Sequence)
    ):
        raise ConfigError(
            "chat() takes a list of messages ({'role': ..., 'content': ...}), "
            f"not a {type(messages).__name__}"
        )
    for index, message in enumerate(messages):
        # The common case without a function call: a dict of exact strings.
        if type(message) is dict and "role" in message and "content" in message:
            if type(message["role"]) is str and type(message["content"]) is str:
                continue
        if type(message) is not dict and not isinstance(message, Mapping):
            raise ConfigError(
                f"message {index} must be a mapping {{'role': ..., 'content': ...}}, "
                f"not a {type(message).__name__}"
            )
        for field in ("role", "content"):
            if not isinstance(message.get(field), str):
                raise ConfigError(f"message {index} needs a string {field!r}, got {message.get(field)!r:.60}")
