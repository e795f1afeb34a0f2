"""``optimize_sync``: the blocking convenience wrapper for scripts and notebooks."""

from __future__ import annotations

import asyncio
import sys
from functools import partial
from typing import Any

import anyio

from aprompt._errors import ConfigError
from aprompt.optimize.api import optimize
from aprompt.optimize.result import OptimizeResult


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


def optimize_sync(*args: Any, backend: str = "asyncio", **kwargs: Any) -> OptimizeResult:
    """Run :func:`aprompt.optimize` to completion from synchronous code.

    It starts its own event loop, so it refuses to run inside one (an async app, a running notebook loop):
    there, ``await aprompt.optimize(...)`` instead.

    Example::

        result = aprompt.optimize_sync(program, trainset, metric, lm=lm, budget="light")
    """
    if _inside_event_loop():
        raise ConfigError(
            "optimize_sync() was called inside a running event loop; use `await aprompt.optimize(...)` there"
        )
    return anyio.run(partial(optimize, *args, **kwargs), backend=backend)
