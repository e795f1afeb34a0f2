"""Where program runs happen: the :class:`Executor` protocol, the run and outcome values, and the
in-process default.

An evaluation (:func:`aprompt.evaluate`, and through it every program run of :func:`aprompt.optimize`:
bootstrap runs, screens, trials, full evaluations, reflection) turns each example into a
:class:`ProgramRun` — the inputs plus the run's :class:`~aprompt.program.overrides.PromptState`, an
explicit, serializable value — and awaits ``executor.run_program(program, run)`` for it. The executor
runs the program *somewhere* with that state applied and returns a :class:`ProgramOutcome`; the
evaluation scores it with the metric, in the driver, in the order of the examples. The in-process
executor runs the program in the evaluating task (today's behaviour); :class:`~aprompt.executors.
RayExecutor` runs it on a Ray cluster.

``run_program`` is always awaited in the evaluating task, inside the run's context: its LM meter, usage
scopes and traces. An executor that runs the program elsewhere sends the program's LM calls back to that
task (see :mod:`aprompt.executors.relay`), so the run's limiter, cache, meter and journal stay the only
ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from aprompt._errors import (
    CacheError,
    ConfigError,
    ContentFilteredError,
    ContextOverflowError,
    EmptyResponseError,
    LMError,
    TruncatedResponseError,
)
from aprompt.lm._replies import is_answered_failure
from aprompt.lm.types import LM
from aprompt.program.context import use_lm
from aprompt.program.overrides import PromptState, current_watch, running_program
from aprompt.program.trace import TraceEntry, trace

_E = TypeVar("_E", bound=BaseException)

logger = logging.getLogger("aprompt")

__all__ = [
    "Executor",
    "InProcessExecutor",
    "ProgramOutcome",
    "ProgramRun",
    "check_executor",
    "current_executor",
    "execute_run",
    "program_entry",
    "use_executor",
]


@attrs.frozen
class ProgramRun:
    """One program run an evaluation asks an executor for.

    Attributes:
        example_id: the example's id (for messages and logs).
        inputs: the program's keyword arguments.
        state: the prompts (by predictor name), rollout and sampling parameters of the run.
        lm: the default LM for predictors that have none (as with :func:`aprompt.use_lm`).
        collect_trace: keep the run's trace (bootstrapping learns demos from it).
    """

    example_id: str
    inputs: Mapping[str, Any]
    state: PromptState = attrs.field(factory=PromptState)
    lm: LM | None = None
    collect_trace: bool = False


@attrs.frozen
class ProgramOutcome:
    """What one program run produced, before the metric scores it.

    Attributes:
        prediction: the program's return value (``None`` when it raised).
        error: ``"ExcType: message"`` when the program raised.
        lm_failure: the error is an LM failure that outlasted the client's retries: the example is left
            unscored (not the prompt's fault), never scored 0. A reply cut at its token budget even after
            the client's larger re-send, an empty or filtered reply after the client's retries, and a
            prompt refused as longer than the model's context, are no such failures (see
            :func:`unscored_lm_error`).
        lm_answered: that LM failure was a reply that is not an answer (see
            :class:`~aprompt._optimize.evaluate.ExampleResult`).
        trace: the run's predictor calls, when the run asked for them and the program succeeded.
        cause: the exception that ended the run (where it ran; never sent elsewhere).
    """

    prediction: Any = None
    error: str | None = None
    lm_failure: bool = False
    lm_answered: bool = False
    trace: tuple[TraceEntry, ...] = ()
    cause: BaseException | None = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def failed(cls, exc: Exception) -> ProgramOutcome:
        """The outcome of a run whose program raised ``exc``."""
        lm_error = unscored_lm_error(exc)
        if lm_error is not None:
            return cls(
                error=f"{type(lm_error).__name__}: {lm_error}",
                lm_failure=True,
                lm_answered=is_answered_failure(lm_error),
                cause=exc,
            )
        shown = lm_error_in(exc) or exc  # a cut reply is named as itself, not as what wrapped it
        return cls(error=f"{type(shown).__name__}: {shown}", cause=exc)


#: LM failures that are the prompt's own (see :func:`unscored_lm_error`).
_PROMPTS_OWN = (TruncatedResponseError, EmptyResponseError, ContentFilteredError, ContextOverflowError)


def unscored_lm_error(exc: BaseException) -> LMError | None:
    """The LM failure in ``exc`` that leaves its example unscored, if any.

    Every :class:`~aprompt._errors.LMError` does (a provider fault is not the prompt's), except those the
    program as optimized would meet as well: a reply cut at its token budget even after the client's
    re-send with twice the budget (:class:`~aprompt._errors.TruncatedResponseError`: the prompt led the
    model to an answer too long to finish); a reply that is empty or withheld by the provider's filter
    (or a refusal) after the client's retries (:class:`~aprompt._errors.EmptyResponseError`,
    :class:`~aprompt._errors.ContentFilteredError`: the endpoint answers, and this request, asked again,
    gets it again); and a prompt refused as longer than the model's context
    (:class:`~aprompt._errors.ContextOverflowError`: a candidate's demos made it so). Such an example
    scores 0, like a reply that cannot be read; left out instead, a prompt that rambles, answers nothing
    or draws a refusal on the hard examples, or whose demos leave no room for the long ones, would be
    ranked on the easy ones alone.
    """
    # A provider fault beside one of the prompt's own failures still counts.
    return error_in(exc, LMError, but=_PROMPTS_OWN)


@runtime_checkable
class Executor(Protocol):
    """Decides where program runs happen.

    ``run_program`` runs ``program`` once with ``run.state`` applied and ``run.inputs`` as its keyword
    arguments and returns the outcome; any number of calls may be in flight at once (the evaluation
    bounds them). It is awaited in the evaluating task: code it runs there sees the run's LM meter and
    usage scopes. An executor that runs the program in another place applies the state to that place's
    own copy of the program (:func:`execute_run` does both) and relays its LM calls back (see
    :mod:`aprompt.executors.relay`). A program error is an outcome (:meth:`ProgramOutcome.failed`), not an
    exception; an exception from ``run_program`` aborts the evaluation.

    Example — an executor giving every run a fresh copy of the program (for programs that keep
    per-run state on themselves)::

        class FreshCopyExecutor:
            async def run_program(self, program, run):
                return await execute_run(copy.deepcopy(program), run)
    """

    async def run_program(self, program: object, run: ProgramRun) -> ProgramOutcome: ...


class InProcessExecutor:
    """The default executor: every run in the evaluating task of this process, as a plain await."""

    async def run_program(self, program: object, run: ProgramRun) -> ProgramOutcome:
        """Run ``program`` here (see :func:`execute_run`)."""
        return await execute_run(program, run)

    def __repr__(self) -> str:
        return "InProcessExecutor()"


_EXECUTOR: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("aprompt_executor", default=None)


def current_executor() -> Executor:
    """The executor of the innermost :func:`use_executor` block of this task, else in-process."""
    return _EXECUTOR.get() or InProcessExecutor()


@contextmanager
def use_executor(executor: Executor | None) -> Iterator[Executor]:
    """Evaluations in this block (and in tasks started inside it) that are given no ``executor=``
    use ``executor`` (``None``: in-process). :func:`aprompt.optimize` opens one for its run.

    Raises:
        ConfigError: ``executor`` has no ``run_program`` method.
    """
    check_executor(executor)
    token = _EXECUTOR.set(executor)
    try:
        yield executor or InProcessExecutor()
    finally:
        _EXECUTOR.reset(token)


def check_executor(executor: object) -> None:
    """Raise :class:`ConfigError` unless ``executor`` is ``None`` or has an async ``run_program``."""
    method = getattr(executor, "run_program", None)
    if isinstance(executor, type):  # its run_program is async, but unbound: every run would be a TypeError
        raise ConfigError(
            f"executor must be an executor object, got the class {executor.__name__}: create one "
            f"({executor.__name__}(...)) and pass that"
        )
    if executor is not None and not inspect.iscoroutinefunction(method):
        raise ConfigError(
            f"executor must be None or have an async run_program(program, run) method, got "
            f"{type(executor).__name__} {executor!r:.80}"
        )


async def execute_run(program: object, run: ProgramRun) -> ProgramOutcome:
    """Run ``program`` once in this task, with ``run.state`` applied to it by predictor name and
    ``run.lm`` as the default LM: what an executor calls where the run happens.

    Raises:
        ConfigError: the state names a predictor ``program`` lacks, or a predictor of the program under
            optimization was called where the run's prompts cannot reach it.
    """
    with run.state.apply(program), use_lm(run.lm) if run.lm is not None else nullcontext():
        return await run_program(program, run.inputs, collect_trace=run.collect_trace)


#: Errors raised inside a program that no prompt causes or fixes: they stop the run.
_SETUP_FAULTS = (ConfigError, CacheError)


async def run_program(program: object, inputs: Mapping[str, Any], *, collect_trace: bool) -> ProgramOutcome:
    """Run ``program`` on ``inputs`` in the current context (prompts already applied).

    Raises:
        ConfigError: the program raised one (a setup fault, never an outcome to score).
        CacheError: an LM's response cache failed under the program (closed while the run used it).
    """
    entry = program_entry(program)
    outcome: ProgramOutcome
    with trace(program) as recorded, running_program():
        try:
            result = entry(**inputs)
            prediction = await result if inspect.isawaitable(result) else result
        except _SETUP_FAULTS:
            # A setup fault aprompt found inside the program (an LM refusing a parameter, a model
            # without a price, an LM cache closed under the run): no candidate can fix it, and scored 0
            # it would pass for a wrong answer.
            raise
        except Exception as exc:
            # The same fault raised in the program's own task group arrives wrapped in a group.
            if (setup := setup_fault_in(exc)) is not None:
                raise setup from exc
            outcome = ProgramOutcome.failed(exc)
        except asyncio.CancelledError as exc:
            if not raised_by_user_code(exc):
                raise
            outcome = ProgramOutcome(error=f"CancelledError: {exc}", cause=exc)
        else:
            outcome = ProgramOutcome(prediction, trace=tuple(recorded.entries) if collect_trace else ())
    check_watch()  # before anything is scored: a run whose prompts never applied measures nothing
    return outcome


def raised_by_user_code(exc: asyncio.CancelledError) -> bool:
    """Whether a ``CancelledError`` out of a program or a metric is their own error (an awaited future
    that was cancelled elsewhere, an explicit raise), not the cancellation of the task running them.

    Let through, it would read as a cancellation to the evaluation's task group, which would cancel the
    other examples and drop them from the evaluation without a word."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop (trio): never this task's cancellation
        return True
    return task is not None and task.cancelling() == 0


def program_entry(program: object) -> Callable[..., Any]:
    """The callable that runs ``program``: itself when callable, else its ``forward``."""
    if callable(program):
        return program
    forward = getattr(program, "forward", None)
    if callable(forward):
        return forward  # type: ignore[no-any-return]
    raise ConfigError(f"program {type(program).__name__} is not callable and has no forward()")


def check_watch() -> None:
    """Raise if a predictor of the program under optimization was called without the run's prompts; warn
    (once each, and once for predictors shown alike: one the program makes anew in each call) of a
    predictor the program called that is not one of its predictors."""
    watch = current_watch()
    if watch is not None and len(watch.reported) < len(watch.undiscovered):
        for key, shown in list(watch.undiscovered.items()):
            if key not in watch.reported:
                watch.reported.add(key)
                if shown in watch.reported_reprs:
                    continue
                watch.reported_reprs.add(shown)
                logger.warning(
                    "aprompt: the program called %s, which is not among the predictors aprompt found in it: "
                    "it runs with its own prompts and is not optimized. Make it reachable from the program "
                    "(an attribute of it or of an object, list or dict it holds; for a function, a module "
                    "global or closure variable it reads) to optimize it",
                    shown,
                )
    if watch is not None and watch.unguided:
        names = sorted(set(watch.unguided))
        raise ConfigError(
            f"predictor(s) {names} of the program under optimization were called outside the evaluation's "
            "context, so they never saw the candidate prompts and every candidate would score as the "
            "baseline. The program runs its predictors elsewhere: a worker task started before optimize(), "
            "or a thread or event loop that does not inherit the caller's contextvars. Start the worker "
            "inside the program call, or carry the context over (anyio.to_thread.run_sync does; with a "
            "thread pool, submit contextvars.copy_context().run). Calling the same predictors from other "
            "code while optimize() runs also triggers this: optimize a separate instance of the program."
        )


def setup_fault_in(exc: BaseException) -> Exception | None:
    """The setup fault (:data:`_SETUP_FAULTS`) that ended a run or a metric call, wherever it was
    raised (alone, in a task group, or as the cause of the program's own error); ``None`` if none."""
    return error_in(exc, ConfigError) or error_in(exc, CacheError)


def lm_error_in(exc: BaseException) -> LMError | None:
    """The LM failure that ended a run: ``exc`` itself, one raised inside the program's own task
    group (which arrives wrapped in an ``ExceptionGroup``), or one the program re-raised as its own
    error (``raise StepFailed(...) from lm_error``, or the same raised in the ``except`` block without
    ``from``: the cause is still the provider's fault; ``from None`` says it is not)."""
    return error_in(exc, LMError)


def error_in(
    exc: BaseException,
    kind: type[_E],
    _seen: frozenset[int] = frozenset(),
    *,
    but: type[BaseException] | tuple[type[BaseException], ...] | None = None,
) -> _E | None:
    """An error of ``kind`` (and not of ``but``) that ended a run: ``exc`` itself, one inside a group it
    raised, or its cause (explicit, or the error it was raised while handling, unless ``from None``)."""
    if id(exc) in _seen:
        return None
    seen = _seen | {id(exc)}
    if isinstance(exc, kind) and not (but is not None and isinstance(exc, but)):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := error_in(inner, kind, seen, but=but)) is not None:
                return found
    if exc.__cause__ is not None:
        return error_in(exc.__cause__, kind, seen, but=but)
    # ``except LMError: raise StepFailed(...)`` without ``from`` is the same failure as with it.
    if exc.__context__ is not None and not exc.__suppress_context__:
        return error_in(exc.__context__, kind, seen, but=but)
    return None
