"""Tracing: recording every predictor call of a program run, the raw material of bootstrapped
demos."""

from __future__ import annotations

import bisect
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.lm.types import TokenUsage
from aprompt.program.context import ACTIVE_TRACES, TraceSink
from aprompt.program.discovery import named_predictors
from aprompt.program.overrides import active_overrides
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo, Prediction, snapshot

__all__ = ["Trace", "TraceEntry", "trace"]


@attrs.frozen
class TraceEntry:
    """One successful predictor call.

    Attributes:
        predictor_name: its name in the traced program (see :func:`named_predictors`), or its
            signature string when the trace was not given the program or it is not part of it.
        predictor: the predictor object itself.
        inputs: the call's input field values, as the call was given them (copies).
        outputs: the parsed output field values.
        usage: tokens of the call, parse retries included.
        raw_text: the model's reply the outputs were read from.
    """

    predictor_name: str
    predictor: Predict = attrs.field(eq=False)
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    usage: TokenUsage
    raw_text: str

    def as_demo(self) -> Demo:
        """Inputs and outputs as one :class:`Demo` for this predictor."""
        return Demo({**self.inputs, **self.outputs})


class Trace:
    """Records predictor calls made inside its ``with`` (or ``async with``) block.

    What it sees: the calls of the task that entered the block, and of every task started inside the
    block (tasks inherit a copy of their parent's context, which holds this trace). Tasks started
    elsewhere — e.g. concurrent sibling runs, each with its own trace — are not seen, so concurrent
    runs through one program keep separate traces. Traces nest: an inner trace does not hide the
    call from an outer one. Entries are in the order the calls were made (of two calls made at once,
    the one started first comes first, whichever answered first); calls finishing after the block has
    exited are dropped. Only successful calls are recorded (a call that raised ``ParseError`` has no
    outputs to learn from).

    Example::

        with trace(program) as t:
            await program(question="2+2?")
        demos = {entry.predictor_name: entry.as_demo() for entry in t}
    """

    def __init__(self, program: object | None = None) -> None:
        self._program = program
        self._names: Mapping[int, str] = {}
        self._keep_alive: Sequence[object] = ()
        self._entries: list[TraceEntry] = []
        self._orders: list[int] = []  # each entry's call order, ascending
        self._token: contextvars.Token[tuple[TraceSink, ...]] | None = None
        self._state = "new"

    @property
    def entries(self) -> list[TraceEntry]:
        """A copy of the entries recorded so far."""
        return list(self._entries)

    def __iter__(self) -> Iterator[TraceEntry]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def record(
        self, predictor: Predict, inputs: Mapping[str, Any], prediction: Prediction, order: int
    ) -> None:
        """Called by predictors; adds one entry while the block is open, placed by ``order`` (when the
        call was made: the demo of a predictor called twice at once is the same in every run)."""
        if self._state != "open":
            return
        name = self._names.get(id(predictor)) or str(predictor.signature)
        at = bisect.bisect(self._orders, order)
        self._orders.insert(at, order)
        self._entries.insert(
            at,
            TraceEntry(
                predictor_name=name,
                predictor=predictor,
                inputs=dict(inputs),
                # A copy: the program may change a list or dict it was handed before the run ends.
                outputs=snapshot(prediction.to_dict()),
                usage=prediction.usage,
                raw_text=prediction.completion.text if prediction.completion else "",
            ),
        )

    def __enter__(self) -> Trace:
        if self._state != "new":
            raise ConfigError("a Trace can be entered only once; create a new one with trace()")
        if self._program is not None:
            active = active_overrides()
            if active is not None and active.program is self._program:
                # The prompts' block of this program walked it a moment ago (a run of an evaluation).
                self._keep_alive = active.keep_alive
                self._names = active.names
            else:
                pairs = named_predictors(self._program)
                # Keep the predictors referenced so their ids cannot be reused by other objects
                # meanwhile.
                self._keep_alive = [p for _, p in pairs]
                self._names = {id(p): name for name, p in pairs}
        self._token = ACTIVE_TRACES.set((*ACTIVE_TRACES.get(), self))
        self._state = "open"
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        ACTIVE_TRACES.reset(self._token)
        self._state = "closed"

    async def __aenter__(self) -> Trace:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


def trace(program: object | None = None) -> Trace:
    """A new :class:`Trace`; give the ``program`` so entries carry the predictors' dotted names."""
    return Trace(program)
