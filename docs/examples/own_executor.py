"""Your own executor: decide where each program run happens.

Every program run of an optimization goes through an executor (``aprompt.executors``): it gets the
program and a ``ProgramRun`` — the inputs and the run's prompt state, a plain value holding the prompts of
every predictor BY NAME — and returns the outcome. This one gives every run a fresh copy of the program
(for a program that keeps scratch state on itself), so the candidate prompts can reach the copy only
through that explicit state; the result is the same as in-process. ``RayExecutor`` is the same protocol
with the runs on a Ray cluster.

Run it (the LM is ``OPENAI_BASE_URL`` + ``APROMPT_MODEL``, else the embedded local model)::

    python docs/examples/own_executor.py
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Mapping
from typing import Any

import anyio

import aprompt
from aprompt.executors import ProgramOutcome, ProgramRun, execute_run

TRAINSET = [
    aprompt.Example(
        inputs={"question": f"How many days are there in {weeks} weeks?"}, labels={"days": 7 * weeks}
    )
    for weeks in range(1, 31)
]
BUDGET: Mapping[str, int] = {"n_candidates": 4, "n_trials": 8, "minibatch_size": 5}


class WeeksToDays:
    def __init__(self) -> None:
        self.solve = aprompt.ChainOfThought("question -> days: int")
        self.scratch: list[str] = []  # per-run state: why each run gets its own copy

    async def __call__(self, question: str) -> aprompt.Prediction:
        self.scratch.append(question)
        return await self.solve(question=question)


def right_days(example: aprompt.Example, prediction: aprompt.Prediction) -> bool:
    return bool(prediction.days == example.labels["days"])


class FreshCopyExecutor:
    """Runs each program run on its own deep copy of the program."""

    def __init__(self) -> None:
        self.runs = 0

    async def run_program(self, program: object, run: ProgramRun) -> ProgramOutcome:
        self.runs += 1
        # execute_run applies run.state to the copy by predictor name, then runs it.
        return await execute_run(copy.deepcopy(program), run)


async def main(
    lm: aprompt.LM, budget: Mapping[str, Any] = BUDGET
) -> tuple[aprompt.OptimizeResult[WeeksToDays], int]:
    """Optimize ``WeeksToDays`` with the executor and in-process; both give the same result."""
    executor = FreshCopyExecutor()
    options: dict[str, Any] = {"lm": lm, "budget": budget, "seed": 0}
    result = await aprompt.optimize(WeeksToDays(), TRAINSET, right_days, executor=executor, **options)
    here = await aprompt.optimize(WeeksToDays(), TRAINSET, right_days, **options)
    same = aprompt.program_state(result.program) == aprompt.program_state(here.program)
    print(f"{executor.runs} program runs through FreshCopyExecutor")
    print(f"score {result.baseline_score:.2f} -> {result.score:.2f}; same as in-process: {same}")
    return result, executor.runs


def lm_from_environment() -> contextlib.AbstractAsyncContextManager[aprompt.OpenAICompatibleLM]:
    """``OPENAI_BASE_URL`` (+ ``APROMPT_MODEL``, key from ``OPENAI_API_KEY``), else the local model."""
    if os.environ.get("OPENAI_BASE_URL"):
        # The client reads $OPENAI_BASE_URL and $OPENAI_API_KEY itself.
        return aprompt.OpenAICompatibleLM(os.environ.get("APROMPT_MODEL", "gpt-4o-mini"))
    return aprompt.local_lm()


async def run() -> None:
    async with lm_from_environment() as lm:
        await main(lm)


if __name__ == "__main__":
    anyio.run(run)
