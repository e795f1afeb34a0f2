"""The arguments of :func:`aprompt.optimize`, checked before anything is spent.

A wrong type or range (``seed="abc"``, ``concurrency=0``, a NaN price, a metric returning ``None``) used
to surface deep in a run, after the bootstrap had paid for its LM calls, or never (a negative price
simply lowered the cost). Each check here raises a :class:`~aprompt._errors.ConfigError` naming the
argument and the value it got.

The metric is also tried once on a prediction built from an example's own labels (the perfect
answer): it must return a valid score there. A metric that cannot read such a prediction (it reads a
field the labels lack: ``AttributeError``, ``KeyError``, ``IndexError``) is let through; its real
predictions are checked as they are scored (see :mod:`aprompt._optimize.evaluate`). That prediction is
then scored against one example of each set of labels lacking some of the first's: a metric that cannot
read such an example needs a label it lacks (a ``ConfigError`` naming it, not a silent 0 on every
candidate), and against one example of each kind of missing label (``None``, NaN, ``pandas.NA``): a
metric that returns no score for it would stop the run when it scores that example (a ``ConfigError``
naming the label).

Example::

    check_arguments(seed=0, concurrency=8, bootstrap_threshold=1.0, ...)
    await check_metric_on_labels(metric, examples[0])
"""

from __future__ import annotations

import functools
import inspect
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeGuard

from aprompt._errors import APromptError, ConfigError
from aprompt._optimize.budget import Budget
from aprompt._optimize.examples import Example, metric_copy, missing_label
from aprompt._optimize.metric_values import Metric, describe_metric, metric_score
from aprompt._optimize.propose import Grounding
from aprompt._optimize.strategies import STRATEGIES, Strategy
from aprompt.lm._limit_reached import LimitReached
from aprompt.lm._meter_context import metering
from aprompt.lm._metering import RequestMeter
from aprompt.program.discovery import is_function
from aprompt.program.predictor import Predict
from aprompt.program.values import Prediction
from aprompt.run._limits import Limits

__all__ = ["check_arguments", "check_lm", "check_metric_on_labels", "resolve_limits"]

#: What a metric may raise on a prediction built from labels without being refused up front: the
#: labels lack a field it reads (a reasoning field, a list of retrieved passages...).
_CANNOT_READ_LABELS = (AttributeError, LookupError)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_whole(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_arguments(
    *,
    trainset: object,
    valset: object,
    strategy: object,
    budget: object,
    seed: object,
    input_fields: object,
    grounding: object,
    concurrency: object,
    bootstrap_threshold: object,
    in_place: object,
    on_event: object,
    run_dir: object,
    resume: object,
    lms: Mapping[str, object],
) -> None:
    """Check the type and range of every plain argument of :func:`aprompt.optimize`.

    Args:
        lms: ``{"lm": lm, "proposer_lm": ..., "teacher_lm": ...}`` (``None`` values allowed).

    The limits are checked by :class:`~aprompt.run._limits.Limits` (see :func:`resolve_limits`).

    Raises:
        ConfigError: naming the first bad argument and its value.
    """
    _check_dataset("trainset", trainset)
    if valset is not None:
        _check_dataset("valset", valset)
    if not isinstance(strategy, Strategy) and (not isinstance(strategy, str) or strategy not in STRATEGIES):
        raise ConfigError(
            f"unknown strategy {_show(strategy)}; choose one of {sorted(STRATEGIES)} or pass a "
            "Strategy instance"
        )
    if isinstance(strategy, Strategy) and not (
        isinstance(getattr(strategy, "name", None), str) and strategy.name
    ):
        raise ConfigError(f"strategy {type(strategy).__name__} needs a non-empty `name` (a str)")
    if not isinstance(budget, str | Budget | Mapping):
        raise ConfigError(
            f"budget must be a preset name, a Budget or a mapping, got {type(budget).__name__} "
            f"{_show(budget)}"
        )
    if not _is_whole(seed) or int(seed) < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {_show(seed)}")
    if input_fields is not None and (
        isinstance(input_fields, str | bytes)
        or not isinstance(input_fields, Sequence)
        or not all(isinstance(name, str) for name in input_fields)
    ):
        raise ConfigError(f"input_fields must be a list of field names, got {_show(input_fields)}")
    if grounding is not None and not isinstance(grounding, Grounding):
        raise ConfigError(f"grounding must be an aprompt.Grounding or None, got {_show(grounding)}")
    if not _is_whole(concurrency) or int(concurrency) < 1:
        raise ConfigError(f"concurrency must be a whole number >= 1, got {_show(concurrency)}")
    if not _is_real(bootstrap_threshold) or not 0.0 <= float(bootstrap_threshold) <= 1.0:
        raise ConfigError(
            "bootstrap_threshold must be a number in [0, 1] (a metric score), got "
            f"{_show(bootstrap_threshold)}"
        )
    for name, flag in (("in_place", in_place), ("resume", resume)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{name} must be True or False, got {_show(flag)}")
    if on_event is not None and not callable(on_event):
        raise ConfigError(f"on_event must be callable (sync or async) or None, got {_show(on_event)}")
    if run_dir is not None and not isinstance(run_dir, str | os.PathLike):
        raise ConfigError(f"run_dir must be a path or None, got {_show(run_dir)}")
    if run_dir is not None and os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"run_dir {os.fspath(run_dir)!r} exists and is not a directory")
    for name, lm in lms.items():
        if lm is not None:
            check_lm(name, lm)


def no_predictors_found(program: object) -> str:
    """Why ``optimize`` found no predictor in ``program``, and what to pass instead."""
    name = getattr(program, "__qualname__", program)
    if is_function(program):
        return (
            f"function {name} names no predictor (in its globals, its closure, or functions it calls) to "
            "optimize"
        )
    if isinstance(program, type):  # the class, not an instance: its predictors are made in __init__
        return (
            f"program {program.__qualname__} is a class, which holds no predictors to optimize: pass an "
            f"instance of it, {program.__name__}()"
        )
    if isinstance(program, functools.partial):
        wrapped = getattr(program.func, "__qualname__", program.func)
        return (
            f"program is a functools.partial of {wrapped}, whose function and arguments are not searched "
            "for predictors: pass the object holding them, or the function itself (with in_place=True), "
            "giving the fixed arguments inside it"
        )
    on_class = sorted(
        attr
        for cls in type(program).__mro__
        for attr, value in vars(cls).items()
        if isinstance(value, Predict) and not attr.startswith("__")
    )
    if on_class:
        return (
            f"program {type(program).__name__} holds no predictors to optimize: {on_class} are set on its "
            "class, where they are not looked for (and would be shared by every instance); set them on the "
            "instance, in __init__"
        )
    return f"program {type(program).__name__} holds no predictors to optimize"


def check_lm(name: str, lm: object) -> None:
    """``lm`` must implement the :class:`~aprompt.lm.types.LM` protocol: a ``model`` name and an async
    ``chat``. A callable object as ``chat`` is trusted; a plain (not ``async``) function is refused."""
    model = getattr(lm, "model", None)
    chat = getattr(lm, "chat", None)
    if not isinstance(model, str) or not callable(chat):
        # aprompt.local_lm() is the one a user most often passes un-entered.
        entered = (
            "; it is an async context manager: pass the LM it yields (async with ... as lm)"
            if hasattr(lm, "__aenter__")
            else ""
        )
        raise ConfigError(
            f"{name} must be an LM (a `model` name and an async `chat` method, e.g. "
            f"aprompt.OpenAICompatibleLM), got {type(lm).__name__} {_show(lm)}{entered}"
        )
    if (inspect.isfunction(chat) or inspect.ismethod(chat)) and not inspect.iscoroutinefunction(chat):
        raise ConfigError(f"{name}.chat must be an async method (async def chat(...)), got {_show(chat)}")


def _check_dataset(name: str, value: object) -> None:
    # Any iterable of examples (a list, a datasets.Dataset), but not one text or one mapping.
    if hasattr(value, "columns") and hasattr(value, "dtypes"):
        # A data frame (pandas, polars) iterates over its columns, not its rows.
        raise ConfigError(
            f"{name} is a data frame ({type(value).__name__}), which iterates over its columns, not its "
            "rows; pass its rows as mappings, df.to_dict('records') (pandas) or df.to_dicts() (polars), "
            "with input_fields=[...]"
        )
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ConfigError(
            f"{name} must be a list of aprompt.Example objects or mappings, got {type(value).__name__} "
            f"{_show(value)}"
        )


#: The keyword arguments that ``limits=aprompt.Limits(...)`` replaces, in the order of its fields.
OLD_LIMIT_ARGUMENTS = ("max_lm_calls", "max_tokens", "max_cost", "max_time", "prices")


def resolve_limits(limits: object, old: Mapping[str, object], *, function: str, stacklevel: int) -> Limits:
    """The run's :class:`~aprompt.run._limits.Limits`: ``limits`` itself, or built from the old keyword
    arguments ``old`` (``{"max_lm_calls": ..., ..., "prices": ...}``, ``None`` when not given), which
    still work but emit a :class:`DeprecationWarning` naming the replacement (``stacklevel`` points it
    at the caller of ``function``).

    Raises:
        ConfigError: ``limits`` is not a ``Limits``, both ``limits`` and an old argument were given, or a
            limit is out of range (naming it and its value).
    """
    given = {name: value for name, value in old.items() if value is not None}
    if limits is not None:
        if not isinstance(limits, Limits):
            raise ConfigError(f"limits must be an aprompt.Limits or None, got {_show(limits)}")
        if given:
            raise ConfigError(
                f"{function}() got both limits= and {', '.join(f'{name}=' for name in given)}; "
                f"put them all in limits=aprompt.Limits(...)"
            )
        return limits
    if not given:
        return Limits()
    replacement = ", ".join(f"{name}=..." for name in given)
    warnings.warn(
        f"{function}({replacement}) is deprecated; pass limits=aprompt.Limits({replacement}) instead",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )
    return Limits(**given)  # type: ignore[arg-type]  # checked by Limits's validators


async def check_metric_on_labels(metric: Metric, examples: Sequence[Example]) -> None:
    """Score a prediction made of the own labels of the first of ``examples`` that has labels (none of
    them missing, where one has): the metric must return a bool or a float in [0, 1] for it, or such a
    score with text feedback (a pair ``(score, feedback)`` or an object with ``.score`` and
    ``.feedback``).

    Raises:
        ConfigError: the metric returned something else (``None``, NaN, a string, 2.5, ``("x", 1)``: a
            pair whose score is not one, or whose feedback is not text), or no score for an example
            with a missing label (see :func:`_check_missing_labels`), or raised an
            error other than a missing field (``AttributeError``, ``KeyError``, ``IndexError``), which a
            real prediction may well have. An LM failure inside an LM-judged metric is not refused here,
            and no LM request is sent: a metric that asks an LM is checked on its first real predictions
            (under the run's limits).
    """
    labeled = [e for e in examples if e.labels]
    # An example with a missing label is checked on its own, below: what the metric makes of it is the
    # label's doing, not the metric's.
    example = next((e for e in labeled if not _missing_labels(e)), labeled[0] if labeled else None)
    if example is None:
        return  # nothing to build a prediction from
    perfect = Prediction(dict(example.labels))
    try:
        value = await _score_without_lm(metric, example, perfect)
    except (*_CANNOT_READ_LABELS, _WouldCallLM):
        return
    except APromptError as exc:
        if isinstance(exc, ConfigError):
            raise
        return  # an LM-judged metric whose LM failed: not the metric's bug
    except Exception as exc:
        raise ConfigError(
            f"metric {describe_metric(metric)} raised {type(exc).__name__}: {exc} on a prediction made of "
            f"example {example.id}'s own labels {_show(dict(example.labels))}"
        ) from exc
    try:
        metric_score(value, metric)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (scoring a prediction made of example {example.id}'s own labels); "
            "a metric must return a bool or a float in [0, 1], or a pair (score, feedback text)"
        ) from None
    await _check_label_gaps(metric, example, perfect, examples)
    await _check_missing_labels(metric, example, perfect, examples)


def _missing_labels(example: Example) -> list[str]:
    return [name for name, value in example.labels.items() if missing_label(value)]


async def _check_missing_labels(
    metric: Metric, reference: Example, perfect: Prediction, examples: Sequence[Example]
) -> None:
    """Score ``perfect`` (``reference``'s own labels, a real answer) against one example of each kind
    of missing label (``None``, NaN, ``pandas.NA``, ...): a metric that returns no score for it
    (``pandas.NA == "x"`` is ``NA``) would stop the run when it scores that example, after its LM calls.

    Raises:
        ConfigError: naming the example, its missing label and what the metric returned.
    """
    tried: set[tuple[str, type]] = set()
    for example in examples:
        kinds = {(name, type(example.labels[name])) for name in _missing_labels(example)} - tried
        if not kinds or example is reference:
            continue
        tried |= kinds
        try:
            value = await _score_without_lm(metric, example, perfect)
        except _WouldCallLM:
            return
        except Exception:  # the run scores an example whose metric call fails as it comes
            continue
        try:
            metric_score(value, metric)
        except ConfigError:
            shown = ", ".join(f"{name}={example.labels[name]!r}" for name, _ in sorted(kinds, key=str))
            raise ConfigError(
                f"example {example.id} has a missing label ({shown}), and metric "
                f"{describe_metric(metric)} returned {type(value).__name__} {_show(value)} for it, not a "
                "score, which would stop the run when it scores that example; fill in or remove the "
                "examples with missing labels (a data frame's: df.dropna(subset=[...]))"
            ) from None


async def _check_label_gaps(
    metric: Metric, reference: Example, perfect: Prediction, examples: Sequence[Example]
) -> None:
    """Score ``perfect`` (which the metric scored on ``reference``) against one example of each set
    of labels that lacks some of ``reference``'s: a metric that then cannot read the example (a
    ``KeyError`` or ``AttributeError``) needs a label the example lacks, and would score it 0 on every
    candidate without a word.

    Raises:
        ConfigError: naming the example, the labels it lacks and what the metric raised.
    """
    tried: set[frozenset[str]] = set()
    for example in examples:
        keys = frozenset(example.labels)
        missing = sorted(set(reference.labels) - keys)
        if not missing or keys in tried:
            continue
        tried.add(keys)
        try:
            await _score_without_lm(metric, example, perfect)
        except _WouldCallLM:
            return
        except _CANNOT_READ_LABELS as exc:
            raise ConfigError(
                f"example {example.id} lacks the label(s) {missing} that example {reference.id} has, and "
                f"metric {describe_metric(metric)} cannot score it ({type(exc).__name__}: {exc}); give "
                "every example the labels the metric reads"
            ) from exc
        except Exception:  # not a missing label: the run scores it as it comes
            continue


class _WouldCallLM(Exception):
    """The metric asked an LM (an LM-judged metric): it is checked on its first real predictions."""


async def _score_without_lm(metric: Metric, example: Example, prediction: Prediction) -> object:
    """``metric(example, prediction)``, awaited, with every LM request refused: these checks come before
    the run, its meter and its journal, so a request sent here would count against no limit.

    Raises:
        _WouldCallLM: the metric sent an LM request (refused before it was sent).
    """
    try:
        with metering(RequestMeter(max_requests=0)):
            value = metric(metric_copy(example), prediction)
            if inspect.isawaitable(value):
                value = await value
    except BaseException as exc:
        if _refused(exc):
            raise _WouldCallLM from None
        raise
    return value


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, LimitReached):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_refused(inner) for inner in exc.exceptions)
    return exc.__cause__ is not None and _refused(exc.__cause__)
