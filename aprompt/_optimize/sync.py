"""``optimize_sync``: the blocking convenience wrapper for scripts (a notebook runs its cells in a loop)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import anyio

from aprompt._errors import ConfigError
from aprompt._optimize.api import optimize
from aprompt._optimize.arguments import resolve_limits
from aprompt._optimize.budget import Budget
from aprompt._optimize.evaluate import Metric
from aprompt._optimize.events import EventCallback
from aprompt._optimize.examples import Example
from aprompt._optimize.outage import DEFAULT_OUTAGE_TOLERANCE
from aprompt._optimize.propose import Grounding
from aprompt._optimize.result import OptimizeResult, P
from aprompt._optimize.strategies import Strategy
from aprompt.executors.base import Executor
from aprompt.lm._http import HTTPChatLM
from aprompt.lm.types import LM
from aprompt.program.context import current_lm
from aprompt.program.discovery import named_predictors
from aprompt.run._limits import Limits

__all__ = ["optimize_sync"]

#: The event loops optimize_sync can start.
BACKENDS = ("asyncio", "trio")


def _inside_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
            return True
        except RuntimeError:
            pass
    return False


def optimize_sync(
    program: P,
    trainset: Sequence[Example | Mapping[str, Any]],
    metric: Metric,
    *,
    lm: LM | None = None,
    proposer_lm: LM | None = None,
    teacher_lm: LM | None = None,
    valset: Sequence[Example | Mapping[str, Any]] | None = None,
    strategy: str | Strategy = "mipro",
    budget: str | Budget | Mapping[str, Any] = "light",
    seed: int = 0,
    input_fields: Sequence[str] | None = None,
    grounding: Grounding | None = None,
    concurrency: int = 256,
    bootstrap_threshold: float = 1.0,
    in_place: bool = False,
    on_event: EventCallback | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    limits: Limits | None = None,
    max_lm_calls: int | None = None,
    max_tokens: int | None = None,
    max_cost: float | None = None,
    max_time: float | None = None,
    prices: Mapping[str, tuple[float, float]] | None = None,
    outage_tolerance: float = DEFAULT_OUTAGE_TOLERANCE,
    executor: Executor | None = None,
    backend: str = "asyncio",
) -> OptimizeResult[P]:
    """Run :func:`aprompt.optimize` (same arguments) to completion from synchronous code.

    It starts its own event loop (``backend``: ``"asyncio"`` or ``"trio"``), so it refuses to run inside
    one (an async app, a Jupyter notebook, whose kernel runs every cell in its loop): there,
    ``await aprompt.optimize(...)`` instead (a notebook cell takes ``await`` at its top level).

    Raises:
        ConfigError: called inside a running event loop, or ``backend`` is neither; and whatever
            :func:`aprompt.optimize` raises.

    Example::

        result = aprompt.optimize_sync(program, trainset, metric, lm=lm, budget="light")
    """
    run_limits = resolve_limits(
        limits,
        {
            "max_lm_calls": max_lm_calls,
            "max_tokens": max_tokens,
            "max_cost": max_cost,
            "max_time": max_time,
            "prices": prices,
        },
        function="optimize_sync",
        stacklevel=2,
    )
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        # Else anyio's LookupError ("No such backend") once called, which names no remedy.
        raise ConfigError(
            "backend='trio' needs the trio package: `pip install trio`, or use backend='asyncio'"
        )
    if _inside_event_loop():
        raise ConfigError(
            "optimize_sync() was called inside a running event loop; use `await aprompt.optimize(...)` there"
        )
    run = partial(
        optimize,
        program,
        trainset,
        metric,
        lm=lm,
        proposer_lm=proposer_lm,
        teacher_lm=teacher_lm,
        valset=valset,
        strategy=strategy,
        budget=budget,
        seed=seed,
        input_fields=input_fields,
        grounding=grounding,
        concurrency=concurrency,
        bootstrap_threshold=bootstrap_threshold,
        in_place=in_place,
        on_event=on_event,
        run_dir=run_dir,
        resume=resume,
        limits=run_limits,
        outage_tolerance=outage_tolerance,
        executor=executor,
    )

    async def run_on_own_loop() -> OptimizeResult[P]:
        try:
            return await run()
        finally:
            # Their connections belong to this loop, which ends here: reused by a later call on another
            # loop (a second optimize_sync), they would never answer.
            for client in _clients(program, lm, proposer_lm, teacher_lm):
                await client._release_connections()

    return anyio.run(run_on_own_loop, backend=backend)


def _clients(program: object, *lms: LM | None) -> list[HTTPChatLM]:
    """aprompt's HTTP clients a run of ``program`` may call: those given, the default and the
    predictors' own."""
    found = [*lms, current_lm()]
    try:
        found.extend(predictor.lm for _, predictor in named_predictors(program))
    except Exception:  # not a program: the run raised about it already
        pass
    return list({id(lm): lm for lm in found if isinstance(lm, HTTPChatLM)}.values())
