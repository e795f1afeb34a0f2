"""The bootstrap's program runs, shared between the demo sets built at once.

Runs are shared between sets: an example already run (same teacher, rollout and parameters) is not run
again, so later sets cost only the examples no earlier set needed. The sets are built at once, each walking
its own order: a set waits for an example another set is running instead of running it again. A set's
demos depend only on its order and on the examples' results, so they are those of one set after another.
A set reads its results in order as they come (:func:`collect_passing`): it is built once the examples
read give its demos, and starts its next wave once the wave cannot give them, so neither waits for the
slowest answer of a wave it does not need; its waves, and so the runs, are those of waves that each wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Sequence

import anyio
import anyio.abc

from aprompt._optimize.evaluate import ExampleResult
from aprompt._optimize.examples import Example
from aprompt._optimize.labeled_demos import example_label


def first_wave(want: int) -> int:
    """How many examples a set runs at first to find ``want`` passing runs: twice as many, at least 4
    (none for none)."""
    return max(want * 2, 4) if want > 0 else 0


class SharedRuns:
    """The program runs of every set, by (example id, rollout): done, or in flight for one set while
    others wait for them (started in ``group``)."""

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        self._done: dict[tuple[str, int], ExampleResult] = {}
        self._running: set[tuple[str, int]] = set()
        self._started: list[tuple[str, int]] = []  # in the order the runs were started
        self._changed = anyio.Event()

    def start(
        self,
        examples: Sequence[Example],
        rollout: int,
        run: Callable[[Example], Awaitable[ExampleResult]],
    ) -> None:
        """Start ``run`` on each of ``examples`` neither done nor running with this rollout."""
        for example in examples:
            key = (example.id, rollout)
            if key not in self._done and key not in self._running:
                self._running.add(key)
                self._started.append(key)
                self._group.start_soon(self._run, key, run, example)

    async def _run(
        self, key: tuple[str, int], run: Callable[[Example], Awaitable[ExampleResult]], example: Example
    ) -> None:
        result = await run(example)
        self._done[key] = result
        self._running.discard(key)
        self._changed.set()  # the sets waiting read what is in
        self._changed = anyio.Event()

    def get(self, key: tuple[str, int]) -> ExampleResult | None:
        """The run's result, ``None`` while it is in flight."""
        return self._done.get(key)

    async def changed(self) -> None:
        """Wait until another run ends."""
        await self._changed.wait()

    def in_order(self) -> dict[tuple[str, int], ExampleResult]:
        """Every run done, in the order they were started."""
        return {key: self._done[key] for key in self._started if key in self._done}


async def collect_passing(
    order: Sequence[Example],
    runs: SharedRuns,
    run: Callable[[Example], Awaitable[ExampleResult]],
    *,
    rollout: int,
    want: int,
    quota: int,
    threshold: float,
    label_of: Callable[[Example], Hashable] = example_label,
) -> list[ExampleResult]:
    """Walk ``order`` in waves until ``want`` passing runs with labels (``label_of``) within ``quota``
    are found (or it ends; then passing runs over the quota fill up).

    The results are read in ``order`` as they come, not wave by wave: the set is built as soon as the
    examples read give ``want`` passing runs, and the next wave starts as soon as the waves started
    cannot give them whatever their runs still in flight return (every example not read yet counted
    as passing). So the waves, the runs and the demos are those of waves that each wait for their
    slowest run, without the wait.
    """
    passing: list[ExampleResult] = []
    spare: list[ExampleResult] = []
    counts: Counter[Hashable] = Counter()
    wave = first_wave(want)
    started = read = 0

    def usable(result: ExampleResult) -> bool:
        return result.score is not None and result.score >= threshold and bool(result.trace)

    def may_pass(example: Example) -> bool:
        result = runs.get((example.id, rollout))
        return result is None or usable(result)

    while len(passing) < want and read < len(order):
        while read < started and (result := runs.get((order[read].id, rollout))) is not None:
            label = label_of(order[read])
            read += 1
            if not usable(result):
                continue
            if counts[label] >= quota:
                spare.append(result)
                continue
            counts[label] += 1
            passing.append(result)
            if len(passing) >= want:
                return passing
        if started < len(order) and len(passing) + sum(map(may_pass, order[read:started])) < want:
            runs.start(order[started : started + wave], rollout, run)
            started = min(len(order), started + wave)
            continue
        if read < len(order):
            await runs.changed()
    return passing + spare[: max(0, want - len(passing))]
