"""``async with aprompt.optimize_events(...) as events``: a run whose progress events are read as a stream.

The run goes on in a task group of the ``async with`` block, so it cannot outlive the block: leaving it
early (``break``, an exception) cancels the run cleanly on any backend, and the run's error reaches the
reader as itself, never wrapped in an ``ExceptionGroup``. Same shape as httpx's ``client.stream()``.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from aprompt._errors import ConfigError
from aprompt._optimize.api import optimize
from aprompt._optimize.arguments import resolve_limits
from aprompt._optimize.budget import Budget
from aprompt._optimize.evaluate import Metric
from aprompt._optimize.events import Event
from aprompt._optimize.examples import Example
from aprompt._optimize.outage import DEFAULT_OUTAGE_TOLERANCE
from aprompt._optimize.propose import Grounding
from aprompt._optimize.result import OptimizeResult, P
from aprompt._optimize.strategies import Strategy
from aprompt.executors.base import Executor
from aprompt.lm.types import LM
from aprompt.run._limits import Limits

__all__ = ["EventStream", "optimize_events"]


class EventStream(Generic[P]):
    """The events of a run started by :func:`optimize_events`, then its :attr:`result`.

    Iterate it (once) inside the ``async with`` block; the iteration ends when the run does, and raises
    the run's error, if any, as itself (a :class:`ConfigError` when iterated after the block).
    """

    def __init__(self, receive: MemoryObjectReceiveStream[Event]) -> None:
        self._receive = receive
        self._result: OptimizeResult[P] | None = None
        self._error: Exception | None = None
        self._error_raised = False

    def __aiter__(self) -> AsyncIterator[Event]:
        # An iterator, not an async generator: one left by `break` is simply dropped, where trio warns
        # of every async generator collected unfinished.
        return _Events(self)

    @property
    def result(self) -> OptimizeResult[P]:
        """The run's :class:`OptimizeResult`, once every event was read.

        Raises:
            ConfigError: the run has not finished (the events were not read to the end, or the block was
                left early, which stops the run).
        """
        if self._result is None:
            raise ConfigError(
                "the run has not finished: read every event (`async for event in events`) before "
                "events.result; leaving the `async with` block early stops the run"
            )
        return self._result


class _Events(AsyncIterator[Event]):
    """One iteration of an :class:`EventStream`: its events, then the run's error, if any."""

    def __init__(self, stream: EventStream[Any]) -> None:
        self._stream = stream
        self._ended = False

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        stream = self._stream
        try:
            return await stream._receive.receive()
        except anyio.ClosedResourceError:
            raise ConfigError(
                "read the events of optimize_events() inside its `async with` block: leaving it stops a "
                "run still going, and a finished run's result is in events.result"
            ) from None
        except anyio.EndOfStream:
            self._ended = True
        if stream._error is not None:
            stream._error_raised = True
            raise stream._error
        raise StopAsyncIteration


@asynccontextmanager
async def optimize_events(
    program: P,
    trainset: Sequence[Example | Mapping[str, Any]],
    metric: Metric,
    *,
    lm: LM | None = None,
    proposer_lm: LM | None = None,
    teacher_lm: LM | None = None,
    valset: Sequence[Example | Mapping[str, Any]] | None = None,
    strategy: str | Strategy = "mipro",
    budget: str | Budget | Mapping[str, Any] = "light",
    seed: int = 0,
    input_fields: Sequence[str] | None = None,
    grounding: Grounding | None = None,
    concurrency: int = 256,
    bootstrap_threshold: float = 1.0,
    in_place: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    limits: Limits | None = None,
    max_lm_calls: int | None = None,
    max_tokens: int | None = None,
    max_cost: float | None = None,
    max_time: float | None = None,
    prices: Mapping[str, tuple[float, float]] | None = None,
    outage_tolerance: float = DEFAULT_OUTAGE_TOLERANCE,
    executor: Executor | None = None,
) -> AsyncIterator[EventStream[P]]:
    """Run :func:`optimize` (same arguments, less ``on_event``) and stream its events.

    The run goes on in the background of the ``async with`` block: iterate the events as they happen,
    then read ``events.result``. Leaving the block before the run ends (``break``, an exception)
    stops the run cleanly. The run's error is raised as itself by the iteration (or, when the events
    were not read, on leaving the block).

    Example::

        async with aprompt.optimize_events(program, trainset, metric, lm=lm) as events:
            async for event in events:
                print(event)
        result = events.result
    """
    run_limits = resolve_limits(
        limits,
        {
            "max_lm_calls": max_lm_calls,
            "max_tokens": max_tokens,
            "max_cost": max_cost,
            "max_time": max_time,
            "prices": prices,
        },
        function="optimize_events",
        stacklevel=3,  # the caller of `async with`'s __aenter__
    )
    send, receive = anyio.create_memory_object_stream[Event](max_buffer_size=math.inf)
    stream = EventStream[P](receive)

    async def run() -> None:
        async with send:
            try:
                stream._result = await optimize(
                    program,
                    trainset,
                    metric,
                    lm=lm,
                    proposer_lm=proposer_lm,
                    teacher_lm=teacher_lm,
                    valset=valset,
                    strategy=strategy,
                    budget=budget,
                    seed=seed,
                    input_fields=input_fields,
                    grounding=grounding,
                    concurrency=concurrency,
                    bootstrap_threshold=bootstrap_threshold,
                    in_place=in_place,
                    on_event=send.send,
                    run_dir=run_dir,
                    resume=resume,
                    limits=run_limits,
                    outage_tolerance=outage_tolerance,
                    executor=executor,
                )
            except Exception as exc:  # raised by the iteration as itself, not wrapped in an ExceptionGroup
                stream._error = exc

    body_error: Exception | None = None
    with receive:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            try:
                yield stream
            except Exception as exc:  # raised below, once the run is stopped, as itself
                body_error = exc
            # Leaving the block stops the run if it is still going (a finished run has nothing to cancel).
            group.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
    if stream._error is not None and not stream._error_raised:
        raise stream._error
