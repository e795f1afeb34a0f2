"""Steps run at once, recorded in their order (aprompt/_optimize/concurrent_steps.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from aprompt._errors import LMError
from aprompt._optimize.concurrent_steps import at_once_in_order

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def after(
    gate: anyio.Event | None, value: int, started: list[int], done: anyio.Event | None = None
) -> Callable[[], Awaitable[int]]:
    """A step that notes its start, waits for ``gate`` (if any), sets ``done`` (if any), returns ``value``."""

    async def step() -> int:
        started.append(value)
        if gate is not None:
            await gate.wait()
        if done is not None:
            done.set()
        return value

    return step


async def test_every_step_starts_before_any_ends_and_the_records_keep_the_steps_order() -> None:
    started: list[int] = []
    recorded: list[tuple[int, list[int]]] = []
    # Step 0 ends last: it waits for step 2, which waits for step 1, which ends at once.
    one_done, two_done = anyio.Event(), anyio.Event()
    steps: list[Callable[[], Awaitable[int]]] = [
        after(two_done, 0, started),
        after(None, 1, started, one_done),
        after(one_done, 2, started, two_done),
    ]

    async def record(value: int) -> None:
        recorded.append((value, sorted(started)))

    with anyio.fail_after(5):
        results = await at_once_in_order(steps, record)
    assert results == [0, 1, 2]
    assert [value for value, _ in recorded] == [0, 1, 2]
    # Step 0 could only end once the others had run: they all ran at once.
    assert recorded[0][1] == [0, 1, 2]


async def test_a_failing_step_leaves_a_prefix_of_the_steps_recorded() -> None:
    started: list[int] = []
    recorded: list[int] = []
    never = anyio.Event()
    fails_after_first = anyio.Event()

    async def first() -> int:
        fails_after_first.set()
        return 0

    async def failing() -> int:
        await fails_after_first.wait()
        await anyio.sleep(0.01)  # the first one is recorded meanwhile
        raise LMError("the LM failed")

    async def record(value: int) -> None:
        recorded.append(value)

    steps: list[Callable[[], Awaitable[int]]] = [first, failing, after(never, 2, started)]
    with anyio.fail_after(5), pytest.raises(LMError, match="the LM failed"):
        await at_once_in_order(steps, record)
    assert recorded == [0]  # the third step was cancelled, never recorded
    assert started == [2]
