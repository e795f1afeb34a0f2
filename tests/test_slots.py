"""Slots: the limit holds, waiters go in order, a free slot is taken without yielding, and a
cancelled waiter neither keeps nor loses a slot."""

from __future__ import annotations

import anyio
import pytest

from aprompt._slots import Slots

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_free_slot_is_taken_without_letting_another_task_run() -> None:
    slots = Slots(2)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        await slots.acquire()
        assert ran == []  # acquire did not yield: the task started before it has not run yet
        slots.release()
    assert ran == ["other"]


async def test_never_more_holders_than_the_total_and_waiters_go_in_arrival_order() -> None:
    slots = Slots(2)
    holding, most = 0, 0
    order: list[int] = []

    async def work(number: int) -> None:
        nonlocal holding, most
        async with slots:
            order.append(number)
            holding += 1
            most = max(most, holding)
            await anyio.sleep(0.01)
            holding -= 1

    async with anyio.create_task_group() as group:
        for number in range(7):
            group.start_soon(work, number)
            await anyio.sleep(0.005)  # each task reaches the slots before the next starts
    assert most == 2
    assert order == list(range(7))
    assert slots.borrowed_tokens == 0
    assert slots.available_tokens == 2


async def test_a_larger_total_lets_waiters_in_at_once_and_a_smaller_one_binds_as_holders_leave() -> None:
    slots = Slots(1)
    await slots.acquire()
    entered = anyio.Event()

    async def waiter() -> None:
        async with slots:
            entered.set()
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.sleep(0.01)
        assert not entered.is_set()
        slots.total_tokens = 2
        with anyio.fail_after(1):
            await entered.wait()
        assert slots.borrowed_tokens == 2
        slots.total_tokens = 1
        assert slots.available_tokens == 0
        slots.release()  # the first holder leaves: still at the total, nobody else may enter
        assert slots.borrowed_tokens == 1
        assert slots.available_tokens == 0
    assert slots.borrowed_tokens == 0
    assert slots.available_tokens == 1


async def test_a_waiter_cancelled_before_its_turn_leaves_the_queue() -> None:
    slots = Slots(1)
    await slots.acquire()
    with anyio.move_on_after(0.01):
        await slots.acquire()
    assert repr(slots) == "Slots(total=1, held=1, waiting=0)"
    slots.release()
    await slots.acquire()  # the free slot is there, nobody ahead
    slots.release()


async def test_a_slot_handed_to_a_cancelled_waiter_goes_to_the_next() -> None:
    slots = Slots(1)
    await slots.acquire()
    got: list[str] = []
    cancelled_wait = anyio.CancelScope()

    async def first() -> None:
        with cancelled_wait:
            await slots.acquire()
            got.append("first")
            slots.release()

    async def second() -> None:
        async with slots:
            got.append("second")

    with anyio.fail_after(2):  # a slot lost with the cancelled waiter would keep "second" waiting
        async with anyio.create_task_group() as group:
            group.start_soon(first)
            await anyio.sleep(0.01)
            group.start_soon(second)
            await anyio.sleep(0.01)
            # "first" is cancelled, and handed the slot before it resumes to see that: it must pass it on.
            cancelled_wait.cancel()
            slots.release()
    assert got == ["second"]
    assert slots.borrowed_tokens == 0


def test_a_total_below_one_or_not_an_integer_is_refused() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="at least 1"):
            Slots(bad)  # type: ignore[arg-type]


async def test_acquire_nowait_takes_a_free_slot_or_would_block() -> None:
    slots = Slots(1)
    slots.acquire_nowait()
    with pytest.raises(anyio.WouldBlock):
        slots.acquire_nowait()
    slots.release()
    slots.acquire_nowait()
    assert slots.available_tokens == 0


async def test_releasing_a_slot_not_held_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="without a slot held"):
        Slots(1).release()
