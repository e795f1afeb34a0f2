"""The optimized program is a copy holding new predictors and sharing everything else with the user's
program: a lock or an HTTP client it holds needs no ``in_place=True``, and the original keeps its prompts.
"""

from __future__ import annotations

import dataclasses
import threading
import types
from typing import Any, NamedTuple

import anyio
import httpx
import pytest

import aprompt
from aprompt import Predict
from aprompt.program._copying import copy_program
from tests.optimize.qa_task import optimize_in_world
from tests.optimize.world import TwoStageProgram

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Agent(TwoStageProgram):
    """The world's program plus what a real agent holds: locks and an HTTP client."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.async_lock = anyio.Lock()
        self.client = client
        self.history: list[str] = []


async def test_a_program_holding_a_lock_and_a_client_is_optimized_into_a_copy_sharing_them() -> None:
    async with httpx.AsyncClient() as client:
        program = Agent(client)
        result, _ = await optimize_in_world(program=program)
    clone = result.program
    assert isinstance(clone, Agent) and clone is not program
    assert clone.lock is program.lock and clone.async_lock is program.async_lock
    assert clone.client is program.client and clone.history is program.history
    best = result.candidates.prompts_for(result.best_choice)
    assert dict(result.best_choice) != result.candidates.baseline(), "the run found better prompts"
    for name, predictor in aprompt.named_predictors(clone):
        assert predictor.instruction == best[name].instruction
        assert tuple(predictor.demos) == best[name].demos
    assert (program.extract.instruction, program.answer.instruction) == ("Find the code.", "Give the answer.")
    assert program.extract.demos == [] and program.answer.demos == []


class Staged(TwoStageProgram):
    """Calls its predictors through a list of them and keeps a helper that points back at it."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = [self.extract, self.answer]
        self.helper = types.SimpleNamespace(owner=self, lock=threading.Lock())

    async def __call__(self, question: str) -> Any:
        found = await self.stages[0](question=question)
        return await self.stages[1](question=question, code=found.code)


async def test_a_predictor_also_held_in_a_list_is_the_copys_own_in_both_places() -> None:
    program = Staged()
    result, _ = await optimize_in_world(program=program)
    clone = result.program
    assert isinstance(clone, Staged) and clone is not program
    assert clone.stages == [clone.extract, clone.answer] and clone.stages is not program.stages
    assert clone.helper.owner is clone and clone.helper.lock is program.helper.lock
    best = result.candidates.prompts_for(result.best_choice)
    assert dict(result.best_choice) != result.candidates.baseline(), "the run found better prompts"
    assert clone.stages[1].instruction == best["answer"].instruction
    assert program.stages[1].instruction == "Give the answer."


class Pair(NamedTuple):
    first: Predict
    label: str


@dataclasses.dataclass(frozen=True)
class Frozen:
    stage: Predict
    notes: list[str]


class Slotted:
    __slots__ = ("inner", "lock")

    def __init__(self) -> None:
        self.inner = [Predict("a -> b"), (Predict("b -> c"), "tag")]
        self.lock = threading.Lock()


class Nested:
    def __init__(self) -> None:
        self.shared = {"x": Predict("q -> x"), "y": Predict("q -> y"), "data": [1, 2]}
        self.again = self.shared  # one structure reached twice
        self.pair = Pair(Predict("q -> p"), "label")
        self.frozen = Frozen(Predict("q -> f"), ["note"])
        self.slotted = Slotted()
        self.lock = threading.Lock()

    async def run(self, q: str) -> Any:
        return q


def test_predictors_at_any_depth_are_copied_and_everything_else_is_shared() -> None:
    program = Nested()
    clone = copy_program(program)
    assert isinstance(clone, Nested)
    names = [name for name, _ in aprompt.named_predictors(program)]
    assert [name for name, _ in aprompt.named_predictors(clone)] == names
    originals = {id(p) for _, p in aprompt.named_predictors(program)}
    assert not originals & {id(p) for _, p in aprompt.named_predictors(clone)}
    assert clone.again is clone.shared, "shared structure stays shared in the copy"
    assert clone.shared["data"] is program.shared["data"]
    assert isinstance(clone.pair, Pair) and clone.pair.label == "label"
    assert clone.frozen.notes is program.frozen.notes
    assert clone.slotted.lock is program.slotted.lock and clone.lock is program.lock
    assert clone.slotted.inner[1][1] == "tag"


def test_copies_own_their_prompts() -> None:
    program = Nested()
    clone = copy_program(program)
    clone.shared["x"].instruction = "Changed."
    clone.pair.first.demos = [{"q": "1", "p": "2"}]
    assert program.shared["x"].instruction != "Changed."
    assert program.pair.first.demos == []
    assert clone.pair.first.lm is program.pair.first.lm


def test_a_bound_method_is_rebound_to_the_copy() -> None:
    program = Nested()
    clone = copy_program(program.run)
    assert isinstance(clone, types.MethodType) and clone.__func__ is Nested.run
    assert isinstance(clone.__self__, Nested) and clone.__self__ is not program
    assert clone.__self__.shared["x"] is not program.shared["x"]


def test_a_structure_that_cannot_be_copied_asks_for_in_place() -> None:
    class ReadOnly:
        def __init__(self) -> None:
            self.stages = types.MappingProxyType({"a": Predict("q -> a")})

    with pytest.raises(aprompt.ConfigError, match="in_place=True"):
        copy_program(ReadOnly())
