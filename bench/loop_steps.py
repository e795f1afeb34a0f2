"""Event-loop work per LM call: counts that CPU time hides in its noise.

Runs ``bench.throughput`` (same arguments) with asyncio's loop instrumented for the aprompt runs only,
and prints per answered call: the loop's iterations (each an ``epoll`` and a pass over the ready
callbacks), its waits (iterations that found nothing ready and let the thread sleep: the wake-ups that
cost most when calls are sparse), the callbacks it ran, the task steps among them (a coroutine
resumed), the tasks created, and the run's thread CPU. Iterations and task steps barely depend on the
machine's load, so a change that removes work per call shows in them even when two runs' CPU times
differ by more than it.

    PYTHONPATH=$PWD .venv/bin/python -m bench.loop_steps --systems aprompt --regimes latency \\
        --out-dir /tmp/steps --name steps

``--function-calls`` also counts the Python and C function calls the run makes (``sys.setprofile``):
the closest to a count of work per call there is without hardware counters, at the price of a run
several times slower (its CPU time is then meaningless).

The counts are of the whole run (optimizer, evaluation, program and LM client), divided by the calls
the server answered, as ``bench.throughput`` divides CPU time.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.events
import collections
import selectors
import sys
import time
from collections.abc import Callable
from typing import Any

import bench.throughput as throughput

_counts: collections.Counter[str] = collections.Counter()
_active = [False]
_runs: list[collections.Counter[str]] = []  # each aprompt run's counts, in the order they ran


def _patch() -> None:
    """Wrap the loop's iteration, each callback and task creation with counters (active runs only)."""
    run_once = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
    run_handle = asyncio.events.Handle._run
    create_task = asyncio.base_events.BaseEventLoop.create_task
    select = selectors.EpollSelector.select

    def counted_run_once(self: asyncio.AbstractEventLoop) -> None:
        if _active[0]:
            _counts["iterations"] += 1
        run_once(self)

    def counted_run(self: asyncio.Handle) -> None:
        if _active[0]:
            _counts["callbacks"] += 1
            if isinstance(getattr(self._callback, "__self__", None), asyncio.Task):  # type: ignore[attr-defined]
                _counts["task steps"] += 1
        run_handle(self)

    def counted_create_task(self: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
        if _active[0]:
            _counts["tasks"] += 1
        return create_task(self, *args, **kwargs)  # type: ignore[arg-type]

    def counted_select(self: selectors.EpollSelector, timeout: float | None = None) -> Any:
        if _active[0] and (timeout is None or timeout > 0):
            _counts["waits"] += 1  # the loop had nothing ready: the thread may sleep, then wake
        return select(self, timeout)

    selectors.EpollSelector.select = counted_select  # type: ignore[method-assign]
    asyncio.base_events.BaseEventLoop._run_once = counted_run_once  # type: ignore[attr-defined]
    asyncio.events.Handle._run = counted_run  # type: ignore[method-assign]
    asyncio.base_events.BaseEventLoop.create_task = counted_create_task  # type: ignore[method-assign]


def _count_function_calls(frame: object, event: str, arg: object) -> None:
    if event == "call" or event == "c_call":
        _counts["function calls"] += 1


def _counted(
    run: Callable[..., throughput.Outcome], function_calls: bool
) -> Callable[..., throughput.Outcome]:
    def wrapped(*args: Any, **kwargs: Any) -> throughput.Outcome:
        _counts.clear()
        _active[0] = True
        if function_calls:  # slows the run several-fold: its CPU time then means nothing
            sys.setprofile(_count_function_calls)
        thread_cpu = time.thread_time()
        try:
            return run(*args, **kwargs)
        finally:
            sys.setprofile(None)
            _active[0] = False
            _counts["thread CPU ms"] = round(1000 * (time.thread_time() - thread_cpu))
            _runs.append(collections.Counter(_counts))

    return wrapped


def main() -> None:
    args = sys.argv[1:]
    function_calls = "--function-calls" in args
    _patch()
    throughput.run_aprompt = _counted(throughput.run_aprompt, function_calls)
    results = throughput.main([arg for arg in args if arg != "--function-calls"])
    aprompt_runs = [result for result in results if result.system.startswith("aprompt")]
    for result, counts in zip(aprompt_runs, _runs, strict=True):
        if not result.answered:
            continue
        per_call = ", ".join(
            f"{name} {counts[name] / result.answered:.2f}"
            for name in ("iterations", "waits", "callbacks", "task steps", "tasks", "thread CPU ms")
            + (("function calls",) if function_calls else ())
        )
        print(f"{result.regime} {result.system}: {result.answered} calls; per call: {per_call}")


if __name__ == "__main__":
    main()
