"""A plain async function is a program: its predictors are found in its globals, its closure and the
functions it calls, and ``in_place=True`` optimizes them where they live."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt import Predict
from aprompt.program import named_predictors
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import World
from tests.run._optimize_worker import optimize_world, summary, world_lm

pytestmark = pytest.mark.anyio

API_KEY = "sk-function-programs"

# Module-level predictors, as existing agent code keeps them.
PLAN = Predict("question -> plan", instruction="Plan.")
REPLY = Predict("question, plan -> answer", instruction="Reply.")


async def plan_step(question: str) -> str:
    return str((await PLAN(question=question)).plan)


async def agent(question: str) -> Any:
    return await REPLY(question=question, plan=await plan_step(question))


def two_stage_function() -> tuple[Callable[..., Awaitable[Any]], Predict, Predict]:
    """The world's two-stage program as a closure over its predictors (same names as the class's)."""
    extract = Predict("question -> code", instruction="Find the code.")
    answer = Predict("question, code -> answer", instruction="Give the answer.")

    async def program(question: str) -> Any:
        found = await extract(question=question)
        return await answer(question=question, code=found.code)

    return program, extract, answer


def test_a_function_names_its_globals_and_the_helpers_it_calls() -> None:
    assert named_predictors(agent) == [("REPLY", REPLY), ("plan_step.PLAN", PLAN)]


def test_a_closure_names_its_free_variables() -> None:
    program, extract, answer = two_stage_function()
    assert named_predictors(program) == [("extract", extract), ("answer", answer)]


def test_functions_held_by_an_object_are_not_entered() -> None:
    class Holder:
        def __init__(self) -> None:
            self.run = agent

    assert named_predictors(Holder()) == []


async def test_optimizing_a_function_in_place_matches_the_same_program_as_an_object(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
        async with world_lm(server.base_url, API_KEY) as lm:
            as_object = await optimize_world(lm, None)
        program, extract, answer = two_stage_function()
        async with world_lm(server.base_url, API_KEY) as lm:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr("tests.run._optimize_worker.TwoStageProgram", lambda: program)
                as_function = await optimize_world(lm, None, in_place=True)
    assert summary(as_function) == summary(as_object)
    assert as_function.program is program
    best = as_object.program
    assert (extract.instruction, extract.demos) == (best.extract.instruction, best.extract.demos)  # type: ignore[attr-defined]
    assert (answer.instruction, answer.demos) == (best.answer.instruction, best.answer.demos)  # type: ignore[attr-defined]
    # Saved by name, loaded into another copy of the function's predictors.
    path = as_function.save(tmp_path / "agent.json")
    again, extract_again, answer_again = two_stage_function()
    aprompt.load(again, path)
    assert (extract_again.instruction, answer_again.demos) == (extract.instruction, answer.demos)


async def test_a_function_without_in_place_is_refused_before_any_call(fake_server: FakeOpenAIServer) -> None:
    program, _, _ = two_stage_function()
    async with world_lm(fake_server.base_url, "key") as lm:
        with pytest.raises(aprompt.ConfigError, match=r"is a function: .* pass in_place=True"):
            await aprompt.optimize(program, [{"question": "q", "answer": "a"}] * 4, lambda e, p: 1.0, lm=lm)
    assert fake_server.requests == []


async def test_a_function_naming_no_predictor_is_refused(fake_server: FakeOpenAIServer) -> None:
    async def plain(question: str) -> str:
        return question

    async with world_lm(fake_server.base_url, "key") as lm:
        with pytest.raises(aprompt.ConfigError, match=r"function .*plain names no predictor"):
            await aprompt.optimize(plain, [{"question": "q"}] * 4, lambda e, p: 1.0, lm=lm, in_place=True)
