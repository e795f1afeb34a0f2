"""Programs that run their predictors elsewhere: prompt choices reach predictors through context variables,
so a predictor called from a worker started outside the evaluation would score every candidate as the
baseline. That is refused with a ConfigError saying why; a worker started inside the call, or a thread
that carries the context, works.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import aprompt
from aprompt import Predict, Prediction
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import ORIGINAL_INSTRUCTION, SMALL_BUDGET, lm_for, system_of
from tests.optimize.world import examples, metric

pytestmark = pytest.mark.anyio

Job = tuple[str, MemoryObjectSendStream[Prediction]]
REFUSAL = "called outside the evaluation's context"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class QueueProgram:
    """Hands each question to a queue; a consumer task calls the predictor and sends the answer back."""

    def __init__(self) -> None:
        self.answer = Predict("question -> answer", instruction=ORIGINAL_INSTRUCTION)
        self.jobs, self.queue = anyio.create_memory_object_stream[Job](max_buffer_size=100)

    async def consume(self, queue: MemoryObjectReceiveStream[Job], lm: aprompt.LM | None = None) -> None:
        async for question, reply in queue:
            async with reply:
                answer = await self.answer(question=question, lm=lm)
                with contextlib.suppress(anyio.BrokenResourceError):  # the caller was cancelled meanwhile
                    await reply.send(answer)

    async def ask(self, question: str) -> Prediction:
        reply, result = anyio.create_memory_object_stream[Prediction](1)
        await self.jobs.send((question, reply))
        async with result:
            return await result.receive()


class WorkerBeforeTheRun(QueueProgram):
    async def __call__(self, question: str) -> Prediction:
        return await self.ask(question)


class WorkerPerCall(QueueProgram):
    """Starts its consumer inside the call, so the consumer inherits the evaluation's context."""

    async def __call__(self, question: str) -> Prediction:
        jobs, queue = anyio.create_memory_object_stream[Job](max_buffer_size=1)
        reply, result = anyio.create_memory_object_stream[Prediction](1)
        async with anyio.create_task_group() as group:
            group.start_soon(self.consume, queue)
            async with jobs:
                await jobs.send((question, reply))
            async with result:
                return await result.receive()


class ThreadProgram:
    """Runs each call on a thread with an event loop (and an LM client) of its own."""

    def __init__(self, server: FakeOpenAIServer, hand_over: Callable[[Callable[[], Any]], Awaitable[Any]]):
        self.answer = Predict("question -> answer", instruction=ORIGINAL_INSTRUCTION)
        self.server = server
        self.hand_over = hand_over

    async def in_thread(self, question: str) -> Prediction:
        async with lm_for(self.server) as lm:
            return await self.answer(question=question, lm=lm)

    async def __call__(self, question: str) -> Prediction:
        return await self.hand_over(lambda: asyncio.run(self.in_thread(question)))  # type: ignore[no-any-return]


def program_calls(server: FakeOpenAIServer) -> list[object]:
    """The requests of the program under optimization (not the proposer's grounding texts)."""
    return [r for r in server.chat_requests if system_of(r).startswith(ORIGINAL_INSTRUCTION)]


def right_answers(request: ChatRequest) -> str:
    """Every item's answer right (a run where nothing scores would stop at its first full evaluation)."""
    found = re.search(r"item-(\d+)", request.last_user)
    return f"Answer: ans-{found.group(1)}" if found else "Answer: ok"


@pytest.fixture
async def world_server() -> Any:
    async with FakeOpenAIServer(responder=right_answers, api_key=TEST_API_KEY) as server:
        yield server


async def optimize(program: object, server: FakeOpenAIServer) -> aprompt.OptimizeResult:
    async with lm_for(server) as lm:
        return await aprompt.optimize(
            program, examples(0, 40), metric, valset=examples(200, 230), lm=lm, budget=SMALL_BUDGET
        )


async def test_a_queue_consumer_started_before_the_run_is_refused(world_server: FakeOpenAIServer) -> None:
    program = WorkerBeforeTheRun()
    async with lm_for(world_server) as lm, anyio.create_task_group() as group:
        group.start_soon(program.consume, program.queue, lm)  # an app's worker, with its own LM
        with pytest.raises(aprompt.ConfigError, match=rf"\['answer'\] .*{REFUSAL}.*Start the worker inside"):
            await optimize(program, world_server)
        group.cancel_scope.cancel()
    # The bootstrap's two sets walk their first waves (8 examples each) at once.
    assert len(program_calls(world_server)) <= 2 * 8, "refused at the first evaluation"


async def test_a_queue_consumer_started_inside_the_call_sees_the_candidates(
    world_server: FakeOpenAIServer,
) -> None:
    result = await optimize(WorkerPerCall(), world_server)
    assert len(result.trials) == SMALL_BUDGET["n_trials"]
    instructions = {system_of(r).split("\n")[0] for r in world_server.chat_requests}
    assert ORIGINAL_INSTRUCTION in instructions and len(instructions) > 2, "candidates reached the predictor"


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """A thread pool made before the run: its threads do not inherit the run's context."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


async def test_a_thread_pool_made_before_the_run_is_refused(
    world_server: FakeOpenAIServer, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    async def hand_over(work: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(lambda: pool.submit(work).result())

    with pytest.raises(aprompt.ConfigError, match=REFUSAL):
        await optimize(ThreadProgram(world_server, hand_over), world_server)
    # Refused at the first evaluations, which start together: the first waves of the bootstrap's two sets
    # (8 examples each) and the baseline's (30); work already handed to the pool still runs.
    assert len(program_calls(world_server)) <= 2 * 8 + 30


async def test_a_thread_that_carries_the_context_sees_the_candidates(world_server: FakeOpenAIServer) -> None:
    async def hand_over(work: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(work)  # anyio copies the context into the thread

    result = await optimize(ThreadProgram(world_server, hand_over), world_server)
    assert len(result.trials) == SMALL_BUDGET["n_trials"]
