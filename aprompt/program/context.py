"""Per-task context for predictors: the default LM (:func:`use_lm`) and the traces being recorded.

Both live in :mod:`contextvars`, not in a global settings object: each task sees its own values, and
a task started inside a ``with`` block (anyio task groups, asyncio tasks) inherits a copy of its
parent's context at the moment it is started. Setting a value in a child never leaks into the parent
or its siblings.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aprompt._errors import ConfigError
from aprompt.lm.types import LM

if TYPE_CHECKING:
    from aprompt.program.predictor import Predict
    from aprompt.program.values import Prediction

__all__ = ["current_lm", "use_lm"]

_DEFAULT_LM: contextvars.ContextVar[LM | None] = contextvars.ContextVar("aprompt_lm", default=None)


class TraceSink(Protocol):
    """What a predictor reports each successful call to (implemented by
    :class:`~aprompt.program.Trace`); ``order`` grows with the order the calls were made in."""

    def record(
        self, predictor: Predict, inputs: Mapping[str, Any], prediction: Prediction, order: int
    ) -> None: ...


ACTIVE_TRACES: contextvars.ContextVar[tuple[TraceSink, ...]] = contextvars.ContextVar(
    "aprompt_traces", default=()
)


def current_lm() -> LM | None:
    """The LM set by the innermost enclosing :func:`use_lm` in this task, or ``None``."""
    return _DEFAULT_LM.get()


class LMScope:
    """The context manager returned by :func:`use_lm`; usable with ``with`` and ``async with``."""

    def __init__(self, lm: LM) -> None:
        self._lm = lm
        self._token: contextvars.Token[LM | None] | None = None

    def __enter__(self) -> LM:
        if self._token is not None:
            raise ConfigError("this use_lm(...) block is already active; call use_lm again")
        self._token = _DEFAULT_LM.set(self._lm)
        return self._lm

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        _DEFAULT_LM.reset(self._token)
        self._token = None

    async def __aenter__(self) -> LM:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


def use_lm(lm: LM) -> LMScope:
    """Make ``lm`` the default LM of predictors called in this block (and in tasks started inside
    it).

    A predictor uses, in order: the ``lm=`` of the call, its own ``lm``, this default.

    Example::

        async with OpenAICompatibleLM("gpt-4o-mini") as lm, use_lm(lm):
            prediction = await predict(question="2+2?")
    """
    return LMScope(lm)
