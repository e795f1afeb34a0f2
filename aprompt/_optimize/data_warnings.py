"""Problems with the examples that a run would find only after it has paid for its LM calls, told up front.

Each is logged at WARNING before any LM call, not refused: the run itself is sound, and a user may mean it.

- A training example value JSON cannot keep as the prompt shows it (a ``datetime``, an enum member, a
  custom object) in a field a predictor shows: a demo made from it makes
  :meth:`~aprompt.OptimizeResult.save` keep the run record without the optimized prompts. A user who never
  saves, or whose program turns the value into text before a predictor sees it, may go on.
- An example whose label is ``None``, NaN or blank text (a missing value of a data frame's row or a
  CSV's cell): no prediction matches it. In the valset it scores 0 on every candidate, lowering every
  score alike without a word; in the trainset a program run on it fails the metric (LM calls that make
  no bootstrapped demo), and a blank one is a labeled demo that shows the model an empty answer. Blank
  text is not warned of where it is a plausible answer: a predictor's output field of that name lists it
  among its choices (``Literal["", ...]``), or it is the label of at least :data:`PLAUSIBLE_BLANK_SHARE`
  of the training or of the validation examples that have the field (a task whose answer is often
  "nothing").

Example::

    warn_unsaved_demo_values(predictors, train)
    warn_missing_labels(predictors, train, val)
"""

from __future__ import annotations

import logging
import typing
from collections import Counter
from collections.abc import Sequence

from aprompt._optimize.examples import Example, missing_label
from aprompt.program.fields import is_literal
from aprompt.program.predictor import Predict
from aprompt.program.state import unsaved_demo_value

logger = logging.getLogger("aprompt")

#: How many examples a warning names.
SHOWN = 3

#: The share of a field's validation labels that blank text must reach to be taken as a meant answer.
PLAUSIBLE_BLANK_SHARE = 0.2


def warn_unsaved_demo_values(predictors: Sequence[tuple[str, Predict]], train: Sequence[Example]) -> None:
    """Log a warning naming the training examples (the first :data:`SHOWN`) with a value, in a field a
    predictor shows, that a saved result could not keep as the prompt shows it."""
    found: list[str] = []
    count = 0
    for example in train:
        problem = _first_problem(predictors, example)
        if problem is not None:
            count += 1
            if len(found) < SHOWN:
                found.append(f"example {example.id!r}, {problem}")
    if not count:
        return
    more = f" and {count - SHOWN} more" if count > SHOWN else ""
    logger.warning(
        "aprompt: %d training example(s) hold a value that result.save() cannot keep as the prompt shows "
        "it (%s%s): a demo made from one is saved without the optimized prompts (the run record is kept). "
        "To save the result, give the examples plain values (text, numbers, an enum member's .value)",
        count,
        "; ".join(found),
        more,
    )


def _first_problem(predictors: Sequence[tuple[str, Predict]], example: Example) -> str | None:
    for name, value in example.fields().items():
        for _, predictor in predictors:
            if name in (*predictor.signature.input_names, *predictor.signature.output_names) and (
                problem := unsaved_demo_value(predictor.signature, name, value)
            ):
                return problem
    return None


#: What a missing label costs, by the split it is in.
_CONSEQUENCE = {
    "training": (
        "a program run on one fails the metric (LM calls that make no bootstrapped demo), and a blank one "
        "shown as a labeled demo teaches the model to answer nothing"
    ),
    "validation": "no answer matches it, so each scores 0 on every candidate",
}


def warn_missing_labels(
    predictors: Sequence[tuple[str, Predict]], train: Sequence[Example], val: Sequence[Example]
) -> None:
    """Log a warning for each split naming how many of its examples have a label that is ``None``, NaN
    or blank text (where blank text is no plausible answer), and the first :data:`SHOWN` of them."""
    blank_meant = _blank_meant(predictors, train) | _blank_meant(predictors, val)
    for role, examples in (("training", train), ("validation", val)):
        found = [
            f"{example.id!r} ({', '.join(missing)})"
            for example in examples
            if (missing := _missing(example, blank_meant))
        ]
        if not found:
            continue
        more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
        logger.warning(
            "aprompt: %d %s example(s) have a label that is None, NaN or empty (%s%s): %s; fill in or "
            "remove those labels",
            len(found),
            role,
            ", ".join(found[:SHOWN]),
            more,
            _CONSEQUENCE[role],
        )


def _missing(example: Example, blank_meant: set[str]) -> list[str]:
    """The names of the example's labels that are missing (blank text only where it is no answer)."""
    return [
        name
        for name, value in example.labels.items()
        if missing_label(value) or (_blank(value) and name not in blank_meant)
    ]


def _blank(value: object) -> bool:
    return isinstance(value, str) and not value.strip()


def _blank_meant(predictors: Sequence[tuple[str, Predict]], examples: Sequence[Example]) -> set[str]:
    """The label fields whose blank text is a plausible answer in ``examples`` (see the module's
    docstring)."""
    having = Counter(name for example in examples for name in example.labels)
    blank = Counter(name for example in examples for name, value in example.labels.items() if _blank(value))
    meant = {name for name, count in blank.items() if count >= PLAUSIBLE_BLANK_SHARE * having[name]}
    for _, predictor in predictors:
        for field in predictor.signature.fields:
            if is_literal(field.annotation) and any(_blank(c) for c in typing.get_args(field.annotation)):
                meant.add(field.name)
    return meant
