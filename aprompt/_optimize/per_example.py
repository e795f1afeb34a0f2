"""Per-example view of evaluations: which examples a program still fails, and which an optimization fixed
or broke compared with the unoptimized program (what DSPy's ``Evaluate(display_table=...)`` shows).

An :class:`ExampleTable` holds one :class:`ExampleRow` per example: its inputs, its labels (what the
metric expects), and the program's :class:`ExampleOutcome` (score, output, error, the metric's feedback);
for an optimization, the unoptimized program's outcome beside it. ``aprompt.evaluate`` gives one through
:meth:`~aprompt._optimize.evaluate.Evaluation.table`; ``OptimizeResult.examples`` is the optimized and the
unoptimized program on the validation set.

During :func:`aprompt.optimize`, :mod:`aprompt._optimize.run_outputs` keeps what every evaluated program
produced on every example, so that the final table needs no LM call.

Example::

    result = await aprompt.optimize(program, trainset, metric, lm=lm)
    for row in result.failing_examples()[:5]:
        print(row.example_id, row.inputs, row.outcome.output, row.labels, row.outcome.score)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from aprompt.run.identity import stable_order

if TYPE_CHECKING:
    from aprompt._optimize.evaluate import Evaluation, ExampleResult
    from aprompt._optimize.examples import Example

__all__ = [
    "PASS_SCORE",
    "ExampleOutcome",
    "ExampleRow",
    "ExampleTable",
    "describe_example",
    "describe_examples",
    "output_value",
]

#: The score an example must reach to pass; below it the program *fails* it (by default: anything
#: short of full marks).
PASS_SCORE = 1.0


def output_value(prediction: Any) -> Any:
    """A JSON-able stand-in for a program's output: a prediction or other mapping as a dict of its fields,
    text, numbers, booleans and ``None`` as they are, lists as lists; any value JSON cannot hold inside
    them as its text, and any other object as its ``repr`` (its type's name when even that raises: an
    output is only shown, and one that cannot be must not stop the run that produced it)."""
    try:
        to_dict = getattr(prediction, "to_dict", None)
        if callable(to_dict):
            value: Any = to_dict()
        elif isinstance(prediction, Mapping):
            value = dict(prediction)
        elif isinstance(prediction, str | int | float | bool | list | tuple) or prediction is None:
            value = prediction
        else:
            return _shown(prediction)
    except Exception:  # a to_dict() that needs arguments, a mapping that cannot be iterated
        return _shown(prediction)
    if type(value) is dict and _as_json_reads_it(value):
        return dict(value)  # what the round trip through JSON gives, without it (per example scored)
    try:
        return json.loads(json.dumps(value, ensure_ascii=False, default=_text))
    except Exception:  # keys JSON cannot hold, cycles, a value whose str() raises (NaN is fine)
        return _shown(prediction)


def _text(value: Any) -> str:
    """The text of a value JSON cannot hold; a set's with its items in the same order in every process
    (its own order follows the hash seed: a resumed run's table would differ, and be journaled again)."""
    if not isinstance(value, set | frozenset) or not value:
        return str(value)
    items = "{" + ", ".join(repr(item) for item in stable_order(value)) + "}"
    return items if type(value) is set else f"{type(value).__name__}({items})"


def _shown(prediction: Any) -> str:
    try:
        return repr(prediction)
    except Exception:
        return f"<{type(prediction).__name__} object>"


_SCALARS = (str, int, float, bool, type(None))


def _as_json_reads_it(value: dict[Any, Any]) -> bool:
    """Whether JSON gives ``value`` back as it is: text keys and exact scalars (a float's text reads back
    as the same float; a subclass of one, an enum member, would come back as its base)."""
    for key, item in value.items():
        if type(key) is not str or type(item) not in _SCALARS:
            return False
    return True


@attrs.frozen
class ExampleOutcome:
    """One program's outcome on one example.

    Attributes:
        score: in [0, 1]; ``None`` when an LM failure left the example unscored.
        output: the program's output as plain JSON (see :func:`output_value`); ``None`` when it failed
            or the output was not recorded.
        error: ``"ExcType: message"`` when the program or the metric failed (or the LM, when unscored).
        feedback: the metric's text feedback, when it gave one.
        recorded: whether the run kept the output (see the module docstring).
    """

    score: float | None
    output: Any = None
    error: str | None = None
    feedback: str | None = None
    recorded: bool = True

    @classmethod
    def of(cls, result: ExampleResult) -> ExampleOutcome:
        """The outcome an :class:`~aprompt._optimize.evaluate.ExampleResult` describes."""
        output = output_value(result.prediction) if result.prediction is not None else None
        return cls(result.score, output, result.error, result.feedback)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExampleOutcome:
        score = data.get("score")
        return cls(
            None if score is None else float(score),
            data.get("output"),
            data.get("error"),
            data.get("feedback"),
            bool(data.get("recorded", True)),
        )


@attrs.frozen
class ExampleRow:
    """One example: its inputs, the labels the metric reads, and the program's outcome (for an
    optimization: the optimized program's, with the unoptimized program's as ``baseline``)."""

    example_id: str
    inputs: Mapping[str, Any]
    labels: Mapping[str, Any]
    outcome: ExampleOutcome
    baseline: ExampleOutcome | None = None

    @property
    def gain(self) -> float | None:
        """The score minus the baseline's (``None`` without a baseline or when either is unscored)."""
        if self.baseline is None or self.baseline.score is None or self.outcome.score is None:
            return None
        return self.outcome.score - self.baseline.score

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.example_id,
            "inputs": output_value(dict(self.inputs)),
            "labels": output_value(dict(self.labels)),
            "outcome": self.outcome.to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExampleRow:
        baseline = data.get("baseline")
        return cls(
            str(data["id"]),
            dict(data.get("inputs") or {}),
            dict(data.get("labels") or {}),
            ExampleOutcome.from_dict(data["outcome"]),
            ExampleOutcome.from_dict(baseline) if baseline is not None else None,
        )


@attrs.frozen
class ExampleTable:
    """Per-example outcomes, in the order of the examples.

    Example::

        table = evaluation.table(examples)
        for row in table.failing()[:3]:
            print(row.inputs, row.outcome.output, row.labels, row.outcome.score)
    """

    rows: tuple[ExampleRow, ...] = ()

    def __iter__(self) -> Iterator[ExampleRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def failing(self, below: float = PASS_SCORE) -> list[ExampleRow]:
        """Scored examples whose score is below ``below`` (default: short of full marks), lowest first
        (equal scores in the examples' order). Examples an LM failure left unscored are not the
        program's failures: see :meth:`unscored`."""
        found = [r for r in self.rows if r.outcome.score is not None and r.outcome.score < below]
        return sorted(found, key=lambda r: r.outcome.score or 0.0)

    def fixed(self) -> list[ExampleRow]:
        """Examples the program scores higher than the baseline did, largest gain first."""
        return sorted((r for r in self.rows if (r.gain or 0.0) > 0.0), key=lambda r: -(r.gain or 0.0))

    def broken(self) -> list[ExampleRow]:
        """Examples the program scores lower than the baseline did, largest loss first."""
        return sorted((r for r in self.rows if (r.gain or 0.0) < 0.0), key=lambda r: r.gain or 0.0)

    def unscored(self) -> list[ExampleRow]:
        """Examples an LM failure left unscored."""
        return [r for r in self.rows if r.outcome.score is None]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExampleTable:
        return cls(tuple(ExampleRow.from_dict(r) for r in data.get("rows", ())))

    @classmethod
    def of_evaluation(cls, examples: Sequence[Example], evaluation: Evaluation) -> ExampleTable:
        """The table of one evaluation of ``examples`` (the same examples, in the same order: matched by
        position, so examples sharing an id each get their own outcome; else by id)."""
        results = evaluation.results
        in_order = len(results) == len(examples)
        if in_order and all(r.example_id == e.id for r, e in zip(results, examples, strict=True)):
            pairs = list(zip(examples, results, strict=True))
        else:
            by_id = {r.example_id: r for r in results}
            pairs = [(e, by_id[e.id]) for e in examples if e.id in by_id]
        return cls(tuple(ExampleRow(e.id, e.inputs, e.labels, ExampleOutcome.of(r)) for e, r in pairs))


def _one_line(value: Any, width: int) -> str:
    """``value`` on one line of at most ``width`` characters (cut with ``…``)."""
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    else:
        text = _plain(value)
    text = " ".join(text.split())  # newlines and runs of spaces: one space
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _score_text(value: float | None) -> str:
    return "unscored" if value is None else f"{value:.3f}"


def describe_example(row: ExampleRow, width: int = 100) -> list[str]:
    """A few readable lines of one example: its score (and the baseline's), inputs, output, expected
    labels, and the error or the metric's feedback; each value cut to fit ``width`` characters."""
    head = f"{row.example_id}: score {_score_text(row.outcome.score)}"
    if row.baseline is not None:
        head += f" (baseline {_score_text(row.baseline.score)})"
    room = max(20, width - 14)
    lines = [head, f"  inputs:   {_one_line(row.inputs, room)}"]
    if row.outcome.recorded:
        output = "(no output)" if row.outcome.output is None else _one_line(row.outcome.output, room)
    else:
        output = "(not recorded: the run was resumed after a crash)"
    lines.append(f"  output:   {output}")
    lines.append(f"  expected: {_one_line(row.labels, room)}")
    if row.outcome.error:
        lines.append(f"  error:    {_one_line(row.outcome.error, room)}")
    if row.outcome.feedback:
        lines.append(f"  feedback: {_one_line(row.outcome.feedback, room)}")
    return lines


def describe_examples(table: ExampleTable, *, limit: int = 5, width: int = 100) -> list[str]:
    """Text of the examples still failing (the first ``limit``), and of those fixed and broken compared
    with the baseline (when the table has one)."""
    failing = table.failing()
    scored = sum(1 for r in table.rows if r.outcome.score is not None)
    lines = [f"examples still failing: {len(failing)} of {scored} scored"]
    for row in failing[:limit]:
        lines += [f"  {line}" for line in describe_example(row, width - 2)]
    if len(failing) > limit:
        lines.append(f"  ... and {len(failing) - limit} more")
    if any(r.baseline is not None for r in table.rows):
        for name, rows in (("fixed", table.fixed()), ("broken", table.broken())):
            ids = ", ".join(r.example_id for r in rows[:limit]) + (" ..." if len(rows) > limit else "")
            lines.append(f"{name} compared with the baseline: {len(rows)}" + (f" ({ids})" if rows else ""))
    unscored = table.unscored()
    if unscored:
        lines.append(f"left unscored by LM failures: {len(unscored)}")
    return lines
