"""The evaluator: runs a program over examples with bounded concurrency and scores each with the metric.

One evaluator serves bootstrapping (with traces), mini-batch trials and full evaluations. Each example runs
in its own task under its own trace and prompt overrides, so any number of evaluations — of different
prompt choices — can share one program object at the same time.

Failures never abort an evaluation. A program or metric error (a ``ParseError`` included: an unreadable
reply is the prompt's fault) scores 0 and is recorded with the example id. An LM failure that outlasted the
client's retries (``LMError``) is *not* the prompt's fault: that example is left unscored, counted, and kept
out of the mean, so a burst of 429s never teaches the search that a good prompt is bad.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import anyio
import attrs

from aprompt._errors import ConfigError, LMError
from aprompt.lm.types import LM
from aprompt.optimize.examples import Example
from aprompt.program.context import use_lm
from aprompt.program.overrides import PromptOverride, override_prompts
from aprompt.program.trace import TraceEntry, trace

Metric = Callable[[Example, Any], "float | bool | Awaitable[float | bool]"]


@attrs.frozen
class ExampleResult:
    """One example's outcome.

    Attributes:
        score: in [0, 1]; ``None`` when an LM failure left it unscored.
        error: ``"ExcType: message"`` when the program or metric failed, else ``None``.
    """

    example_id: str
    score: float | None
    error: str | None = None
    prediction: Any = attrs.field(default=None, eq=False, repr=False)
    trace: tuple[TraceEntry, ...] = attrs.field(default=(), eq=False, repr=False)

    @property
    def lm_failure(self) -> bool:
        return self.score is None


@attrs.frozen
class Evaluation:
    """Per-example results of one evaluation, in the order of the examples given."""

    results: tuple[ExampleResult, ...]

    @property
    def scores(self) -> dict[str, float]:
        """Scored examples only: id → score."""
        return {r.example_id: r.score for r in self.results if r.score is not None}

    @property
    def mean(self) -> float | None:
        """Mean score over scored examples; ``None`` when none was scored."""
        values = [r.score for r in self.results if r.score is not None]
        return math.fsum(values) / len(values) if values else None

    @property
    def n_failed(self) -> int:
        """Examples whose program or metric raised (scored 0)."""
        return sum(1 for r in self.results if r.error is not None and r.score is not None)

    @property
    def n_unscored(self) -> int:
        """Examples left unscored by an LM failure."""
        return sum(1 for r in self.results if r.score is None)

    @property
    def errors(self) -> dict[str, str]:
        return {r.example_id: r.error for r in self.results if r.error is not None}


def program_entry(program: object) -> Callable[..., Any]:
    """The callable that runs ``program``: itself when callable, else its ``forward``."""
    if callable(program):
        return program
    forward = getattr(program, "forward", None)
    if callable(forward):
        return forward  # type: ignore[no-any-return]
    raise ConfigError(f"program {type(program).__name__} is not callable and has no forward()")


def metric_score(value: object) -> float:
    """Check and convert a metric's return value to a float in [0, 1]."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        score = float(value)
        if 0.0 <= score <= 1.0:
            return score
        raise ValueError(f"metric returned {value!r}, outside [0, 1]")
    raise TypeError(f"metric returned {type(value).__name__}, expected bool or float in [0, 1]")


async def run_example(
    program: object,
    example: Example,
    metric: Metric,
    *,
    collect_trace: bool = False,
) -> ExampleResult:
    """Run and score one example (inside the caller's overrides and LM context)."""
    entry = program_entry(program)
    with trace(program) as recorded:
        try:
            result = entry(**example.inputs)
            prediction = await result if inspect.isawaitable(result) else result
        except Exception as exc:
            if (lm_error := _lm_error_in(exc)) is not None:
                return ExampleResult(example.id, None, f"{type(lm_error).__name__}: {lm_error}")
            return ExampleResult(example.id, 0.0, f"{type(exc).__name__}: {exc}")
    try:
        value = metric(example, prediction)
        if inspect.isawaitable(value):
            value = await value
        score = metric_score(value)
    except Exception as exc:
        if (lm_error := _lm_error_in(exc)) is not None:  # an LM-judged metric whose LM failed
            return ExampleResult(example.id, None, f"{type(lm_error).__name__}: {lm_error}", prediction)
        return ExampleResult(example.id, 0.0, f"metric {type(exc).__name__}: {exc}", prediction)
    entries = tuple(recorded.entries) if collect_trace else ()
    return ExampleResult(example.id, score, None, prediction, entries)


def _lm_error_in(exc: Exception) -> LMError | None:
    """The LM failure that ended a run: ``exc`` itself, or one raised inside the program's own task
    group (which arrives wrapped in an ``ExceptionGroup``)."""
    if isinstance(exc, LMError):
        return exc
    if isinstance(exc, ExceptionGroup):
        for inner in exc.exceptions:
            if (found := _lm_error_in(inner)) is not None:
                return found
    return None


async def evaluate(
    program: object,
    examples: Sequence[Example],
    metric: Metric,
    *,
    prompts: Mapping[str, PromptOverride] | None = None,
    lm: LM | None = None,
    concurrency: int | anyio.CapacityLimiter = 64,
    collect_traces: bool = False,
    rollout: int | None = None,
    lm_params: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Score ``program`` on ``examples``, at most ``concurrency`` examples in flight.

    Args:
        prompts: per predictor name, the instruction and demos to use instead of the program's own.
        lm: the default LM for predictors that have none (as with :func:`aprompt.use_lm`).
        concurrency: a limit, or a shared :class:`anyio.CapacityLimiter` (so concurrent evaluations share
            one budget of in-flight program runs).
        collect_traces: keep each example's trace (for bootstrapping).
        rollout: applied to every predictor call (bootstrapping draws distinct samples).
        lm_params: sampling parameters applied to every predictor call.
    """
    limiter = (
        concurrency
        if isinstance(concurrency, anyio.CapacityLimiter)
        else anyio.CapacityLimiter(max(1, concurrency))
    )
    results: list[ExampleResult | None] = [None] * len(examples)

    async def one(position: int, example: Example) -> None:
        async with limiter:
            results[position] = await run_example(program, example, metric, collect_trace=collect_traces)

    with override_prompts(program, prompts or {}, rollout=rollout, lm_params=lm_params):
        if lm is not None:
            with use_lm(lm):
                await _run_all(one, examples)
        else:
            await _run_all(one, examples)
    return Evaluation(tuple(r for r in results if r is not None))


async def _run_all(
    one: Callable[[int, Example], Coroutine[Any, Any, None]], examples: Sequence[Example]
) -> None:
    async with anyio.create_task_group() as group:
        for position, example in enumerate(examples):
            group.start_soon(one, position, example)
