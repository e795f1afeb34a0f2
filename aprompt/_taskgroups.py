"""A task group whose library errors reach the caller as themselves, not wrapped in an ExceptionGroup.

When one of several concurrent steps (trials of a batch, proposals for several predictors) raises, its
siblings are cancelled and anyio raises an ``ExceptionGroup``. Callers of :func:`aprompt.optimize`
expect the typed error they can catch (``except aprompt.LMError``), so the first
:class:`~aprompt._errors.APromptError` of the group is raised instead, with the group as its cause (or its
context, when the error has a cause of its own).
Groups holding no library error (a bug, a user callback's exception) propagate unchanged.

:func:`run_each` is the same for a plain fan-out (one call per item, nothing else to wait on), which an
evaluation makes for every example: on asyncio it runs each call in a native task inside an anyio cancel
scope of its own, at a third of an anyio task's cost (its handle, events and scopes are ~30 µs a task,
a few percent of the client's CPU per LM call).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any

import anyio
import anyio.abc

from aprompt._errors import APromptError

__all__ = ["plain_errors_task_group", "run_each"]


@contextlib.asynccontextmanager
async def plain_errors_task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """``async with plain_errors_task_group() as group:`` — an anyio task group, see the module."""
    try:
        async with anyio.create_task_group() as group:
            yield group
    except BaseExceptionGroup as grouped:
        _raise_library_error(grouped)
        raise


def _raise_library_error(grouped: BaseExceptionGroup[BaseException]) -> None:
    """Raise the group's first library error, if it holds one."""
    first = _first_library_error(grouped)
    if first is not None:
        # Its own cause, when it has one, says more than the group (which stays its context).
        raise first from (first.__cause__ or grouped)


async def run_each(
    call: Callable[..., Coroutine[Any, Any, None]], arguments: Iterable[tuple[Any, ...]]
) -> None:
    """``call(*args)`` for every tuple of ``arguments``, all at once, and wait for them all: as each in a
    :func:`plain_errors_task_group`, in the same order. When one raises, the others are cancelled and its
    error propagates (a library error as itself); when the caller is cancelled, so are they all, and the
    cancellation propagates once they have ended. Shielded scopes inside the calls hold, as in a task
    group: each call is cancelled through an anyio cancel scope of its own."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio
        loop = None
    if loop is None:
        async with plain_errors_task_group() as group:
            for args in arguments:
                group.start_soon(call, *args)
        return
    await _NativeFanOut(loop).run(call, arguments)


class _NativeFanOut:
    """:func:`run_each` on asyncio: native tasks, each in an anyio cancel scope made before it starts (a
    call cancelled before its first step starts cancelled)."""

    __slots__ = ("_cancelled", "_failures", "_left", "_loop", "_scopes", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._scopes: list[anyio.CancelScope] = []
        self._failures: list[BaseException] = []
        self._cancelled = False  # a task was cancelled from outside its scope (the loop shutting down)
        self._left = 0
        self._waiter: asyncio.Future[None] | None = None

    async def run(
        self, call: Callable[..., Coroutine[Any, Any, None]], arguments: Iterable[tuple[Any, ...]]
    ) -> None:
        create_task, finished = self._loop.create_task, self._finished
        for args in arguments:
            scope = anyio.CancelScope()
            self._scopes.append(scope)
            self._left += 1
            create_task(_in_scope(scope, call, args)).add_done_callback(finished)
        cancellation: BaseException | None = None
        while self._left:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            except asyncio.CancelledError as exc:
                # Raised as caught once every call has ended: the scope that cancelled knows it as its own.
                if cancellation is None:
                    cancellation = exc
                self._cancel_all()
        if self._failures:
            try:
                raise BaseExceptionGroup("unhandled errors in a task group", self._failures)
            except BaseExceptionGroup as grouped:  # raised in here, the group is the context, as above
                _raise_library_error(grouped)
                raise
        if cancellation is not None:
            raise cancellation
        if self._cancelled:
            raise asyncio.CancelledError("a call was cancelled from outside its task group")

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._left -= 1
        if task.cancelled():
            self._cancelled = True
            self._cancel_all()
        elif (error := task.exception()) is not None:
            if not self._failures:
                self._cancel_all()
            self._failures.append(error)
        if not self._left and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _cancel_all(self) -> None:
        for scope in self._scopes:
            scope.cancel()


async def _in_scope(
    scope: anyio.CancelScope, call: Callable[..., Coroutine[Any, Any, None]], args: tuple[Any, ...]
) -> None:
    with scope:
        await call(*args)


def _first_library_error(grouped: BaseExceptionGroup[BaseException]) -> APromptError | None:
    for inner in grouped.exceptions:
        if isinstance(inner, APromptError):
            return inner
        if isinstance(inner, BaseExceptionGroup) and (found := _first_library_error(inner)) is not None:
            return found
    return None
