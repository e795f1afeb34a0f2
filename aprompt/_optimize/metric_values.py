"""What a metric returns and how it is read: a score (a bool or a float in [0, 1]), or a score with text
feedback, checked and converted by :func:`metric_feedback`; a value that is not a score is the user's bug
and raises :class:`ConfigError` naming the metric and the value.

During a run the metric is wrapped in :class:`RunMetric`, which remembers whether it has scored a real
prediction yet: an evaluation where it raised on every prediction whose program run succeeded aborts the
run (:func:`check_metric_worked`), as every score would be 0 and the search blind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from aprompt._errors import ConfigError, OptimizationError
from aprompt._optimize.examples import Example

if TYPE_CHECKING:
    from aprompt._optimize.evaluate import Evaluation


@runtime_checkable
class ScoreWithFeedback(Protocol):
    """A metric value with an explanation, like DSPy's ``Prediction(score=..., feedback=...)``."""

    @property
    def score(self) -> float | bool: ...

    @property
    def feedback(self) -> str | None: ...


#: What a metric returns: a score (a bool or a float in [0, 1]), or a score with text feedback saying
#: why, as a pair ``(score, feedback)`` or an object with ``.score`` and ``.feedback``.
MetricValue = float | bool | tuple[float | bool, str | None] | ScoreWithFeedback
# Unquoted: ``typing.get_type_hints(aprompt.optimize)`` would look a quoted ``MetricValue`` up in
# the module of ``optimize``, which does not import it.
Metric = Callable[[Example, Any], MetricValue | Awaitable[MetricValue]]


def describe_metric(metric: object) -> str:
    """The metric's name for messages: its qualified name, else its type's."""
    metric = metric.metric if isinstance(metric, RunMetric) else metric
    return str(getattr(metric, "__qualname__", None) or type(metric).__name__)


def metric_score(value: object, metric: object = None) -> float:
    """Check and convert a metric's return value to a float in [0, 1] (the score of a value with
    feedback, see :func:`metric_feedback`).

    Raises:
        ConfigError: naming the metric (when given) and the value: not a bool or number, NaN, or outside
            [0, 1], or a pair or object with feedback whose score is not one or whose feedback is not
            text. A wrong value is the metric's bug, not the prompt's.
    """
    return metric_feedback(value, metric)[0]


def metric_feedback(value: object, metric: object = None) -> tuple[float, str | None]:
    """A metric's return value as ``(score in [0, 1], feedback or None)``.

    A metric returns a bool or a float, or a score with text feedback: a pair ``(score, feedback)`` or
    an object with ``.score`` and ``.feedback`` attributes (DSPy's ``Prediction(score=..., feedback=...)``
    is one). Empty feedback counts as none.

    Raises:
        ConfigError: as for :func:`metric_score`.
    """
    name = f"metric {describe_metric(metric)}" if metric is not None else "metric"
    score: object = value
    feedback: object = None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ConfigError(
                f"{name} returned a tuple of {len(value)} items {value!r:.80}; a metric returns a score or "
                "a pair (score, feedback text)"
            )
        score, feedback = value
    elif not _is_plain_score(value) and hasattr(value, "score"):
        score, feedback = getattr(value, "score"), getattr(value, "feedback", None)  # noqa: B009
    checked = _score(score, name, whole=value)
    if feedback is not None and not isinstance(feedback, str):
        raise ConfigError(
            f"{name} returned feedback of type {type(feedback).__name__} {feedback!r:.80}; the feedback "
            "of a (score, feedback) value must be text or None"
        )
    return checked, (feedback.strip() or None) if feedback is not None else None


def _is_plain_score(value: object) -> bool:
    return isinstance(value, bool | int | float) or type(value).__module__ == "numpy"


def _score(value: object, name: str, *, whole: object) -> float:
    shown = "" if whole is value else f" (in {whole!r:.80})"
    if type(value).__module__ == "numpy" and callable(getattr(value, "item", None)):
        try:
            value = value.item()  # type: ignore[attr-defined]  # numpy.bool_, numpy.float64 ... as Python values
        except (TypeError, ValueError):
            pass  # not one number (an array of several scores): refused below, naming the value
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        # Compared before float(): an int too large for a float is out of range, not an OverflowError.
        if 0 <= value <= 1:
            return float(value)
        raise ConfigError(
            f"{name} returned {value!r:.80}{shown}, outside [0, 1]; a metric returns a bool or a float "
            "in [0, 1]"
        )
    raise ConfigError(
        f"{name} returned {type(value).__name__} {value!r:.80}{shown}, expected a bool or a float in [0, 1]"
    )


class RunMetric:
    """A run's metric: calls the user's ``metric`` and remembers whether it has scored a real
    prediction yet (until then, an evaluation where it raised on every prediction aborts the run)."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.worked = False

    def __call__(self, example: Example, prediction: Any) -> MetricValue | Awaitable[MetricValue]:
        return self.metric(example, prediction)


def check_metric_worked(metric: Metric, evaluation: Evaluation) -> None:
    """Abort a run whose metric has never scored a real prediction and raised on every example whose
    program run succeeded in this evaluation: every score would be 0, the search blind."""
    if not isinstance(metric, RunMetric) or metric.worked:
        return
    ran = [r for r in evaluation.results if r.error is None or r.metric_failed]  # the program ran
    if not ran or not all(r.metric_failed for r in ran):
        return
    first = {r.example_id: r.error or "" for r in ran[:3]}
    # A program that forgot its ``return`` runs fine and hands the metric None: the fix is there.
    ran_fine = (
        "the program returned None every time: does it return its prediction?"
        if all(r.prediction is None for r in ran)
        else "the program ran fine"
    )
    raise OptimizationError(
        f"metric {describe_metric(metric)} raised on every one of the {len(ran)} predictions it was "
        f"given ({ran_fine}); first errors: "
        + "; ".join(f"{example_id}: {error}" for example_id, error in first.items()),
        errors=first,
    )
