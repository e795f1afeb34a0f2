"""Program runs on a real local Ray cluster (2 worker processes) against the loopback fake server: the
same scores, traces and optimization result as in-process, the driver's LM limits and usage exact, a
killed worker process retried, cancellation reaching the workers."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'aprompt[ray]')")

import ray

import aprompt
from aprompt import (
    ConfigError,
    Example,
    InexactResumeWarning,
    Limits,
    OpenAICompatibleLM,
    program_state,
    use_lm,
)
from aprompt._optimize.evaluate import Evaluation, evaluate
from aprompt.executors import RayExecutor
from aprompt.executors._ray_relay import RelayLost, _ActorChannel
from aprompt.executors.ray_executor import WorkerLostError
from aprompt.executors.relay import LMRequest
from aprompt.program.overrides import PromptOverride
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault, ServerRateLimit
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import (
    SMALL_BUDGET,
    QAProgram,
    answers,
    exact_match,
    is_program_call,
    item_of,
    last_user_of,
    lm_for,
    optimize_in_world,
    qa_examples,
    system_of,
)
from tests.optimize.test_undiscovered_predictors import CallsAHiddenPredictor
from tests.optimize.world import TwoStageProgram, World, examples, metric
from tests.ray.programs import (
    ANSWER,
    CHECK,
    DRAFT,
    CatchingProgram,
    FallbackProgram,
    LazyAnswerProgram,
    PausingProgram,
    SleepingProgram,
    answer_question,
    draft_and_check,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def executor() -> AsyncIterator[RayExecutor]:
    async with RayExecutor(workers=2, runs_per_worker=4) as opened:
        yield opened


def marks(directory: Path, prefix: str) -> list[str]:
    """Names of the files in ``directory`` starting with ``prefix`` (a program's marks), sorted."""
    return sorted(name for name in os.listdir(directory) if name.startswith(prefix))


async def wait_for_marks(directory: Path, prefix: str, seconds: float = 60, count: int = 1) -> list[str]:
    for _ in range(int(seconds / 0.05)):
        if len(found := marks(directory, prefix)) >= count:
            return found
        await anyio.sleep(0.05)
    raise AssertionError(f"not {count} {prefix}* file(s) in {seconds} s: {marks(directory, prefix)}")


def outcome_of(evaluation: Evaluation) -> list[tuple[Any, ...]]:
    """Everything an evaluation says of each example, traces included, in order."""
    return [
        (
            r.example_id,
            r.score,
            r.error,
            r.lm_answered,
            r.prediction.to_dict() if r.prediction is not None else None,
            [(e.predictor_name, e.predictor, e.inputs, e.outputs, e.usage, e.raw_text) for e in r.trace],
        )
        for r in evaluation.results
    ]


async def test_runs_on_ray_score_and_trace_exactly_like_runs_in_process(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    program = QAProgram()
    prompts = {"answer": PromptOverride("Answer precisely.", [{"question": "q?", "answer": "a"}])}
    options: dict[str, Any] = {"prompts": prompts, "collect_traces": True, "rollout": 2}
    async with lm_for(fake_server) as lm:
        here = await evaluate(program, qa_examples(1, 13), exact_match, lm=lm, **options)
        there = await evaluate(program, qa_examples(1, 13), exact_match, lm=lm, executor=executor, **options)
    assert outcome_of(there) == outcome_of(here)
    assert there.results[0].trace[0].predictor is program.answer  # the driver's own predictor
    assert there.scores == {f"q{i}": 0.0 if i % 3 == 0 else 1.0 for i in range(1, 13)}
    # Both runs sent the same requests, the candidate's prompt in each.
    first, second = fake_server.chat_requests[:12], fake_server.chat_requests[12:]
    assert sorted(map(last_user_of, second)) == sorted(map(last_user_of, first))
    assert all(system_of(r).startswith("Answer precisely.") for r in second)


async def test_a_function_program_with_module_level_predictors_gets_each_runs_prompts_on_ray(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        for instruction in ("First wording.", "Second wording."):
            prompts = {"ANSWER": PromptOverride(instruction)}
            evaluation = await evaluate(
                answer_question, qa_examples(1, 5), exact_match, lm=lm, prompts=prompts, executor=executor
            )
            assert evaluation.scores == {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}
        # The driver's own prompt state travels with each run, whatever the workers imported.
        ANSWER.instruction = "Changed on the driver."
        try:
            await evaluate(answer_question, qa_examples(1, 3), exact_match, lm=lm, executor=executor)
        finally:
            ANSWER.instruction = "Answer the question."
    systems = [system_of(r).split("\n")[0] for r in fake_server.chat_requests]
    assert systems == ["First wording."] * 4 + ["Second wording."] * 4 + ["Changed on the driver."] * 2


async def test_optimize_on_ray_returns_the_same_program_trials_and_score_as_in_process(
    executor: RayExecutor,
) -> None:
    here, here_requests = await optimize_in_world(seed=3)
    there, there_requests = await optimize_in_world(seed=3, executor=executor)
    assert there.score == here.score and there.baseline_score == here.baseline_score
    assert [(t.number, t.choice, t.scores) for t in there.trials] == [
        (t.number, t.choice, t.scores) for t in here.trials
    ]
    assert [(f.choice, f.scores) for f in there.full_evals] == [(f.choice, f.scores) for f in here.full_evals]
    assert program_state(there.program) == program_state(here.program)
    # The same LM requests, all made by the driver's client, and counted the same.
    assert Counter(map(last_user_of, there_requests)) == Counter(map(last_user_of, here_requests))
    assert there.usage.requests == here.usage.requests == len(here_requests)
    assert there.usage == here.usage  # tokens, calls and cache hits too


async def test_a_killed_worker_process_costs_a_retry_of_its_runs_never_a_wrong_score(
    fake_server: FakeOpenAIServer, executor: RayExecutor, tmp_path: Path
) -> None:
    fake_server.responder = answers
    program = PausingProgram(tmp_path, pause_seconds=60)
    examples = qa_examples(1, 9)
    examples[3] = Example(inputs={"question": "pause item-4?"}, labels={"answer": "ans-4"}, id="q4")
    killed: list[int] = []

    async def kill_the_paused_worker() -> None:
        pid = int((await wait_for_marks(tmp_path, "attempt-0-"))[0].rsplit("-", 1)[1])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    async with lm_for(fake_server) as lm:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(kill_the_paused_worker)
                evaluation = await evaluate(program, examples, exact_match, lm=lm, executor=executor)
    assert killed and killed[0] not in executor.worker_pids()  # the worker process was replaced
    assert [name.split("-")[1] for name in marks(tmp_path, "attempt-")] == ["0", "1"]  # one retry
    assert evaluation.scores == {f"q{i}": 0.0 if i % 3 == 0 else 1.0 for i in range(1, 9)}
    assert [r.error for r in evaluation.results] == [None] * 8


async def test_a_killed_relay_actor_is_replaced_and_its_runs_sent_again_never_scored(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    killed: list[object] = []

    def kill_the_relay_on_item_2(request: Any) -> str:
        if "item-2?" in request.last_user and not killed:
            killed.append(executor._relay)
            ray.kill(executor._relay)  # while the run waits for this reply
        return answers(request)

    fake_server.responder = kill_the_relay_on_item_2
    expected = {f"q{i}": 0.0 if i % 3 == 0 else 1.0 for i in range(1, 9)}
    async with lm_for(fake_server) as lm:
        with anyio.fail_after(60):
            # A program that answers "fallback" when its LM call fails: the lost reply is never its answer.
            during = await evaluate(
                CatchingProgram(), qa_examples(1, 9), exact_match, lm=lm, executor=executor
            )
            ray.kill(executor._relay)  # between evaluations, too
            after = await evaluate(
                CatchingProgram(), qa_examples(1, 9), exact_match, lm=lm, executor=executor
            )
    assert killed and executor._relay is not killed[0]
    for evaluation in (during, after):
        assert evaluation.scores == expected
        assert [r.prediction.answer for r in evaluation.results if r.prediction.answer == "fallback"] == []


async def test_a_worker_actor_dead_for_good_is_replaced_so_calling_again_resumes(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    ray.kill(executor._workers[0].handle)  # no restart: Ray gives this actor up
    async with lm_for(fake_server) as lm:
        with anyio.fail_after(60):
            with pytest.raises(WorkerLostError, match="was lost"):
                await evaluate(QAProgram(), qa_examples(1, 5), exact_match, lm=lm, executor=executor)
            evaluation = await evaluate(QAProgram(), qa_examples(1, 5), exact_match, lm=lm, executor=executor)
    assert evaluation.scores == {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}
    assert len(set(executor.worker_pids())) == 2


def relays_on_the_cluster() -> set[str]:
    """The ids of the relay actors on the cluster that are alive or being started."""
    from ray._private.state import actors  # Ray's own view; its state API needs the dashboard

    return {
        actor_id
        for actor_id, actor in actors().items()
        if actor["State"] != "DEAD" and actor["ActorClassName"].endswith("_Relay")
    }


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_relay_replacement_cancelled_while_it_starts_starts_no_relay(
    executor: RayExecutor,
) -> None:
    dead = executor._relay
    with anyio.fail_after(30):
        for _ in range(300):  # only this executor's left (those of closed ones are being stopped)
            if len(relays_on_the_cluster()) == 1:
                break
            await anyio.sleep(0.1)
        with anyio.move_on_after(0.05) as scope:  # long before a new actor process answers
            await executor._replace_relay(dead)
        assert scope.cancelled_caught and executor._relay is dead
        # Stopped at once, not left to start a process the executor will never use.
        for _ in range(5):
            if len(relays_on_the_cluster()) == 1:
                break
            await anyio.sleep(0.1)
    assert len(relays_on_the_cluster()) == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_relay_forgets_the_runs_that_are_over_however_many_it_served(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        with anyio.fail_after(120):
            evaluation = await evaluate(
                QAProgram(), qa_examples(1, 61), exact_match, lm=lm, executor=executor
            )
    assert len(evaluation.scores) == 60
    for _ in range(50):  # the last runs' closing calls may still be on their way
        kept = ray.get(executor._relay.__ray_call__.remote(lambda relay: len(relay._closed)))
        if kept <= 2 * 4:  # at most the runs of the last slots to close, not one per run served
            break
        await anyio.sleep(0.1)
    assert kept <= 2 * 4


async def optimize_on_ray(
    server: FakeOpenAIServer, executor: RayExecutor, run_dir: Path
) -> aprompt.OptimizeResult:
    async with lm_for(server) as lm:
        return await aprompt.optimize(
            TwoStageProgram(),
            examples(0, 60),
            metric,
            valset=examples(200, 230),
            lm=lm,
            budget=SMALL_BUDGET,
            seed=3,
            run_dir=run_dir,
            executor=executor,
        )


async def test_a_run_stopped_by_a_lost_relay_resumes_with_the_same_executor(tmp_path: Path) -> None:
    here, _ = await optimize_in_world(seed=3, run_dir=tmp_path / "here")
    world = World()
    async with (
        RayExecutor(workers=2, retries=0) as executor,
        FakeOpenAIServer(responder=world, api_key=TEST_API_KEY) as server,
    ):
        killed = False

        def kill_the_relay_once(request: Any) -> str:
            # Requests are counted as they finish, several at once under load: 120 may be passed over.
            nonlocal killed
            if not killed and len(server.chat_requests) >= 120:
                killed = True
                ray.kill(executor._relay)
            return str(world(request))

        server.responder = kill_the_relay_once
        with pytest.raises(WorkerLostError, match="calling again with this executor"):
            await optimize_on_ray(server, executor, tmp_path / "run")
        server.responder = world
        resumed = await optimize_on_ray(server, executor, tmp_path / "run")
    assert resumed.score == here.score and program_state(resumed.program) == program_state(here.program)
    assert [(t.number, t.choice, t.scores) for t in resumed.trials] == [
        (t.number, t.choice, t.scores) for t in here.trials
    ]


async def test_cancelling_an_evaluation_cancels_its_runs_on_the_workers(
    fake_server: FakeOpenAIServer, executor: RayExecutor, tmp_path: Path
) -> None:
    program = PausingProgram(tmp_path, pause_seconds=60)
    examples = [Example(inputs={"question": "pause"}, labels={"answer": "-"}, id="p0")]
    async with lm_for(fake_server) as lm:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as group:

                async def cancel_once_started() -> None:
                    await wait_for_marks(tmp_path, "attempt-")
                    group.cancel_scope.cancel()

                group.start_soon(cancel_once_started)
                await evaluate(program, examples, exact_match, lm=lm, executor=executor)
        assert not scope.cancelled_caught  # cancelled by the test, long before the pause ended
        assert await wait_for_marks(tmp_path, "cancelled-", seconds=20)
    assert fake_server.chat_requests == []


async def test_on_ray_the_drivers_concurrency_limit_holds_and_usage_is_exact(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    fake_server.latency = 0.05
    async with lm_for(fake_server, max_concurrency=2) as lm:
        evaluation = await evaluate(QAProgram(), qa_examples(1, 17), exact_match, lm=lm, executor=executor)
    assert len(evaluation.scores) == 16
    assert fake_server.max_in_flight == 2  # 8 runs at once on the workers, never more than 2 LM calls
    assert len(fake_server.chat_requests) == 16


async def test_max_lm_calls_stops_a_ray_run_with_exactly_what_it_sent_counted(
    executor: RayExecutor,
) -> None:
    here, _ = await optimize_in_world(seed=3, limits=Limits(max_lm_calls=300))
    there, requests = await optimize_in_world(seed=3, executor=executor, limits=Limits(max_lm_calls=300))
    assert there.stopped_by == here.stopped_by == "max_lm_calls"
    assert len(requests) == there.usage.requests == there.spent["lm_calls"] == here.spent["lm_calls"] <= 300
    assert there.score == here.score and len(there.trials) == len(here.trials)
    assert any(is_program_call(r) for r in requests)


async def test_an_lm_failure_on_ray_leaves_its_example_unscored_as_in_process(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    def fail_item_2(request: Any) -> Any:  # a generation the provider stopped on a fault
        return (
            Fault.reply("Answer: item", finish_reason="error")
            if "item-2?" in request.last_user
            else answers(request)
        )

    fake_server.responder = fail_item_2
    async with lm_for(fake_server, max_retries=0) as lm:
        here = await evaluate(QAProgram(), qa_examples(1, 4), exact_match, lm=lm)
        there = await evaluate(QAProgram(), qa_examples(1, 4), exact_match, lm=lm, executor=executor)
    assert outcome_of(there) == outcome_of(here)
    assert there.n_unscored == 1 and there.results[1].lm_failure and not there.results[1].lm_answered
    assert there.results[1].error is not None and there.results[1].error.startswith("IncompleteResponseError")


async def test_a_filtered_reply_on_ray_is_the_prompts_failure_as_in_process(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    def refuse_item_2(request: Any) -> Any:
        return Fault.content_filter() if "item-2?" in request.last_user else answers(request)

    fake_server.responder = refuse_item_2
    async with lm_for(fake_server, max_retries=0) as lm:
        here = await evaluate(QAProgram(), qa_examples(1, 4), exact_match, lm=lm)
        there = await evaluate(QAProgram(), qa_examples(1, 4), exact_match, lm=lm, executor=executor)
    assert outcome_of(there) == outcome_of(here)
    assert there.n_unscored == 0 and there.results[1].score == 0.0 and not there.results[1].lm_failure
    assert there.results[1].error is not None and there.results[1].error.startswith("ContentFilteredError")


async def test_a_program_on_ray_catches_the_drivers_lm_error_by_its_type_as_in_process(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    def refuse_item_2(request: Any) -> Any:
        return Fault.content_filter() if "item-2?" in request.last_user else answers(request)

    fake_server.responder = refuse_item_2
    async with lm_for(fake_server, max_retries=0) as lm:
        here = await evaluate(FallbackProgram(), qa_examples(1, 4), exact_match, lm=lm)
        there = await evaluate(FallbackProgram(), qa_examples(1, 4), exact_match, lm=lm, executor=executor)
    assert outcome_of(there) == outcome_of(here)
    assert there.errors == {} and there.results[1].prediction.answer == "refused (content_filter)"


async def test_an_executor_used_unopened_is_a_config_error(fake_server: FakeOpenAIServer) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match="not open"):
            await evaluate(QAProgram(), qa_examples(1, 2), exact_match, lm=lm, executor=RayExecutor())


async def test_module_level_predictors_with_their_own_lms_call_the_drivers_clients_on_ray(
    executor: RayExecutor,
) -> None:
    async with (
        FakeOpenAIServer(responder=answers, api_key=TEST_API_KEY, latency=0.02) as draft_server,
        FakeOpenAIServer(responder=answers, api_key=TEST_API_KEY) as check_server,
        OpenAICompatibleLM(
            "draft-model", draft_server.base_url, api_key=TEST_API_KEY, max_concurrency=1
        ) as d,
        OpenAICompatibleLM("check-model", check_server.base_url, api_key=TEST_API_KEY) as c,
    ):
        imported = DRAFT.lm, CHECK.lm  # the workers' imports hold clients of a dead address
        DRAFT.lm, CHECK.lm = d, c
        try:
            evaluation = await evaluate(draft_and_check, qa_examples(1, 9), exact_match, executor=executor)
        finally:
            DRAFT.lm, CHECK.lm = imported
    assert evaluation.errors == {}
    assert evaluation.scores == {f"q{i}": 0.0 if i % 3 == 0 else 1.0 for i in range(1, 9)}
    for server, model, instruction in (
        (draft_server, "draft-model", "Draft an answer."),
        (check_server, "check-model", "Check the draft."),
    ):
        requests = server.chat_requests
        assert [r.body["model"] if r.body else None for r in requests] == [model] * 8
        assert all(system_of(r).startswith(instruction) for r in requests)
        assert sorted(item_of(last_user_of(r)) for r in requests) == list(range(1, 9))
    # Each predictor's calls went through its own driver's client: its usage and its limit.
    assert d.usage.requests == c.usage.requests == 8
    assert draft_server.max_in_flight == 1


async def test_a_module_level_predictors_sampling_parameters_set_on_the_driver_reach_its_runs_on_ray(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    imported = dict(ANSWER.lm_params)
    ANSWER.lm_params["temperature"] = 0.25  # after the workers' own import of the predictor
    try:
        async with lm_for(fake_server) as lm:
            here = await evaluate(answer_question, qa_examples(1, 3), exact_match, lm=lm)
            there = await evaluate(answer_question, qa_examples(1, 3), exact_match, lm=lm, executor=executor)
    finally:
        ANSWER.lm_params = imported
    assert outcome_of(there) == outcome_of(here)
    bodies = [r.body or {} for r in fake_server.chat_requests]
    assert [body.get("temperature") for body in bodies] == [0.25] * 4


async def test_on_ray_a_known_rate_limit_holds_across_the_whole_cluster_with_no_429(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    # A minute-long window cannot be overrun in a test of seconds, so the server enforces the share of the
    # client's 600 requests a minute that the client promises per second (its burst cap: 30 in any second),
    # over 0.8 s windows to leave room for network delays. Eight runs in flight on two worker processes
    # send faster than that: only one limit for the whole cluster keeps them under it.
    fake_server.responder = answers
    fake_server.rate_limit = ServerRateLimit(requests_per_minute=30, period=0.8)
    async with lm_for(fake_server, requests_per_minute=600) as lm:
        evaluation = await evaluate(QAProgram(), qa_examples(1, 76), exact_match, lm=lm, executor=executor)
    statuses = Counter(r.status for r in fake_server.chat_requests)
    assert statuses == {200: 75}
    assert len(evaluation.scores) == 75 and lm.usage.rate_limited == 0
    arrived = sorted(r.started for r in fake_server.chat_requests)
    assert arrived[60] - arrived[0] >= 1.8  # the limit really paced the cluster: three bursts of 30


async def test_cancelling_an_evaluation_frees_every_worker_slot_for_the_next_one(
    fake_server: FakeOpenAIServer, executor: RayExecutor, tmp_path: Path
) -> None:
    fake_server.responder = answers
    program = SleepingProgram(tmp_path, pause_seconds=120)
    slots = 2 * 4  # workers * runs_per_worker of the fixture's executor: every slot of the cluster
    paused = [
        Example(inputs={"question": f"pause item-{i}?"}, labels={"answer": "-"}, id=f"p{i}")
        for i in range(slots)
    ]
    async with lm_for(fake_server) as lm:
        async with anyio.create_task_group() as group:

            async def cancel_once_all_started() -> None:
                await wait_for_marks(tmp_path, "started-", count=slots)
                group.cancel_scope.cancel()

            group.start_soon(cancel_once_all_started)
            with anyio.fail_after(60):
                await evaluate(program, paused, exact_match, lm=lm, executor=executor)
        with anyio.fail_after(30):  # far less than the pauses: the cancelled runs hold no slot
            await wait_for_marks(tmp_path, "cancelled-", count=slots)
            evaluation = await evaluate(program, qa_examples(1, 9), exact_match, lm=lm, executor=executor)
    assert evaluation.scores == {f"q{i}": 0.0 if i % 3 == 0 else 1.0 for i in range(1, 9)}


async def test_a_run_stopped_on_ray_resumes_on_ray_to_the_in_process_result(
    executor: RayExecutor, tmp_path: Path
) -> None:
    # Both with a run_dir: a run's LM cache lives there, so both send each distinct request once.
    here, here_requests = await optimize_in_world(seed=3, run_dir=tmp_path / "here")
    run_dir = tmp_path / "run"
    stopped, _ = await optimize_in_world(
        seed=3, executor=executor, run_dir=run_dir, limits=Limits(max_lm_calls=300)
    )
    # The limit stopped the first call, so raising it warns that the result may differ; here it does not.
    with pytest.warns(InexactResumeWarning, match="limits were raised"):
        resumed, resumed_requests = await optimize_in_world(seed=3, executor=executor, run_dir=run_dir)
    assert stopped.stopped_by == "max_lm_calls" and resumed.stopped_by is None
    assert resumed.score == here.score and program_state(resumed.program) == program_state(here.program)
    assert [(t.number, t.choice, t.scores) for t in resumed.trials] == [
        (t.number, t.choice, t.scores) for t in here.trials
    ]
    # The resumed run read back what the stopped one paid for (its journal and cache in run_dir), and its
    # count continues the stopped run's.
    assert len(here_requests) - stopped.spent["lm_calls"] <= len(resumed_requests) < len(here_requests)
    assert resumed.spent["lm_calls"] == stopped.spent["lm_calls"] + len(resumed_requests)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_workers_that_cannot_start_are_a_config_error_when_the_executor_opens() -> None:
    # A runtime_env Ray cannot set up (here, a package that is not in the cluster) fails every worker
    # alike: the executor refuses to open instead of losing every run later.
    broken = {"num_cpus": 1, "runtime_env": {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"}}
    with anyio.fail_after(60), pytest.raises(ConfigError, match=r"Ray workers could not start.*RuntimeEnv"):
        async with RayExecutor(workers=1, worker_options=broken):
            pass
    local_dir = {"num_cpus": 1, "runtime_env": {"working_dir": "."}}  # Ray ships one only for a whole job
    with pytest.raises(ConfigError, match="Ray refused worker_options"):
        async with RayExecutor(workers=1, worker_options=local_dir):
            pass


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_workers_that_find_no_room_are_named_without_their_runtime_envs_secrets() -> None:
    options = {
        "num_cpus": 1,
        "resources": {"absent-accelerator": 1},  # no node has it: the workers never start
        "runtime_env": {"env_vars": {"SEARCH_API_KEY": "sk-live-tool-key"}},
    }
    with pytest.raises(ConfigError, match="did not start within") as raised:
        async with RayExecutor(workers=1, worker_options=options, ready_timeout=1):
            pass
    assert "absent-accelerator" in str(raised.value)
    assert "sk-live-tool-key" not in str(raised.value)


async def test_the_lm_of_a_use_lm_block_serves_runs_on_ray_as_it_does_in_process(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        with use_lm(lm):  # no lm= to evaluate(): the block's LM is the runs' default
            here = await evaluate(QAProgram(), qa_examples(1, 5), exact_match)
            there = await evaluate(QAProgram(), qa_examples(1, 5), exact_match, executor=executor)
    assert outcome_of(there) == outcome_of(here)
    assert there.errors == {} and lm.usage.requests == len(fake_server.chat_requests) == 8


class LockingProgram(QAProgram):
    """A program holding a lock: it runs in-process, but cannot be pickled for the workers."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


async def test_a_program_or_inputs_that_cannot_be_pickled_are_a_config_error_naming_the_cause(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    locked = [Example(inputs={"question": threading.Lock()}, labels={"answer": "-"}, id="locked")]
    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match=r"program cannot be pickled.*_thread.lock"):
            await evaluate(LockingProgram(), qa_examples(1, 3), exact_match, lm=lm, executor=executor)
        with pytest.raises(ConfigError, match="example 'locked' cannot be sent to a Ray worker"):
            await evaluate(QAProgram(), locked, exact_match, lm=lm, executor=executor)
        assert [w.busy for w in executor._workers] == [0, 0]  # the refused run holds no worker
    assert fake_server.chat_requests == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_worker_that_refuses_queued_runs_is_a_config_error_naming_the_option(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = answers
    options = {"num_cpus": 1, "max_pending_calls": 1}
    async with RayExecutor(workers=1, runs_per_worker=4, worker_options=options) as executor:
        async with lm_for(fake_server) as lm:
            with (
                anyio.fail_after(60),
                pytest.raises(ConfigError, match="more than worker_options' max_pending_calls"),
            ):
                await evaluate(QAProgram(), qa_examples(1, 9), exact_match, lm=lm, executor=executor)


async def test_inputs_a_worker_cannot_load_are_a_config_error_naming_the_example(
    fake_server: FakeOpenAIServer, executor: RayExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "driver_only_types.py").write_text("class Question(str):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the driver's path only: the workers cannot import it
    question = importlib.import_module("driver_only_types").Question("What is the answer for item-1?")
    examples = [Example(inputs={"question": question}, labels={"answer": "ans-1"}, id="q1")]
    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match=r"'q1' could not be loaded.*No module named 'driver_only"):
            await evaluate(QAProgram(), examples, exact_match, lm=lm, executor=executor)
    assert fake_server.chat_requests == []


async def test_a_result_that_cannot_be_pickled_is_a_config_error_naming_its_example(
    fake_server: FakeOpenAIServer, executor: RayExecutor
) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match=r"result for example 'q1' cannot be sent back.*generator"):
            await evaluate(LazyAnswerProgram(), qa_examples(1, 2), exact_match, lm=lm, executor=executor)


async def test_a_predictor_out_of_the_programs_reach_on_ray_is_reported_by_the_driver_once(
    executor: RayExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    def reports() -> list[str]:
        return [r.getMessage() for r in caplog.records if "not among the predictors" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="aprompt"):
        await optimize_in_world(program=CallsAHiddenPredictor())
        here = reports()
        caplog.clear()
        await optimize_in_world(program=CallsAHiddenPredictor(), executor=executor)
    assert len(here) == 1 and "Predict('question -> rewritten')" in here[0]
    assert reports() == here  # the worker's import of the module runs it; the driver says so, once


def test_closing_one_executor_leaves_the_ray_it_started_to_another_still_open() -> None:
    """The first executor started Ray; a second uses it; closing the first must not shut Ray down under
    the second (its runs would all fail as lost), and the last one to close stops it. In a fresh process:
    here Ray is already running."""
    script = Path(__file__).with_name("_two_executors.py")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env, check=False
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


class _FailingRelayHandle:
    """A relay actor's handle whose ``ask`` fails with one of Ray's own errors, as a broken cluster
    connection makes it (no healthy local cluster can be made to raise these)."""

    def __init__(self, error: BaseException) -> None:
        self.ask = self
        self._error = error

    def remote(self, run_id: int, request: object) -> Any:
        async def failing() -> Any:
            raise self._error

        return failing()


@pytest.mark.parametrize(
    "error",
    [
        ray.exceptions.RaySystemError("the raylet's connection broke"),
        ray.exceptions.GetTimeoutError("get timed out"),
        ray.exceptions.RayActorError(),
    ],
    ids=["system", "timeout", "actor"],
)
async def test_any_ray_error_asking_the_relay_voids_the_attempt_however_the_program_caught_it(
    error: BaseException,
) -> None:
    # Only the relay's death voided it: another Ray error reached the program as its LM call's failure,
    # and a program that answers a fallback on any error was scored on it.
    channel = _ActorChannel(_FailingRelayHandle(error), run_id=1)
    with pytest.raises(RelayLost):
        await channel.ask(LMRequest(0, [{"role": "user", "content": "hi"}]))
    assert channel.lost
