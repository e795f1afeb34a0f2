"""A task group whose library errors reach the caller as themselves, not wrapped in an ExceptionGroup.

When one of several concurrent steps (trials of a batch, proposals for several predictors) raises, its
siblings are cancelled and anyio raises an ``ExceptionGroup``. Callers of :func:`aprompt.optimize`
expect the typed error they can catch (``except aprompt.LMError``), so the first
:class:`~aprompt._errors.APromptError` of the group is raised instead, with the group as its cause (or its
context, when the error has a cause of its own).
Groups holding no library error (a bug, a user callback's exception) propagate unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc

from aprompt._errors import APromptError

__all__ = ["plain_errors_task_group"]


@contextlib.asynccontextmanager
async def plain_errors_task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """``async with plain_errors_task_group() as group:`` — an anyio task group, see the module."""
    try:
        async with anyio.create_task_group() as group:
            yield group
    except BaseExceptionGroup as grouped:
        first = _first_library_error(grouped)
        if first is None:
            raise
        # Its own cause, when it has one, says more than the group (which stays its context).
        raise first from (first.__cause__ or grouped)


def _first_library_error(grouped: BaseExceptionGroup[BaseException]) -> APromptError | None:
    for inner in grouped.exceptions:
        if isinstance(inner, APromptError):
            return inner
        if isinstance(inner, BaseExceptionGroup) and (found := _first_library_error(inner)) is not None:
            return found
    return None
