"""Where an optimization's client CPU goes that a profile hides: the cyclic garbage collector and the
compiling of regular expressions, inside each aprompt run of ``bench.throughput`` (same arguments).

A sampling profile charges a collection to whatever allocation set it off, and a compile to the first
caller of the pattern; here both are timed apart, over the same window ``bench.throughput`` divides by
its calls (the optimization's ``anyio.run``), and printed with the calls the server answered:

    PYTHONPATH=$PWD .venv/bin/python -m bench.cpu_breakdown --systems aprompt --regimes latency \\
        --out-dir /tmp/cpu --name cpu

Per collection generation: how many, their CPU ms and the objects they freed. Compiles: how many and
their CPU ms, by the aprompt line that asked for each.
"""

from __future__ import annotations

import collections
import gc
import re._compiler
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
    gc.callbacks.append(_on_collection)

    def undo() -> None:
        re._compiler.compile = compile_pattern  # type: ignore[assignment]
        anyio.run = run  # type: ignore[assignment]
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
