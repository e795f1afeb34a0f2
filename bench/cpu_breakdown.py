"""Where an optimization's client CPU goes that a profile hides: the cyclic garbage collector, the
compiling of regular expressions and the event loop's sleeps, inside each aprompt run of
``bench.throughput`` (same arguments).

A sampling profile charges a collection to whatever allocation set it off, and a compile to the first
caller of the pattern; here both are timed apart, over the same window ``bench.throughput`` divides by
its calls (the optimization's ``anyio.run``), and printed with the calls the server answered:

    PYTHONPATH=$PWD .venv/bin/python -m bench.cpu_breakdown --systems aprompt --regimes latency \\
        --out-dir /tmp/cpu --name cpu

Per collection generation: how many, their CPU ms and the objects they freed. Compiles: how many and
their CPU ms, by the aprompt line that asked for each. Sleeps: how often the loop's selector blocked
for over 1 ms, for how long on average, how many of those woke to nothing ready (a timer's wake), and
how many per answered call. On this machine a wake after a long sleep costs CPU of its own (cold caches,
the scheduler: ``bench/results/throughput.md``'s control), so where calls are spaced out the same work
costs more per call; the count says how much of a regime's CPU that can explain.
"""

from __future__ import annotations

import collections
import gc
import re._compiler
import selectors
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import anyio

import bench.throughput as throughput

_active = [False]
_collections: dict[int, list[float]] = {0: [0, 0.0, 0], 1: [0, 0.0, 0], 2: [0, 0.0, 0]}
_collection_started = [0.0]
_compiles: collections.Counter[str] = collections.Counter()
_compile_ms: collections.Counter[str] = collections.Counter()
#: A selector call that blocked for longer than this slept: the process gave up the CPU.
SLEEP_MIN_S = 0.001
#: Over the current run: sleeps, seconds asleep, sleeps that woke to nothing ready (a timer).
_sleeps: list[float] = [0, 0.0, 0]
#: The last run's sleeps, for the per-call figure printed after ``bench.throughput``'s line.
_last_sleeps = [0.0]


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if not _active[0]:
        return
    if phase == "start":
        _collection_started[0] = time.process_time()
        return
    found = _collections[info["generation"]]
    found[0] += 1
    found[1] += (time.process_time() - _collection_started[0]) * 1000
    found[2] += info["collected"]


def _patch() -> Callable[[], None]:
    """Instrument the process; returns what undoes it."""
    compile_pattern = re._compiler.compile
    run = anyio.run
    select = selectors.DefaultSelector.select
    report = throughput.report

    def counted_select(self: Any, timeout: float | None = None) -> Any:
        if not _active[0] or (timeout is not None and timeout <= 0):
            return select(self, timeout)
        started = time.monotonic()
        ready = select(self, timeout)
        slept = time.monotonic() - started
        if slept > SLEEP_MIN_S:
            _sleeps[0] += 1
            _sleeps[1] += slept
            _sleeps[2] += not ready
        return ready

    def report_per_call(results: list[throughput.Measurement], m: throughput.Measurement) -> None:
        report(results, m)
        if m.system.startswith("aprompt") and m.answered:
            print(f"  event-loop sleeps per answered call: {_last_sleeps[0] / m.answered:.2f}", flush=True)

    def counted_compile(pattern: Any, flags: int = 0) -> Any:
        if not _active[0]:
            return compile_pattern(pattern, flags)
        started = time.process_time()
        compiled = compile_pattern(pattern, flags)
        ours = [f for f in traceback.extract_stack()[:-1] if "/aprompt/" in f.filename]
        where = f"{ours[-1].filename.rsplit('/aprompt/', 1)[-1]}:{ours[-1].name}" if ours else "elsewhere"
        _compiles[where] += 1
        _compile_ms[where] += (time.process_time() - started) * 1000
        return compiled

    def measured_run(function: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(function, "__name__", "") != "run":  # not an optimization: anyio's warm-up
            return run(function, *args, **kwargs)
        _active[0] = True
        started = time.process_time()
        try:
            return run(function, *args, **kwargs)
        finally:
            _active[0] = False
            _report((time.process_time() - started) * 1000)

    re._compiler.compile = counted_compile  # type: ignore[assignment]
    anyio.run = measured_run  # type: ignore[assignment]
    selectors.DefaultSelector.select = counted_select  # type: ignore[method-assign]
    throughput.report = report_per_call
    gc.callbacks.append(_on_collection)

    def undo() -> None:
        re._compiler.compile = compile_pattern  # type: ignore[assignment]
        anyio.run = run  # type: ignore[assignment]
        selectors.DefaultSelector.select = select  # type: ignore[method-assign]
        throughput.report = report
        gc.callbacks.remove(_on_collection)

    return undo


def _report(window_ms: float) -> None:
    print(f"\nCPU of the optimization: {window_ms:.0f} ms", flush=True)
    for generation, (count, ms, freed) in _collections.items():
        share = 100 * ms / window_ms
        print(f"  collections, generation {generation}: {count:.0f}, {ms:.1f} ms ({share:.1f} %), ", end="")
        print(f"{freed:.0f} objects freed")
    total = sum(_compile_ms.values())
    share = 100 * total / window_ms
    print(f"  regular expressions compiled: {sum(_compiles.values())}, {total:.1f} ms ({share:.1f} %)")
    for where, ms in _compile_ms.most_common(8):
        print(f"    {_compiles[where]:4d} {ms:6.1f} ms  {where}")
    sleeps, asleep, timer_wakes = _sleeps
    mean_ms = 1000 * asleep / sleeps if sleeps else 0.0
    print(f"  event-loop sleeps over 1 ms: {sleeps:.0f}, {mean_ms:.1f} ms on average, ", end="")
    print(f"{timer_wakes:.0f} woke to nothing ready (timers)")
    _last_sleeps[0] = sleeps
    _sleeps[:] = [0, 0.0, 0]
    for found in _collections.values():
        found[:] = [0, 0.0, 0]
    _compiles.clear()
    _compile_ms.clear()


def main(argv: list[str] | None = None) -> None:
    undo = _patch()
    try:
        throughput.main(argv)
    finally:
        undo()


if __name__ == "__main__":
    main(sys.argv[1:])
