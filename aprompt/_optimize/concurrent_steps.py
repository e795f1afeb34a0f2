"""Steps run at once, their results recorded one after another in the steps' order.

A race's rung scores its racers, and its last rung fully evaluates the survivors; each step waits for its
slowest answer, so run one after another they make a chain of latencies. Run at once they overlap, while
what the search records (its evidence, the journal's facts, the events, the pick) is recorded in the order
of the steps as before, whatever order they finish in: the run's decisions stay those of one step after
another. Identical LM calls of steps in flight together are sent once (the run's response cache
coalesces them), so running them at once sends what running them in turn would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from aprompt._taskgroups import plain_errors_task_group

__all__ = ["at_once_in_order"]

T = TypeVar("T")


async def at_once_in_order(
    steps: Sequence[Callable[[], Awaitable[T]]], record: Callable[[T], Awaitable[None]]
) -> list[T]:
    """Start every step at once and ``record`` each result as soon as those before it are recorded;
    returns the results in the steps' order.

    When a step (or ``record``) raises, the steps still running are cancelled and the error propagates:
    what was recorded is then a prefix of the steps, as when they run one after another.
    """
    if len(steps) == 1:  # nothing to overlap
        only = await steps[0]()
        await record(only)
        return [only]
    results: dict[int, T] = {}
    finished = [anyio.Event() for _ in steps]

    async def run(index: int) -> None:
        results[index] = await steps[index]()
        finished[index].set()

    async with plain_errors_task_group() as group:
        for index in range(len(steps)):
            group.start_soon(run, index)
        for index in range(len(steps)):
            await finished[index].wait()
            await record(results[index])
    return [results[index] for index in range(len(steps))]
