"""The executor protocol without Ray: prompt state as a plain value applied by predictor name to any copy
of a program, a user's own executor giving in-process results, and optimize() sending every program run
through the executor it is given."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import anyio
import pytest

import aprompt
from aprompt import ConfigError, program_state
from aprompt._optimize.evaluate import Evaluation, evaluate
from aprompt.executors import (
    InProcessExecutor,
    ProgramOutcome,
    ProgramRun,
    PromptState,
    current_executor,
    execute_run,
    use_executor,
)
from aprompt.executors.relay import LMReply, LMRequest, LMTable, RunRelay, run_relayed
from aprompt.lm.cache import ResponseCache
from aprompt.program.overrides import PromptOverride
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import (
    SMALL_BUDGET,
    QAProgram,
    answers,
    exact_match,
    is_program_call,
    lm_for,
    optimize_in_world,
    qa_examples,
    system_of,
)
from tests.optimize.world import TwoStageProgram, World, examples, metric
from tests.ray.programs import FallbackProgram

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class FreshCopyExecutor:
    """Every run on its own deep copy of the program: the prompts reach it only by name."""

    def __init__(self) -> None:
        self.runs = 0

    async def run_program(self, program: object, run: ProgramRun) -> ProgramOutcome:
        self.runs += 1
        return await execute_run(copy.deepcopy(program), run)


class LoopbackChannel:
    """Carries a relayed run's requests to a task of the driver's own context (:meth:`serve`, started before
    the run), which answers them with its :class:`RunRelay`: what a cluster's relay actor does across
    processes."""

    def __init__(self) -> None:
        self.send, self._receive = anyio.create_memory_object_stream[
            tuple[RunRelay, LMRequest, list[LMReply], anyio.Event]
        ](16)

    async def serve(self) -> None:
        async for relay, request, reply, answered in self._receive:
            reply.append(await relay.answer(request))
            answered.set()

    def for_run(self, relay: RunRelay) -> RunChannel:
        return RunChannel(self, relay)


class RunChannel:
    def __init__(self, loopback: LoopbackChannel, relay: RunRelay) -> None:
        self._loopback, self._relay = loopback, relay

    async def ask(self, request: LMRequest) -> LMReply:
        reply: list[LMReply] = []
        answered = anyio.Event()
        await self._loopback.send.send((self._relay, request, reply, answered))
        await answered.wait()
        return reply[0]


def outcome_of(evaluation: Evaluation) -> list[tuple[Any, ...]]:
    return [
        (
            r.example_id,
            r.score,
            r.error,
            [(e.predictor_name, e.inputs, e.outputs, e.raw_text) for e in r.trace],
        )
        for r in evaluation.results
    ]


async def test_a_prompt_state_survives_pickling_and_applies_by_name_to_another_copy(
    fake_server: FakeOpenAIServer,
) -> None:
    state = PromptState({"answer": PromptOverride("Sent by value.", [{"question": "q", "answer": "a"}])})
    shipped = pickle.loads(pickle.dumps(state))
    assert shipped == state
    async with lm_for(fake_server) as lm:
        run = ProgramRun("q1", {"question": "What is the answer for item-1?"}, shipped, lm)
        outcome = await execute_run(copy.deepcopy(QAProgram()), run)
    assert outcome.error is None
    assert system_of(fake_server.chat_requests[0]).startswith("Sent by value.")


def test_a_completed_state_carries_every_predictors_own_prompt() -> None:
    program = TwoStageProgram()
    program.answer.instruction = "Changed here."
    state = PromptState({"extract": PromptOverride("Given.")}).completed(aprompt.named_predictors(program))
    assert {name: p.instruction for name, p in state.prompts.items()} == {
        "extract": "Given.",
        "answer": "Changed here.",
    }


async def test_a_users_own_executor_gives_the_in_process_scores_and_traces(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = answers
    prompts = {"answer": PromptOverride("Answer precisely.")}
    executor = FreshCopyExecutor()
    async with lm_for(fake_server) as lm:
        here = await evaluate(
            QAProgram(), qa_examples(1, 8), exact_match, lm=lm, prompts=prompts, collect_traces=True
        )
        there = await evaluate(
            QAProgram(),
            qa_examples(1, 8),
            exact_match,
            lm=lm,
            prompts=prompts,
            collect_traces=True,
            executor=executor,
        )
    assert executor.runs == 7
    assert outcome_of(there) == outcome_of(here)
    assert all(system_of(r).startswith("Answer precisely.") for r in fake_server.chat_requests)


async def test_an_evaluation_uses_the_executor_of_its_use_executor_block(
    fake_server: FakeOpenAIServer,
) -> None:
    executor = FreshCopyExecutor()
    async with lm_for(fake_server) as lm:
        with use_executor(executor):
            await evaluate(QAProgram(), qa_examples(1, 4), exact_match, lm=lm)
        await evaluate(QAProgram(), qa_examples(1, 4), exact_match, lm=lm)
    assert executor.runs == 3


async def test_optimize_sends_every_program_run_through_its_executor_with_the_same_result() -> None:
    executor = FreshCopyExecutor()
    here, _ = await optimize_in_world(seed=2)
    # No cache: every program run then sends its own requests, so they count the executor's runs.
    there, requests = await optimize_in_world(
        seed=2, executor=executor, lm_options={"cache": ResponseCache.disabled()}
    )
    assert there.score == here.score and program_state(there.program) == program_state(here.program)
    assert [(t.choice, t.scores) for t in there.trials] == [(t.choice, t.scores) for t in here.trials]
    # Two predictor calls per program run, every one of them made by a run of the executor.
    assert 2 * executor.runs == sum(1 for r in requests if is_program_call(r))


async def test_an_executor_without_run_program_is_a_config_error_before_any_lm_call() -> None:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        with pytest.raises(ConfigError, match="executor must be None or have an async run_program"):
            await aprompt.optimize(
                TwoStageProgram(),
                examples(0, 20),
                metric,
                lm=lm,
                budget=SMALL_BUDGET,
                executor=object(),  # type: ignore[arg-type]
            )
        assert server.chat_requests == []


class BlockingExecutor:
    """``run_program`` is a plain method: an evaluation cannot await it."""

    def run_program(self, program: object, run: ProgramRun) -> ProgramOutcome:
        raise AssertionError("an executor that is refused is never called")


@pytest.mark.parametrize("executor", [object(), FreshCopyExecutor, BlockingExecutor()])
async def test_an_evaluation_given_no_usable_executor_is_a_config_error_before_any_lm_call(
    fake_server: FakeOpenAIServer, executor: Any
) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match="executor must be"):
            await aprompt.evaluate(QAProgram(), qa_examples(1, 3), exact_match, lm=lm, executor=executor)
    assert fake_server.chat_requests == []


def test_the_default_executor_runs_in_process() -> None:
    assert isinstance(current_executor(), InProcessExecutor)


async def test_a_relayed_run_calls_the_lm_of_the_drivers_predictor_not_its_copys_own() -> None:
    async with (
        FakeOpenAIServer(responder=answers, api_key=TEST_API_KEY) as own_server,
        FakeOpenAIServer(responder=answers, api_key=TEST_API_KEY) as default_server,
        lm_for(own_server) as own,
        lm_for(default_server) as default,
        anyio.create_task_group() as group,
    ):
        loopback = LoopbackChannel()
        group.start_soon(loopback.serve)
        program = QAProgram()
        program.answer.lm = own
        remote = copy.deepcopy(program)  # a worker's copy: its predictor holds a client of a dead address
        remote.answer.lm = aprompt.OpenAICompatibleLM("elsewhere", "http://127.0.0.1:9/v1", max_retries=0)
        lms = LMTable()
        question = {"question": "What is the answer for item-1?"}
        run = ProgramRun("q1", question, PromptState(), lms.stand_in(default))
        outcomes = []
        for driver_lm in (own, None):  # None: the driver's predictor has no LM, the run's default is used
            program.answer.lm = driver_lm
            relay = RunRelay(lms)
            own_lms = lms.own_lms(aprompt.named_predictors(program))
            relayed = await run_relayed(remote, run, loopback.for_run(relay), own_lms)
            outcomes.append(relay.outcome(relayed, dict(aprompt.named_predictors(program))))
        group.cancel_scope.cancel()
    assert [(o.error, o.prediction.answer) for o in outcomes] == [(None, "ans-1")] * 2
    assert (len(own_server.chat_requests), len(default_server.chat_requests)) == (1, 1)
    assert own.usage.requests == default.usage.requests == 1


async def test_a_setup_fault_of_a_relayed_call_stops_the_run_as_it_does_in_process() -> None:
    """The driver's client refuses a parameter (a ConfigError): relayed, the run is refused the same
    way, not scored 0 as a program that answered wrong."""
    async with (
        FakeOpenAIServer(responder=answers, api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
        anyio.create_task_group() as group,
    ):
        loopback = LoopbackChannel()
        group.start_soon(loopback.serve)
        program = QAProgram()
        program.answer.lm_params["stream"] = True  # the client reads each reply whole: refused
        with pytest.raises(aprompt.ConfigError, match="stream=True is not supported") as in_process:
            await execute_run(copy.deepcopy(program), ProgramRun("q1", {"question": "q?"}, PromptState(), lm))
        lms = LMTable()
        run = ProgramRun("q1", {"question": "q?"}, PromptState(), lms.stand_in(lm))
        relay = RunRelay(lms)
        relayed = await run_relayed(copy.deepcopy(program), run, loopback.for_run(relay), {})
        with pytest.raises(aprompt.ConfigError) as from_the_relay:
            relay.outcome(relayed, dict(aprompt.named_predictors(program)))
        group.cancel_scope.cancel()
    assert str(from_the_relay.value) == str(in_process.value)
    assert server.chat_requests == []


async def test_a_relayed_program_catches_the_drivers_lm_error_by_its_type_as_in_process() -> None:
    """The program answers a withheld reply itself (``except ContentFilteredError``): relayed, it must see
    that error, type and attributes, and answer the same, not fail on a stand-in it does not catch."""
    async with (
        FakeOpenAIServer(responder=lambda _: Fault.content_filter(), api_key=TEST_API_KEY) as server,
        lm_for(server, max_retries=0) as lm,
        anyio.create_task_group() as group,
    ):
        loopback = LoopbackChannel()
        group.start_soon(loopback.serve)
        program = FallbackProgram()
        in_process = await execute_run(program, ProgramRun("q1", {"question": "q?"}, PromptState(), lm))
        lms = LMTable()
        relay = RunRelay(lms)
        run = ProgramRun("q1", {"question": "q?"}, PromptState(), lms.stand_in(lm))
        relayed = await run_relayed(copy.deepcopy(program), run, loopback.for_run(relay), {})
        outcome = relay.outcome(relayed, dict(aprompt.named_predictors(program)))
        group.cancel_scope.cancel()
    assert in_process.error is None and in_process.prediction.answer == "refused (content_filter)"
    assert (outcome.error, outcome.prediction) == (None, in_process.prediction)


class GroupedQAProgram(QAProgram):
    """Asks its predictor in a task group of its own, so that a failure arrives wrapped in a group."""

    async def __call__(self, question: str) -> Any:
        found: list[Any] = []

        async def ask() -> None:
            found.append(await self.answer(question=question))

        async with anyio.create_task_group() as group:
            group.start_soon(ask)
        return found[0]


@pytest.mark.parametrize("program_type", [QAProgram, GroupedQAProgram], ids=["alone", "in_a_task_group"])
async def test_a_cache_failure_of_a_relayed_call_stops_the_run_as_it_does_in_process(
    program_type: type[QAProgram],
) -> None:
    """The driver's LM cache was closed under the run (a CacheError, a setup fault): relayed, the run
    stops with that error, as in-process, not scored 0 as a program that answered wrong."""
    async with (
        FakeOpenAIServer(responder=answers, api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
        anyio.create_task_group() as group,
    ):
        cache = ResponseCache.memory_only()
        cache.close()
        lm.cache = cache
        loopback = LoopbackChannel()
        group.start_soon(loopback.serve)
        program = program_type()
        with pytest.raises(aprompt.CacheError) as in_process:
            await execute_run(copy.deepcopy(program), ProgramRun("q1", {"question": "q?"}, PromptState(), lm))
        lms = LMTable()
        run = ProgramRun("q1", {"question": "q?"}, PromptState(), lms.stand_in(lm))
        relay = RunRelay(lms)
        relayed = await run_relayed(copy.deepcopy(program), run, loopback.for_run(relay), {})
        with pytest.raises(aprompt.CacheError) as from_the_relay:
            relay.outcome(relayed, dict(aprompt.named_predictors(program)))
        group.cancel_scope.cancel()
    assert str(from_the_relay.value) == str(in_process.value)
    assert server.chat_requests == []


def test_a_cut_reply_fails_its_example_while_a_provider_fault_beside_it_leaves_it_unscored() -> None:
    """A cut reply is the prompt's doing (scored 0, named as itself); the same run's provider fault in
    another of its calls is not, and then the example stays unscored."""
    cut = aprompt.TruncatedResponseError("cut at max_tokens", finish_reason="length")
    alone = ProgramOutcome.failed(ExceptionGroup("program", [cut]))
    assert not alone.lm_failure and not alone.lm_answered
    assert alone.error is not None and alone.error.startswith("TruncatedResponseError: ")
    down = aprompt.ServerError("upstream 503", status_code=503)
    beside = ProgramOutcome.failed(ExceptionGroup("program", [cut, down]))
    assert beside.lm_failure and not beside.lm_answered
    assert beside.error is not None and beside.error.startswith("ServerError: ")
    empty = ProgramOutcome.failed(aprompt.EmptyResponseError("no content"))
    assert not empty.lm_failure and empty.error is not None and empty.error.startswith("EmptyResponseError: ")
    stopped = ProgramOutcome.failed(aprompt.IncompleteResponseError("upstream failed", finish_reason="error"))
    assert stopped.lm_failure and not stopped.lm_answered
