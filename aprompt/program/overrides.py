"""Per-task prompt overrides: run a program with other instructions and demos without changing it.

An optimizer evaluates many prompt choices at once through ONE program object. Instead of mutating
the predictors (which concurrent runs would see), it sets, in a context variable, the instruction
and demos each predictor should use, plus a rollout index and sampling parameters (for
bootstrapping). Predictors read the override of the task they run in; tasks started inside inherit
it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.program.values import Demo, as_demo

__all__ = ["ActiveOverrides", "PromptOverride", "active_overrides", "override_prompts"]


def _demo_tuple(demos: Iterable[Demo | Mapping[str, Any]]) -> tuple[Demo, ...]:
    return tuple(as_demo(d) for d in demos)


@attrs.frozen
class PromptOverride:
    """The instruction and demos one predictor uses inside :func:`override_prompts`."""

    instruction: str
    demos: tuple[Demo, ...] = attrs.field(default=(), converter=_demo_tuple)


@attrs.frozen
class ActiveOverrides:
    """What predictors in the current task read: prompts by predictor id, rollout, sampling."""

    prompts: Mapping[int, PromptOverride]
    rollout: int | None = None
    lm_params: Mapping[str, Any] = attrs.field(factory=dict)
    keep_alive: tuple[object, ...] = attrs.field(default=(), eq=False, repr=False)


_ACTIVE: contextvars.ContextVar[ActiveOverrides | None] = contextvars.ContextVar(
    "aprompt_prompt_overrides", default=None
)


def active_overrides() -> ActiveOverrides | None:
    """The overrides of the innermost :func:`override_prompts` block of this task, if any."""
    return _ACTIVE.get()


@contextmanager
def override_prompts(
    program: object,
    prompts: Mapping[str, PromptOverride | tuple[str, Sequence[Any]]],
    *,
    rollout: int | None = None,
    lm_params: Mapping[str, Any] | None = None,
) -> Iterator[ActiveOverrides]:
    """Within the block (this task and tasks started in it), predictors of ``program`` named in
    ``prompts`` use those instructions and demos; ``rollout`` and ``lm_params`` apply to every call.

    Example::

        with override_prompts(program, {"answer": PromptOverride("Reply with a number.", demos)}):
            prediction = await program(question="...")
    """
    from aprompt.program.discovery import named_predictors  # discovery imports the predictor module

    by_name = dict(named_predictors(program))
    unknown = sorted(set(prompts) - set(by_name))
    if unknown:
        raise ConfigError(f"no predictor named {unknown} in the program (has {sorted(by_name)})")
    resolved: dict[int, PromptOverride] = {}
    for name, value in prompts.items():
        override = value if isinstance(value, PromptOverride) else PromptOverride(value[0], value[1])
        resolved[id(by_name[name])] = override
    active = ActiveOverrides(resolved, rollout, dict(lm_params or {}), keep_alive=tuple(by_name.values()))
    token = _ACTIVE.set(active)
    try:
        yield active
    finally:
        _ACTIVE.reset(token)
