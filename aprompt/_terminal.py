"""Text from a run (a model's reply or proposal, a provider's error message) made safe to print."""

from __future__ import annotations

import unicodedata


def terminal_safe(text: str) -> str:
    """``text`` with its control characters (but newlines and tabs) written as escapes: a model's reply
    or a provider's message printed to a terminal must not drive it (clear it, retitle it, write the
    clipboard)."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else ascii(c)[1:-1] for c in text)
