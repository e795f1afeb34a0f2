"""Examples and demos shown to the proposer as one line of text, within a budget of characters.

A line cut at its budget loses its last fields first, and those are the outputs: a demo with a long
passage would show the proposer no answer at all. :func:`fields_line` cuts each field to a fair share
instead (a short value, such as most answers, is kept whole; the long ones share what is left), and marks
every cut with :data:`CUT_MARK`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: Ends a value cut to its share.
CUT_MARK = "…"
#: The fewest characters each value is given, however many fields share a small budget.
MIN_FIELD_CHARS = 24


def fair_shares(lengths: Sequence[int], budget: int) -> list[int]:
    """How many characters of each value fit ``budget`` in all: values shorter than an equal share are
    kept whole, and the longer ones split what they leave equally."""
    shares = [0] * len(lengths)
    left = budget
    for position, index in enumerate(sorted(range(len(lengths)), key=lambda i: lengths[i])):
        shares[index] = min(lengths[index], left // (len(lengths) - position))
        left -= shares[index]
    return shares


def fields_line(fields: Mapping[str, str], max_chars: int) -> str:
    """``name: value; name: value`` in about ``max_chars`` characters, each value cut to its fair share
    (:func:`fair_shares`, at least :data:`MIN_FIELD_CHARS`) and marked where it was cut.

    Example::

        >>> fields_line({"passage": "word " * 40, "answer": "Paris"}, 60)
        'passage: word word word word word word word word wo…; answer: Paris'
    """
    overhead = sum(len(name) + 2 for name in fields) + 2 * max(len(fields) - 1, 0)
    budget = max(max_chars - overhead, MIN_FIELD_CHARS * len(fields))
    values = [value.strip() for value in fields.values()]
    shares = fair_shares([len(value) for value in values], budget)
    parts = []
    for name, value, share in zip(fields, values, shares, strict=True):
        if len(value) > share:
            value = value[: share - len(CUT_MARK)].rstrip() + CUT_MARK
        parts.append(f"{name}: {value}")
    return "; ".join(parts)
