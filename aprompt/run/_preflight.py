"""Checks made once before a run spends anything: the metric's shape, the run limits, and the endpoints.

A run that is going to fail should fail here, with an error naming the problem, rather than after an
hour of paid LM calls. Endpoints are probed with one ``GET {base_url}/models`` each, which costs no
tokens (:mod:`aprompt.lm._probe`): a refused connection or a timeout raises
:class:`~aprompt._errors.LMConnectionError`, a 401 or 403 raises
:class:`~aprompt._errors.AuthenticationError`; both name the endpoint and never the key. Any other answer
(200, 404 from a server without that route, a transient 5xx) lets the run go on.

Example::

    check_metric(metric)
    runs, what = first_step_runs(len(valset), minibatch_size=12)
    check_limits(limits, lms, runs=runs, what=what)
    await check_endpoints([lm, proposer_lm])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

from aprompt._errors import ConfigError
from aprompt.lm._http import HTTPChatLM
from aprompt.run._limits import RunLimits

__all__ = ["DEFAULT_PROBE_TIMEOUT", "check_endpoints", "check_limits", "check_metric"]

#: Seconds an endpoint gets to accept a connection and answer ``GET /models``.
DEFAULT_PROBE_TIMEOUT = 5.0


def check_metric(metric: object) -> None:
    """``metric`` must be callable as ``metric(example, prediction)``.

    Raises:
        ConfigError: not callable, or its signature cannot take two positional arguments.

    Example:
        >>> check_metric(lambda example, prediction, trace=None: 1.0)
    """
    if not callable(metric):
        raise ConfigError("metric must be callable: metric(example, prediction) -> bool | float")
    try:
        signature = inspect.signature(metric)
    except (TypeError, ValueError):
        return  # a builtin or extension callable without a readable signature: trust it
    try:
        signature.bind(None, None)
    except TypeError as exc:
        name = getattr(metric, "__qualname__", type(metric).__name__)
        raise ConfigError(
            f"metric {name}{signature} cannot be called as metric(example, prediction): {exc}"
        ) from None


def first_step_runs(n_val: int, minibatch_size: int, *, trials: bool = True) -> tuple[int, str]:
    """The program runs that score the search's first program beside the baseline, described: the
    baseline's evaluation and one mini-batch, or, for a strategy that plans no trial (only full
    evaluations, such as ``bootstrap_random_search``), one full evaluation."""
    if not trials:
        return 2 * n_val, f"the baseline's evaluation ({n_val} runs) and one full evaluation ({n_val} runs)"
    n_batch = min(minibatch_size, n_val)
    return n_val + n_batch, f"the baseline's evaluation ({n_val} runs) and one mini-batch ({n_batch} runs)"


def check_limits(
    limits: RunLimits,
    lms: Iterable[Any],
    *,
    runs: int,
    calls_per_run: float | None = None,
    what: str = "the baseline and one mini-batch",
) -> None:
    """The run limits must leave room for one trial, and ``max_cost`` needs a price for every model.

    Args:
        lms: every LM the run may call (each is priced by its ``model``).
        runs: the program runs that score one trial: the baseline's full evaluation and one mini-batch
            (:func:`first_step_runs`).
        what: those runs in words, for the error.
        calls_per_run: the program's LM calls per run, as measured (by an earlier call of the same run);
            ``None`` before it was measured: then one call per run is assumed here, and the run checks
            again on the program's first run (:mod:`aprompt.lm._metering`).

    Raises:
        ConfigError: naming the limit and the numbers.
    """
    for name in ("max_lm_calls", "max_tokens", "max_cost", "max_time"):
        if getattr(limits, name) == 0:
            raise ConfigError(f"{name}=0 leaves no room for a single trial; give a positive limit or None")
    per_run = 1.0 if calls_per_run is None else calls_per_run
    needed = math.ceil(runs * per_run)
    if limits.max_lm_calls is not None and limits.max_lm_calls < needed:
        measured = (
            "1 LM call per run (at least)"
            if calls_per_run is None
            else f"{per_run:.3g} LM calls per run (measured on this run's program runs)"
        )
        raise ConfigError(
            f"max_lm_calls={limits.max_lm_calls} is smaller than one trial: scoring {what} takes "
            f"{runs} program runs at {measured}, {needed} LM calls; give max_lm_calls={needed} or more"
        )
    if limits.max_cost is not None:
        models = sorted({str(lm.model) for lm in lms if lm is not None and hasattr(lm, "model")})
        unpriced = [model for model in models if model not in limits.prices]
        if unpriced:
            raise ConfigError(f"max_cost is set but prices has no entry for model(s) {unpriced}")


async def check_endpoints(lms: Iterable[Any], *, within: float = DEFAULT_PROBE_TIMEOUT) -> None:
    """Probe each distinct endpoint of the HTTP clients among ``lms`` once (others are skipped); see
    :meth:`~aprompt.lm._http.HTTPChatLM.probe`.

    Raises:
        LMConnectionError: an endpoint refused the connection or did not answer ``within`` seconds.
        AuthenticationError: an endpoint answered 401 or 403 (the key is wrong or lacks permission).
    """
    probed: set[str] = set()
    for lm in {id(lm): lm for lm in lms if isinstance(lm, HTTPChatLM)}.values():
        await lm.probe(within=within, skip=probed)
