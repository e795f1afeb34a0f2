"""Problems with the examples that a run would find only after it has paid for its LM calls, told up front.

Each is logged at WARNING before any LM call, not refused: the run itself is sound, and a user may mean it.

- A training example value JSON cannot keep as the prompt shows it (a ``datetime``, an enum member, a
  custom object) in a field a predictor shows: a demo made from it makes
  :meth:`~aprompt.OptimizeResult.save` keep the run record without the optimized prompts. A user who never
  saves, or whose program turns the value into text before a predictor sees it, may go on.

Example::

    warn_unsaved_demo_values(predictors, train)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aprompt._optimize.examples import Example
from aprompt.program.predictor import Predict
from aprompt.program.state import unsaved_demo_value

logger = logging.getLogger("aprompt")

#: How many examples a warning names.
SHOWN = 3


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
