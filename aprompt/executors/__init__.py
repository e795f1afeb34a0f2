"""Executors: where program runs happen (in this process by default, or on a Ray cluster).

See :mod:`aprompt.executors.base` for the protocol and :mod:`aprompt.executors.relay` for how a program
run elsewhere sends its LM calls back to the run's own clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aprompt.executors.base import (
    Executor,
    InProcessExecutor,
    ProgramOutcome,
    ProgramRun,
    current_executor,
    execute_run,
    use_executor,
)
from aprompt.program.overrides import PromptState

if TYPE_CHECKING:
    from aprompt.executors.ray_executor import RayExecutor

__all__ = [
    "Executor",
    "InProcessExecutor",
    "ProgramOutcome",
    "ProgramRun",
    "PromptState",
    "RayExecutor",
    "current_executor",
    "execute_run",
    "use_executor",
]


def __getattr__(name: str) -> Any:
    # Ray is an optional extra: importing aprompt never imports it.
    if name == "RayExecutor":
        from aprompt.executors.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
