"""A proposer's reply made an instruction, or the reason it is none: its introduction, labels, quotes and
echoed scaffolding cut (:func:`clean_reply`), and what it must be to become a candidate
(:func:`validate_instruction`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from aprompt._optimize.proposal_filter import (
    Cleaned,
    clean_proposal,
    field_labels,
    reads_as_instruction,
    task_vocabulary,
    text_length,
    unfenced_prose,
)
from aprompt._optimize.proposer_text import (
    EXAMPLE_SENTENCES,
    PROPOSER_SENTENCES,
    TIPS,
    WORKED_EXAMPLE_TOPIC,
)
from aprompt._optimize.quotes import unquoted
from aprompt.program.predictor import Predict

MIN_INSTRUCTION_CHARS = 12
MAX_INSTRUCTION_CHARS = 600


#: The proposer introducing its instruction: "Sure! Here's an improved instruction:", "Below is my new
#: instruction for the module:".
_INTRODUCTION = re.compile(
    r"^(?:(?:sure|certainly|okay|ok|of course)\b[!,.]?\s*)?(?:here is|here's|below is|this is)\s+"
    r"(?:the|an|my|a)\s+(?:[\w-]+\s+){0,3}?instructions?"
    r"(?:\s+for\s+(?:[\w-]+\s+){0,3}?[\w-]+)?\s*:[*_]*[ \t]*",
    re.IGNORECASE,
)


def clean_instruction(text: str) -> str:
    """Strip a leading label (``Instruction:``), the fences of a block tagged as prose
    (:func:`~aprompt._optimize.proposal_filter.unfenced_prose`), quotes around the whole reply (never one
    of its own: :func:`~aprompt._optimize.quotes.unquoted`) and whitespace from a proposer reply."""
    # "Sure! Here is the improved instruction: Answer ...": the proposer introducing its answer on the
    # instruction's own line; the line reads as a labeled example and would be dropped whole.
    value = _INTRODUCTION.sub("", text.strip(), count=1).strip()
    for label in ("proposed instruction:", "instruction:", "new instruction:"):
        if value.lower().startswith(label):
            value = value[len(label) :]
    # Before the quotes: a reply fenced as ```text would lose the fence and keep its "text" tag.
    return unquoted(unfenced_prose(value))


def clean_reply(text: str, predictor: Predict) -> Cleaned:
    """A proposer reply as an instruction for ``predictor``: :func:`clean_instruction`, then echoed
    scaffolding, the proposer's own sentences and lines starting with ``predictor``'s field labels removed
    (:func:`aprompt._optimize.proposal_filter.clean_proposal`)."""
    addressed = (*PROPOSER_SENTENCES, *(tip for tip in TIPS.values() if tip))
    sentences = (*addressed, *EXAMPLE_SENTENCES)
    foreign = WORKED_EXAMPLE_TOPIC - task_vocabulary(predictor)
    # The worked example's sentences are removed only word for word: a proposal is meant to copy their
    # form ("Keep its meaning and tone, and reply with the negated sentence only.").
    names = frozenset(field.name.lower() for field in predictor.signature.fields)
    cleaned = clean_proposal(
        clean_instruction(text), field_labels(predictor), sentences, foreign, addressed, names
    )
    if _INTRODUCTION.match(text.strip()) and "preamble" not in cleaned.removed:
        cleaned = attrs.evolve(cleaned, removed=("preamble", *cleaned.removed))
    return cleaned


def instruction_key(text: str) -> str:
    """What two instructions must share to be one candidate: their words, case, runs of spaces, markdown
    emphasis and a final full stop aside ("Answer the question." and "**answer the question**" are one)."""
    flat = " ".join(re.sub(r"[*`]+", "", text).split()).casefold()
    return flat.rstrip(" .!\u3002")


def validate_instruction(text: str, existing: Sequence[str]) -> str | None:
    """Return why ``text`` is not a usable instruction, or ``None`` when it is."""
    if text_length(text) < MIN_INSTRUCTION_CHARS:  # (a wide character counts for a few Latin ones)
        return f"too short ({len(text)} chars)"
    if len(text) > MAX_INSTRUCTION_CHARS:
        return f"too long ({len(text)} chars)"
    if instruction_key(text) in {instruction_key(e) for e in existing}:
        return "duplicate of an existing candidate"
    if not reads_as_instruction(text):  # (cut to whole sentences, it may have lost its directive one)
        return "reads as no instruction"
    return None
