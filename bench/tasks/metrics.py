"""Scoring a program's final answer against a BIG-bench record, the same way for aprompt and DSPy.

The scorers take the raw value a predictor returned (already typed by its library, or a string when a
library could not type it) so that neither library's parser is given credit for the other's leniency:
both are scored by these functions only.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation if c != "_"})


def normalize(text: object) -> str:
    """Lower case, punctuation (except ``_``) as spaces, articles dropped, whitespace collapsed."""
    words = str(text).casefold().translate(_PUNCTUATION).split()
    return " ".join(w for w in words if w not in {"a", "an", "the"})


def exact_match(prediction: object, targets: Iterable[str]) -> float:
    """1.0 when the normalized prediction equals a normalized accepted answer."""
    value = normalize(prediction)
    return 1.0 if any(value == normalize(t) for t in targets) else 0.0


def choice_accuracy(prediction: object, correct: Iterable[str]) -> float:
    """1.0 when the prediction names a correct choice (``add to playlist`` counts for ``add_to_playlist``)."""
    value = normalize(prediction).replace("_", " ")
    return 1.0 if any(value == normalize(c).replace("_", " ") for c in correct) else 0.0


def as_count(prediction: object) -> int | None:
    """The integer a count answer states: an int, digits, or a number word (the first one found)."""
    if isinstance(prediction, bool):
        return None
    if isinstance(prediction, int):
        return prediction
    if isinstance(prediction, float) and prediction.is_integer():
        return int(prediction)
    for token in re.findall(r"\d+|[a-z]+", str(prediction).casefold()):
        if token.isdigit():
            return int(token)
        if token in NUMBER_WORDS:
            return NUMBER_WORDS[token]
    return None


def count_accuracy(prediction: object, targets: Iterable[str]) -> float:
    """1.0 when the stated count equals the accepted count (BIG-bench lists it as digits and as a word)."""
    value = as_count(prediction)
    wanted = {as_count(t) for t in targets}
    return 1.0 if value is not None and value in wanted else 0.0


def sentence_form(text: object) -> str:
    """Lower case, whitespace collapsed, one final period dropped: the form two sentences are compared in."""
    value = " ".join(str(text).lower().split())
    return value[:-1].rstrip() if value.endswith(".") else value


def sentence_match(prediction: object, targets: Iterable[str]) -> float:
    """1.0 when the prediction is an accepted sentence, up to case, spacing and a final period."""
    value = sentence_form(prediction)
    return 1.0 if any(value == sentence_form(t) for t in targets) else 0.0
