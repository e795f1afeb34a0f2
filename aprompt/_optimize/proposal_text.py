"""Sentences and lengths of a proposal's text: how long it counts, where its sentences end, what is left
of a reply cut at its token budget."""

from __future__ import annotations

import re
import unicodedata

#: What one wide (Chinese, Japanese, Korean) character counts for in :func:`text_length`: about the
#: letters of Latin script that say as much ("请用一个词回答问题。" is "Answer in one word.").
WIDE_CHAR_WEIGHT = 3


def text_length(text: str) -> int:
    """How long ``text`` is as an instruction: its characters, a wide one counting
    :data:`WIDE_CHAR_WEIGHT` times, so that a short but whole instruction in Chinese or Japanese is held
    to the same minimum as its English translation."""
    wide = sum(1 for char in text if unicodedata.east_asian_width(char) in ("W", "F"))
    return len(text) + (WIDE_CHAR_WEIGHT - 1) * wide


def whole_sentences(text: str, max_chars: int) -> str:
    """``text`` cut after its last whole sentence that ends within ``max_chars`` (a proposer that rambles
    past its token budget often wrote a usable instruction first), or, when no sentence ends in time,
    after its last whole line that does (a list whose items end without a full stop); unchanged when
    short enough or when neither ends in time."""
    if len(text) <= max_chars:
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text[: max_chars + 1])]
    ends = ends or [m.start() for m in re.finditer(r"\n", text[: max_chars + 1])]
    return text[: ends[-1]].rstrip() if ends else text


def finished_part(text: str) -> str:
    """``text`` without its unfinished last sentence, for a reply cut at its token budget: the last line
    (the one being written when the budget ran out) is kept to its last sentence end, or dropped when it
    has none ("... and then add it to"); earlier lines ended with a line break, so they are whole. Text
    that already ends a sentence is unchanged; ``""`` when nothing whole is left."""
    stripped = text.rstrip()
    if re.search(r"[.!?][\"')\]`*_]*$", stripped):
        return stripped
    before, _, last = stripped.rpartition("\n")
    # A sentence end inside the line, not a list number's period ("3. Do").
    ends = [m.end() for m in re.finditer(r"(?<![\d\s])[.!?][\"')\]`*_]*(?=\s)", last)]
    return (before + "\n" + last[: ends[-1]] if ends else before).strip()


def _ends_with_colon(line: str) -> bool:
    """Whether ``line`` ends with a colon, markdown emphasis aside: it introduces what follows."""
    return line.rstrip(" *_`").endswith(":")


#: Abbreviations a sentence goes on after ("... a persona (e.g. 'You are a ...').").
_ABBREVIATIONS = ("e.g.", "i.e.", "vs.", "cf.")


def sentences_of(line: str) -> list[str]:
    """The sentences of one line (split after ``.``, ``!`` or ``?`` and a space, not after ``e.g.``
    and the like), empty ones left out."""
    sentences: list[str] = []
    for piece in re.split(r"(?<=[.!?])\s+", line.strip()):
        if sentences and sentences[-1].lower().endswith(_ABBREVIATIONS):
            sentences[-1] = f"{sentences[-1]} {piece}"
        elif piece:
            sentences.append(piece)
    return sentences
