"""The evaluator: runs a program over examples with bounded concurrency and scores each with the metric.

One evaluator serves bootstrapping (with traces), mini-batch trials and full evaluations. Each example runs
in its own task under its own trace and prompt overrides, so any number of evaluations — of different
prompt choices — can share one program object at the same time.

The metric is handed a copy of each example (:func:`~aprompt._optimize.examples.metric_copy`): one that
changes the labels it reads cannot change them for later scores and demos.

A program or metric error (a ``ParseError`` included: an unreadable reply is the prompt's fault) scores 0
and is recorded with the example id. An LM failure that outlasted the client's retries (``LMError``) is *not*
the prompt's fault: that example is left unscored, counted, and kept out of the mean, so a burst of 429s
never teaches the search that a good prompt is bad. A reply cut at its token budget even at twice the
budget, a reply that is empty or filtered after the client's retries, and a prompt refused as longer than
the model's context, are the exceptions: the prompt led the model past its budget, to no answer, or left
it no room, and they score 0 (:func:`~aprompt.executors.base.unscored_lm_error`).

Three things are the user's bug, never the prompt's, and abort the evaluation at once:

- a metric *value* that is not a score (``None``, NaN, a string, 2.5, a pair whose first item is not a
  score or whose second is not text): :class:`ConfigError` naming the metric and the value (see
  :mod:`aprompt._optimize.metric_values`);
- during a run (the metric wrapped in :class:`RunMetric`), a metric that has never scored a real
  prediction and raised on every example whose program run succeeded: :class:`OptimizationError` (a
  metric that raises on *some* predictions, e.g. on the odd output of a bad candidate, scores those 0);
- a predictor of the program under optimization called where the run's prompt overrides cannot reach it
  (a worker task or thread started outside the evaluation): :class:`ConfigError`, see
  :func:`aprompt.program.overrides.watch_predictors`.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

import anyio
import attrs

from aprompt._errors import CacheError, ConfigError
from aprompt._optimize.examples import Example, as_examples, metric_copy, run_inputs
from aprompt._optimize.metric_values import Metric as Metric
from aprompt._optimize.metric_values import MetricValue as MetricValue
from aprompt._optimize.metric_values import RunMetric as RunMetric
from aprompt._optimize.metric_values import ScoreWithFeedback as ScoreWithFeedback
from aprompt._optimize.metric_values import check_metric_worked, metric_feedback
from aprompt._optimize.metric_values import describe_metric as describe_metric
from aprompt._optimize.metric_values import metric_score as metric_score
from aprompt._optimize.per_example import ExampleTable
from aprompt._optimize.run_outputs import current_output_log, program_key
from aprompt._slots import Limiter, Slots
from aprompt._taskgroups import run_each
from aprompt.executors.base import (
    Executor,
    ProgramOutcome,
    ProgramRun,
    check_executor,
    current_executor,
    lm_error_in,
    raised_by_user_code,
    run_program,
    setup_fault_in,
)
from aprompt.executors.base import check_watch as check_watch  # its old home
from aprompt.executors.base import program_entry as program_entry  # its old home
from aprompt.lm._replies import is_answered_failure
from aprompt.lm.types import LM
from aprompt.program.context import use_lm
from aprompt.program.overrides import PromptOverride, PromptState
from aprompt.program.trace import TraceEntry
from aprompt.run._preflight import check_metric


@attrs.frozen
class ExampleResult:
    """One example's outcome.

    Attributes:
        score: in [0, 1]; ``None`` when an LM failure left it unscored.
        error: ``"ExcType: message"`` when the program or metric failed, else ``None``.
        feedback: the metric's text feedback on the prediction, when it gave one (see
            :func:`~aprompt._optimize.metric_values.metric_feedback`).
        lm_answered: the LM failure was a reply that is not an answer (empty or filtered; not one the
            provider stopped on a fault) to a call the program's prompts do not make (an LM-judged
            metric's): the endpoint works, and asking again the same way gets the same reply, so it is
            this example's own failure, never a sign of an outage. (To the program's own calls such a
            reply is the prompt's failure, scored 0.)
    """

    example_id: str
    score: float | None
    error: str | None = None
    prediction: Any = attrs.field(default=None, eq=False, repr=False)
    trace: tuple[TraceEntry, ...] = attrs.field(default=(), eq=False, repr=False)
    metric_failed: bool = attrs.field(default=False, eq=False, repr=False)
    lm_answered: bool = attrs.field(default=False, eq=False, repr=False)
    feedback: str | None = attrs.field(default=None, eq=False, repr=False)

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

    def table(
        self, examples: Iterable[Example | Mapping[str, Any]], input_fields: Sequence[str] | None = None
    ) -> ExampleTable:
        """Per example: its inputs, the labels the metric expects, and this evaluation's output, score,
        error and feedback (see :mod:`aprompt._optimize.per_example`); ``examples`` as given to
        :func:`evaluate`.

        Example::

            evaluation = await aprompt.evaluate(program, examples, metric, lm=lm)
            for row in evaluation.table(examples).failing()[:5]:
                print(row.inputs, row.outcome.output, row.labels, row.outcome.score)
        """
        return ExampleTable.of_evaluation(_examples(examples, input_fields), self)


async def run_example(
    program: object,
    example: Example,
    metric: Metric,
    *,
    collect_trace: bool = False,
) -> ExampleResult:
    """Run and score one example (inside the caller's overrides and LM context)."""
    outcome = await run_program(program, run_inputs(example), collect_trace=collect_trace)
    return await score_outcome(example, outcome, metric)


async def score_outcome(example: Example, outcome: ProgramOutcome, metric: Metric) -> ExampleResult:
    """Score one program run's outcome with the metric (in the evaluating task, wherever the program
    ran)."""
    if outcome.error is not None:
        return ExampleResult(
            example.id,
            None if outcome.lm_failure else 0.0,
            outcome.error,
            lm_answered=outcome.lm_answered,
        )
    prediction = outcome.prediction
    try:
        value = metric(metric_copy(example), prediction)
        if inspect.isawaitable(value):
            value = await value
    except (ConfigError, CacheError):
        raise
    except Exception as exc:
        # A setup fault raised in the metric's own task group (an LM-judged metric) stops the run too.
        if (setup := setup_fault_in(exc)) is not None:
            raise setup from exc
        if (lm_error := lm_error_in(exc)) is not None:  # an LM-judged metric whose LM failed
            return ExampleResult(
                example.id,
                None,
                f"{type(lm_error).__name__}: {lm_error}",
                prediction,
                lm_answered=is_answered_failure(lm_error),
            )
        error = f"metric {type(exc).__name__}: {exc}"
        return ExampleResult(example.id, 0.0, error, prediction, metric_failed=True)
    except asyncio.CancelledError as exc:
        if not raised_by_user_code(exc):
            raise
        error = f"metric CancelledError: {exc}"
        return ExampleResult(example.id, 0.0, error, prediction, metric_failed=True)
    try:
        score, feedback = metric_feedback(value, metric)
    except ConfigError as exc:  # the metric's bug: say on which example, so it can be reproduced
        raise ConfigError(f"{exc} (scoring the program's prediction for example {example.id})") from None
    if isinstance(metric, RunMetric):
        metric.worked = True
    return ExampleResult(example.id, score, None, prediction, outcome.trace, feedback=feedback)


def _examples(examples: object, input_fields: object) -> list[Example]:
    """``examples`` as :class:`Example` objects (mappings split by ``input_fields``), checked."""
    if isinstance(examples, str | bytes | Mapping) or not isinstance(examples, Iterable):
        raise ConfigError(
            "examples must be a list of aprompt.Example objects or mappings, got "
            f"{type(examples).__name__} {examples!r:.80}"
        )
    if input_fields is not None and (
        isinstance(input_fields, str | bytes)
        or not isinstance(input_fields, Sequence)
        or not all(isinstance(name, str) for name in input_fields)
    ):
        raise ConfigError(f"input_fields must be a list of field names, got {input_fields!r:.80}")
    items = list(examples)
    if all(isinstance(item, Example) for item in items):
        return items  # as given: ids stay the caller's, duplicates included
    return as_examples(items, input_fields, role="examples")


def check_inputs(program: object, examples: Sequence[Example], role: str) -> None:
    """The program must be callable (or have a ``forward``), and every example's inputs must bind to its
    call signature."""
    entry = program_entry(program)  # a ConfigError (a ValueError too) must not pass as "no signature"
    try:
        signature = inspect.signature(entry)
    except (TypeError, ValueError):
        return
    for example in examples:
        try:
            signature.bind(**example.inputs)
        except TypeError as exc:
            raise ConfigError(
                f"{role} example {example.id} does not fit the program's inputs "
                f"{list(signature.parameters)}: {exc}"
            ) from None


async def evaluate(
    program: object,
    examples: Iterable[Example | Mapping[str, Any]],
    metric: Metric,
    *,
    input_fields: Sequence[str] | None = None,
    prompts: Mapping[str, PromptOverride] | None = None,
    lm: LM | None = None,
    concurrency: int | Limiter = 64,
    collect_traces: bool = False,
    rollout: int | None = None,
    lm_params: Mapping[str, Any] | None = None,
    executor: Executor | None = None,
) -> Evaluation:
    """Score ``program`` on ``examples``, at most ``concurrency`` examples in flight.

    Args:
        examples: :class:`Example` objects, or mappings with ``input_fields`` naming the program inputs
            (the rest are labels), as :func:`aprompt.optimize` takes them.
        input_fields: which keys of mapping examples are program inputs.
        prompts: per predictor name, the instruction and demos to use instead of the program's own.
        lm: the default LM for predictors that have none (as with :func:`aprompt.use_lm`).
        concurrency: a limit, or a shared :class:`anyio.CapacityLimiter` (so concurrent evaluations share
            one budget of in-flight program runs).
        collect_traces: keep each example's trace (for bootstrapping).
        rollout: applied to every predictor call (bootstrapping draws distinct samples).
        lm_params: sampling parameters applied to every predictor call.
        executor: where the program runs happen (see :mod:`aprompt.executors`); default: the one of the
            enclosing :func:`~aprompt.executors.use_executor` block (``optimize(executor=...)`` opens
            one), else in this process. Scores and traces are the same wherever the runs happen.

    Raises:
        ConfigError: ``examples`` is not a list of examples or mappings, a mapping lacks an input
            field or comes without ``input_fields``, or an example's inputs do not fit the program's
            call signature; ``metric`` cannot be called as
            ``metric(example, prediction)``, ``lm`` is not an LM, ``concurrency`` is not a whole number
            >= 1 (nor a limiter) or ``executor`` has no async ``run_program`` (each before any LM call);
            or a metric value is not a score.

    Example::

        evaluation = await aprompt.evaluate(program, [{"question": "2+2?", "answer": "4"}], exact,
                                            input_fields=["question"], lm=lm)
        print(evaluation.mean, evaluation.table(examples).failing())
    """
    # arguments imports this module: imported here. Not an LM, each example raises and scores 0.
    from aprompt._optimize.arguments import _is_whole, _show, check_lm

    whole = _is_whole(concurrency) and int(concurrency) >= 1
    if not whole and not isinstance(concurrency, anyio.CapacityLimiter | Slots):
        # Never read as 1 in silence, as optimize() refuses it too.
        raise ConfigError(f"concurrency must be a whole number >= 1, got {_show(concurrency)}")
    check_metric(metric)  # else every example's LM calls are paid for and each scores 0
    check_executor(executor)
    if lm is not None:
        check_lm("lm", lm)
    items = _examples(examples, input_fields)
    check_inputs(program, items, "evaluated")  # else each run is a TypeError, scored 0
    return await evaluate_reporting(
        program,
        items,
        metric,
        prompts=prompts,
        lm=lm,
        concurrency=concurrency,
        collect_traces=collect_traces,
        rollout=rollout,
        lm_params=lm_params,
        executor=executor,
    )


#: Told each example's result as soon as it is scored (see :func:`evaluate_reporting`).
OnResult = Callable[[ExampleResult], None]


async def evaluate_reporting(
    program: object,
    items: Sequence[Example],
    metric: Metric,
    *,
    prompts: Mapping[str, PromptOverride] | None = None,
    lm: LM | None = None,
    concurrency: int | Limiter = 64,
    collect_traces: bool = False,
    rollout: int | None = None,
    lm_params: Mapping[str, Any] | None = None,
    executor: Executor | None = None,
    on_result: OnResult | None = None,
) -> Evaluation:
    """:func:`evaluate` on checked examples, telling ``on_result`` each example's result the moment it
    is scored, in the order they finish (a search decides from the answers in before the slowest
    comes: :func:`aprompt._optimize.staged_trial.staged_evaluation`). The evaluation returned is the same."""
    limiter = (
        concurrency if isinstance(concurrency, anyio.CapacityLimiter | Slots) else Slots(max(1, concurrency))
    )
    results: list[ExampleResult | None] = [None] * len(items)
    runner = executor if executor is not None else current_executor()
    state = PromptState(prompts or {}, rollout, lm_params or {})

    async def one(position: int, example: Example) -> None:
        async with limiter:
            run = ProgramRun(example.id, run_inputs(example), state, lm, collect_traces)
            outcome = await runner.run_program(program, run)
            result = results[position] = await score_outcome(example, outcome, metric)
        if on_result is not None:
            on_result(result)

    # The block checks the state's names once, up front, and is the context of the metric (as before).
    with state.apply(program):
        if lm is not None:
            with use_lm(lm):
                await _run_all(one, items)
        else:
            await _run_all(one, items)
    evaluation = Evaluation(tuple(r for r in results if r is not None))
    check_metric_worked(metric, evaluation)
    log = current_output_log()
    if log is not None:  # an optimization keeps what each program produced, for its per-example view
        log.add(program_key(prompts or {}, rollout, lm_params or {}), evaluation.results)
    return evaluation


async def _run_all(
    one: Callable[[int, Example], Coroutine[Any, Any, None]], examples: Sequence[Example]
) -> None:
    # A ConfigError from one example (a bad metric value) reaches the caller as itself.
    await run_each(one, enumerate(examples))
