"""Quotes around a whole proposer reply: removed, while every quote inside the instruction stays.

A proposer often wraps its instruction in quotes (``"Answer in one word."``, ``“...”``, ``«...»``,
``「...」``). Only a pair that encloses the whole text is removed, and a stray quote at one end that
pairs with none (a reply cut after its opening quote); a quote that opens or closes a span of the
instruction is part of it: ``Reply "yes" or "no"`` keeps its last quote, and ``"yes" or "no"`` both.
"""

from __future__ import annotations

import re

#: Opening quote -> its closing quote.
PAIRS: dict[str, str] = {
    '"': '"',
    "'": "'",
    "`": "`",
    "“": "”",
    "‘": "’",
    "„": "“",
    "«": "»",
    "「": "」",
    "『": "』",
}


def _is_apostrophe(text: str, index: int) -> bool:
    """Whether the quote at ``index`` sits between two letters (``item's``, ``item’s``)."""
    return 0 < index < len(text) - 1 and text[index - 1].isalnum() and text[index + 1].isalnum()


def _quote_positions(text: str, quote: str) -> list[int]:
    return [i for i, char in enumerate(text) if char == quote and not _is_apostrophe(text, i)]


def _encloses(opening: str, closing: str, inner: str) -> bool:
    """Whether ``opening`` + ``inner`` + ``closing`` is one quoted span: every quote of the same kind
    inside pairs up within ``inner``."""
    if opening != closing:
        depth = 0
        for index, char in enumerate(inner):
            if char == opening and not _is_apostrophe(inner, index):
                depth += 1
            elif char == closing and not _is_apostrophe(inner, index):
                depth -= 1
                if depth < 0:  # closes the outer opening quote early: it encloses no whole text
                    return False
        return depth == 0
    positions = _quote_positions(inner, opening)
    if len(positions) % 2:
        return False
    # The first quote inside must open a span: ``yes" or "no`` (from ``"yes" or "no"``) starts by
    # closing the outer one.
    return not positions or positions[0] == 0 or not re.match(r"\w", inner[positions[0] - 1])


def unquoted(text: str) -> str:
    """``text`` stripped, without quotes that enclose the whole of it (repeatedly) and without a stray
    quote at either end that pairs with none.

    Example::

        >>> unquoted('"Reply "yes" or "no"."')
        'Reply "yes" or "no".'
        >>> unquoted('Reply "yes" or "no"')
        'Reply "yes" or "no"'
        >>> unquoted("“Answer in one word.”")
        'Answer in one word.'
    """
    value = text.strip()
    while len(value) >= 2 and value[0] in PAIRS and value[-1] == PAIRS[value[0]]:
        if not _encloses(value[0], value[-1], value[1:-1]):
            break
        value = value[1:-1].strip()
    for quote in ("'", '"', "`"):
        if len(_quote_positions(value, quote)) % 2:  # one quote pairs with none: a stray one at an end
            # A run of backticks is one mark: a fence (```) that opens or closes nothing.
            width = len(value) - len(value.lstrip("`")) if quote == "`" else 1
            if value.startswith(quote):
                value = value[width:].strip()
            elif value.endswith(quote):
                width = len(value) - len(value.rstrip("`")) if quote == "`" else 1
                value = value[:-width].strip()
    return value
