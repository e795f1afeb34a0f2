"""A run cancelled while its limit refuses some of its requests ends as a cancellation.

On trio its steps' task groups then end in a group holding the cancellations and the limit refusals.
Raised on as it was, the caller's cancel scope took the cancellations and left the refusals, an internal
exception, to reach the caller raw (seen once in the resume tests of ``tests/run/test_limits_hold.py``,
when a stop fell as the resumed run reached its limit). On asyncio the group holds the refusals alone:
the run takes them as its limit's stop, and the stop's next await is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from aprompt._optimize.run_stop import cancellation_beside_refusals, limit_reached_in
from aprompt.lm._limit_reached import LimitReached


def _refused() -> LimitReached:
    return LimitReached("max_lm_calls", "run limit reached: max_lm_calls=3 (3 requests sent)")


async def _group_of(scope: anyio.CancelScope, error: Callable[[], BaseException]) -> BaseException:
    """What a task group raises when one task cancels ``scope`` and raises ``error()`` at once (a request
    refused as the stop falls), and another waits."""

    async def refused() -> None:
        scope.cancel()
        raise error()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep_forever)
            group.start_soon(refused)
    except BaseException as exc:
        return exc
    raise AssertionError("the task group raised nothing")


def test_on_trio_a_cancellation_beside_refusals_is_taken_whole_by_the_callers_scope() -> None:
    async def main() -> None:
        with anyio.CancelScope() as scope:
            grouped = await _group_of(scope, _refused)
            assert isinstance(grouped, BaseExceptionGroup) and grouped.subgroup(LimitReached) is not None
            assert limit_reached_in(grouped) is None  # cancelled, not stopped by its limit
            cancellation = cancellation_beside_refusals(grouped)
            assert isinstance(cancellation, anyio.get_cancelled_exc_class())
            raise cancellation from None
        assert scope.cancelled_caught

    anyio.run(main, backend="trio")  # nothing reaches the caller


def test_on_trio_the_group_raised_as_it_was_leaves_the_refusals_to_the_caller() -> None:
    # The defect: the scope takes the cancellations, and the refusals reach the caller.
    async def main() -> None:
        with anyio.CancelScope() as scope:
            raise await _group_of(scope, _refused)

    with pytest.raises(BaseExceptionGroup) as raised:
        anyio.run(main, backend="trio")
    assert raised.group_contains(LimitReached)


def test_on_asyncio_the_group_holds_the_refusals_alone_and_is_the_limits_stop() -> None:
    async def main() -> None:
        with anyio.CancelScope() as scope:
            grouped = await _group_of(scope, _refused)
            assert isinstance(limit_reached_in(grouped), LimitReached)
            assert cancellation_beside_refusals(grouped) is None

    anyio.run(main, backend="asyncio")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_another_error_beside_a_cancellation_is_no_cancellation_to_raise(backend: str) -> None:
    async def main() -> None:
        with anyio.CancelScope() as scope:
            grouped = await _group_of(scope, lambda: ValueError("a user callback's bug"))
            assert cancellation_beside_refusals(grouped) is None
            assert cancellation_beside_refusals(BaseExceptionGroup("", [_refused(), ValueError("x")])) is None
            assert cancellation_beside_refusals(BaseExceptionGroup("", [_refused(), _refused()])) is None
            assert cancellation_beside_refusals(_refused()) is None

    anyio.run(main, backend=backend)
