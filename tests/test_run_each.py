"""run_each, the evaluation's fan-out: every call runs at once, in the order given; one failure cancels the
rest and reaches the caller (a library error as itself); a cancelled caller cancels every call, shielded
sections included only where unshielded, and its cancellation propagates once all have ended. The same on
asyncio (native tasks) and trio (an anyio task group)."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from aprompt._errors import ConfigError
from aprompt._taskgroups import run_each

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_every_call_runs_at_once_and_starts_in_the_order_given(anyio_backend: str) -> None:
    started: list[int] = []
    all_started = anyio.Event()

    async def call(index: int, total: int) -> None:
        started.append(index)
        if len(started) == total:
            all_started.set()
        await all_started.wait()  # none ends before every one has started: they run at once

    with anyio.fail_after(5):
        await run_each(call, [(index, 20) for index in range(20)])
    # trio's scheduler starts tasks in an order of its own (its task groups too); asyncio's, as spawned.
    assert started == list(range(20)) if anyio_backend == "asyncio" else sorted(started) == list(range(20))


async def test_nothing_to_run_returns_at_once() -> None:
    async def call() -> None:
        raise AssertionError("never called")

    await run_each(call, [])


async def test_a_library_error_cancels_the_others_and_reaches_the_caller_as_itself() -> None:
    cancelled: list[int] = []

    async def call(index: int) -> None:
        if index == 3:
            await anyio.sleep(0.01)
            raise ConfigError("bad metric value")
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(index)
            raise

    with anyio.fail_after(5), pytest.raises(ConfigError, match="bad metric value"):
        await run_each(call, [(index,) for index in range(6)])
    assert sorted(cancelled) == [0, 1, 2, 4, 5]


async def test_another_error_reaches_the_caller_in_a_group() -> None:
    async def call(index: int) -> None:
        if index == 1:
            raise KeyError("a bug")
        await anyio.sleep(30)

    with anyio.fail_after(5), pytest.raises(BaseExceptionGroup) as caught:
        await run_each(call, [(index,) for index in range(3)])
    assert [type(error) for error in caught.value.exceptions] == [KeyError]


async def test_a_cancelled_caller_cancels_every_call_and_propagates_once_they_have_ended() -> None:
    ended: list[str] = []
    running = anyio.Event()

    async def call(index: int) -> None:
        try:
            running.set()
            await anyio.sleep(30)
        finally:
            # A shielded clean-up (a journal's write) runs to its end though the call is cancelled.
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)
            ended.append(f"call {index}")

    async def outer() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:

                async def stop() -> None:
                    await running.wait()
                    await anyio.sleep(0.01)
                    scope.cancel()

                group.start_soon(stop)
                await run_each(call, [(index,) for index in range(4)])
                ended.append("after run_each")  # never: the cancellation propagates
        assert scope.cancelled_caught
        ended.append("caller")

    with anyio.fail_after(5):
        await outer()
    assert sorted(ended[:4]) == ["call 0", "call 1", "call 2", "call 3"]
    assert ended[4:] == ["caller"]


async def test_a_deadline_around_the_fan_out_ends_it() -> None:
    async def call(index: int) -> None:
        await anyio.sleep(30)

    with anyio.fail_after(5):
        with anyio.move_on_after(0.05) as deadline:
            await run_each(call, [(index,) for index in range(3)])
    assert deadline.cancelled_caught


async def test_calls_of_an_already_cancelled_caller_end_at_their_first_checkpoint() -> None:
    began: list[int] = []
    went_on: list[int] = []

    async def call(index: int) -> None:
        began.append(index)
        await anyio.lowlevel.checkpoint()
        went_on.append(index)

    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await run_each(call, [(index,) for index in range(3)])
    assert scope.cancelled_caught
    assert went_on == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_call_that_ends_in_a_cancellation_of_its_own_is_not_dropped_without_a_word() -> None:
    # Only on asyncio: an awaited future cancelled elsewhere raises CancelledError out of the call. The
    # evaluation's programs never let one out (it is scored as their error), so this is a last resort:
    # the caller sees a cancellation, not a fan-out that ended as if the call had finished.
    async def call(index: int) -> None:
        if index == 0:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        await anyio.sleep(0.01)

    with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
        await run_each(call, [(index,) for index in range(2)])
