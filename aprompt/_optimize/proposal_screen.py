"""The screen: a proposal's words against the task's, and its scores against the original instruction's."""

from __future__ import annotations

import re
from collections.abc import Mapping

from aprompt.program.predictor import Predict

#: A proposal whose screen mean is this far under the original's is dropped.
FAR_BELOW = 0.4
#: Fewest examples scored for both the original and a proposal before the screen decides anything.
MIN_SCREENED = 3
_COMMON = frozenset(
    """a about above after again all also an and any are as at be been before being below between both
    but by can could did do does doing done each either every few for from further had has have having
    he her here hers him his how i if in into is it its itself just may me might more most must my no
    nor not now of off on once only or other our out over own same she should so some such than that
    the their them then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours always never one two three first
    well make sure use using give given following based provide each way like get simple clear clearly
    concise concisely precise precisely carefully careful correct correctly accurate accurately
    example task instruction module prompt input output field reply respond response text language model
    program write new better good best""".split()
)


def _stem(word: str) -> str:
    for suffix, replacement in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: len(word) - len(suffix)] + replacement
    return word


def content_words(text: str) -> frozenset[str]:
    """Lower-cased, stemmed words of ``text`` that carry meaning (3+ letters, not common or prompt jargon)."""
    words = re.findall(r"[^\W\d_]+", text.lower().replace("_", " "))
    return frozenset(_stem(w) for w in words if len(w) >= 3 and w not in _COMMON and _stem(w) not in _COMMON)


def task_vocabulary(predictor: Predict, *texts: str | None) -> frozenset[str]:
    """Content words of the task: the predictor's field names, labels and descriptions, its original
    instruction, and ``texts`` (the data summary and the program description)."""
    parts = [predictor.instruction, *(t for t in texts if t)]
    for field in predictor.signature.fields:
        parts.extend((field.name, field.label, field.description))
    return frozenset().union(*(content_words(p) for p in parts))


def on_task(instruction: str, vocabulary: frozenset[str]) -> bool:
    """Whether ``instruction`` shares a content word with the task's ``vocabulary``."""
    return bool(content_words(instruction) & vocabulary)


def screen_means(
    original: Mapping[str, float], proposal: Mapping[str, float]
) -> tuple[float, float, int] | None:
    """Means of the original and a proposal on the examples both were scored on, and how many; ``None``
    when fewer than :data:`MIN_SCREENED` (an LM failure leaves an example unscored)."""
    shared = sorted(set(original) & set(proposal))
    if len(shared) < MIN_SCREENED:
        return None
    n = len(shared)
    return sum(original[e] for e in shared) / n, sum(proposal[e] for e in shared) / n, n


def screen_verdict(
    original: Mapping[str, float], proposal: Mapping[str, float], *, task_related: bool
) -> str | None:
    """Why a proposal is dropped after the screen (per-example scores, no demos), or ``None`` to keep it."""
    means = screen_means(original, proposal)
    if means is None:
        return None
    base, score, n = means
    if base - score >= FAR_BELOW - 1e-9:
        return f"scores far below the original on the screen ({score:.2f} vs {base:.2f} on {n} examples)"
    if not task_related and score < base:
        return (
            "off-task: shares no word with the task's fields, instruction or data summary, and scores "
            f"below the original on the screen ({score:.2f} vs {base:.2f} on {n} examples)"
        )
    return None
