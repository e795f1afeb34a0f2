"""Slots: a counting limiter whose free slot is taken without a trip through the event loop.

:class:`anyio.CapacityLimiter` yields to the event loop on every acquire, free slot or not (anyio's
rule that every ``await`` is a checkpoint). An LM call takes two such limiters (the run's program runs and
the client's requests in flight), and each yield resumes the call's whole chain of coroutines: ~12 µs of
CPU per acquire on the hot path of every call. :class:`Slots` takes a free slot synchronously and waits
(first come, first served) only when none is free, which is what the limit needs.
"""

from __future__ import annotations

import collections
from types import TracebackType

import anyio

__all__ = ["Limiter", "Slots"]


class Slots:
    """At most ``total`` holders at once (``async with slots:``); waiters are served in arrival order.

    ``total`` may change while slots are held: a larger total lets waiters in at once, a smaller one
    takes effect as holders leave.

    Example::

        slots = Slots(8)
        async with slots:
            ...  # at most 8 tasks here at once
    """

    __slots__ = ("_borrowed", "_total", "_waiters")

    def __init__(self, total: int) -> None:
        self._total = _checked(total)
        self._borrowed = 0
        self._waiters: collections.deque[anyio.Event] = collections.deque()

    @property
    def total_tokens(self) -> int:
        """The most holders at once (named as :class:`anyio.CapacityLimiter` names it)."""
        return self._total

    @total_tokens.setter
    def total_tokens(self, total: int) -> None:
        self._total = _checked(total)
        while self._waiters and self._borrowed < self._total:
            self._borrowed += 1
            self._waiters.popleft().set()

    @property
    def borrowed_tokens(self) -> int:
        """Slots held now."""
        return self._borrowed

    @property
    def available_tokens(self) -> int:
        """Slots free now (0 when a lowered total is still above the holders)."""
        return max(0, self._total - self._borrowed)

    def acquire_nowait(self) -> None:
        """Take a free slot, or raise :class:`anyio.WouldBlock` when none is free or others wait."""
        if self._borrowed >= self._total or self._waiters:
            raise anyio.WouldBlock
        self._borrowed += 1

    async def acquire(self) -> None:
        """Take a slot: at once when one is free and nobody waits, else in turn."""
        if self._borrowed < self._total and not self._waiters:
            self._borrowed += 1
            return
        granted = anyio.Event()
        self._waiters.append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():  # handed a slot as the wait was cancelled: pass it on
                self.release()
            else:
                self._waiters.remove(granted)
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter when the total allows, else to the pool."""
        if self._borrowed <= 0:
            raise RuntimeError("release() without a slot held")
        if self._waiters and self._borrowed <= self._total:
            self._waiters.popleft().set()  # the slot passes on: the count of holders is unchanged
        else:
            self._borrowed -= 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Slots(total={self._total}, held={self._borrowed}, waiting={len(self._waiters)})"


#: What bounds concurrent work: ours, or a caller's own :class:`anyio.CapacityLimiter`.
Limiter = anyio.CapacityLimiter | Slots


def _checked(total: int) -> int:
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"a slot total must be an integer of at least 1, not {total!r}")
    return total
