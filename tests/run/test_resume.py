"""A run journaled in run_dir resumes after an interruption to the same result as an uninterrupted run."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import aprompt
from aprompt import InexactResumeWarning, OpenAICompatibleLM
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

BUDGET = {"n_candidates": 4, "val_size": 40, "n_trials": 12, "minibatch_size": 15, "parallel_trials": 2}


async def _run(server: FakeOpenAIServer, run_dir: Path | None, **options: Any) -> aprompt.OptimizeResult:
    async with OpenAICompatibleLM("world", server.base_url, api_key="sk-world", max_concurrency=64) as lm:
        return await aprompt.optimize(
            TwoStageProgram(),
            examples(0, 80),
            options.pop("metric", metric),
            valset=examples(200, 240),
            lm=lm,
            budget=BUDGET,
            run_dir=run_dir,
            **{"seed": 3, **options},
        )


def _summary(result: aprompt.OptimizeResult) -> tuple[Any, ...]:
    return (
        dict(result.best_choice),
        result.score,
        [(t.number, dict(t.choice), t.score) for t in result.trials],
        [(dict(f.choice), f.score) for f in result.full_evals],
        result.candidates.describe(),
    )


@pytest.mark.parametrize("stop_at_share", [0.05, 0.2, 0.4, 0.65, 0.9])
async def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, stop_at_share: float
) -> None:
    async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
        events: list[aprompt.Event] = []
        reference = await _run(server, tmp_path / "reference", on_event=events.append)
        reference_calls = len(server.chat_requests)
        server.reset_records()
        # Interrupted at that share of the uninterrupted run's events (its last is RunFinished).
        stop_after_events = max(1, int(stop_at_share * (len(events) - 1)))
        seen = 0

        with anyio.CancelScope() as scope:

            def stop_at(event: aprompt.Event) -> None:
                nonlocal seen
                seen += 1
                if seen == stop_after_events:
                    scope.cancel()

            await _run(server, tmp_path / "run", on_event=stop_at)
        assert scope.cancelled_caught, "the run was interrupted"
        resumed = await _run(server, tmp_path / "run")
        repeated = len(server.chat_requests) - reference_calls
    assert _summary(resumed) == _summary(reference)
    # Only calls in flight at the interruption are paid twice.
    assert 0 <= repeated <= 0.1 * reference_calls, (repeated, reference_calls)


async def test_a_different_config_on_an_existing_run_dir_is_refused(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
        await _run(server, tmp_path / "run")
        async with OpenAICompatibleLM("world", server.base_url, api_key="sk-world") as lm:
            with pytest.raises(aprompt.ConfigError, match="different config"):
                await aprompt.optimize(
                    TwoStageProgram(),
                    examples(0, 80),
                    metric,
                    valset=examples(200, 240),
                    lm=lm,
                    budget=BUDGET,
                    seed=4,
                    run_dir=tmp_path / "run",
                )


async def test_resume_false_starts_over(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
        await _run(server, tmp_path / "run")
        result = await _run(server, tmp_path / "run", resume=False)
    assert len(result.trials) == BUDGET["n_trials"]


async def test_a_finished_run_replays_from_its_journal_without_lm_calls(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
        first = await _run(server, tmp_path / "run")
        before = len(server.chat_requests)
        second = await _run(server, tmp_path / "run")
        assert len(server.chat_requests) == before
    assert _summary(second) == _summary(first)


async def test_the_same_numbers_in_other_types_resume_the_same_run(tmp_path: Path) -> None:
    # A numpy seed and a threshold of 1 are the run of seed 3 and threshold 1.0, not a different config.
    async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
        first = await _run(server, tmp_path / "run", seed=np.int64(3), bootstrap_threshold=1)
        before = len(server.chat_requests)
        second = await _run(server, tmp_path / "run", bootstrap_threshold=1.0)
        assert len(server.chat_requests) == before
    assert _summary(second) == _summary(first)


class _Judge:
    """A metric object with a setting (a score for a near miss) and a count it keeps of its calls."""

    def __init__(self, partial_credit: float) -> None:
        self.partial_credit = partial_credit
        self.calls = 0

    def __call__(self, example: aprompt.Example, prediction: Any) -> float:
        self.calls += 1
        right = metric(example, prediction)
        return 1.0 if right else self.partial_credit


async def test_a_metric_object_with_another_setting_does_not_resume_the_run(tmp_path: Path) -> None:
    # The same class with another setting scores otherwise: resuming its run would mix the two metrics'
    # scores in one search and return a program chosen on them.
    async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
        await _run(server, tmp_path / "run", metric=_Judge(0.0))
        with pytest.raises(aprompt.ConfigError, match="metric settings"):
            await _run(server, tmp_path / "run", metric=_Judge(0.5))


async def test_a_metric_object_counting_its_calls_resumes_in_the_same_process(tmp_path: Path) -> None:
    # What the run itself changes in the metric (its count of calls) is no setting: calling again with the
    # same object replays the run from its journal.
    judge = _Judge(0.0)
    async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
        first = await _run(server, tmp_path / "run", metric=judge)
        before = len(server.chat_requests)
        assert judge.calls > 0
        second = await _run(server, tmp_path / "run", metric=judge)
        assert len(server.chat_requests) == before
    assert _summary(second) == _summary(first)


async def _judged_runs(
    tmp_path: Path, **options: Any
) -> tuple[aprompt.OptimizeResult, aprompt.OptimizeResult, list[int], list[warnings.WarningMessage]]:
    """A run whose metric asks a judge (an aprompt client the run is not given), uninterrupted, and
    stopped mid-way through its first evaluation (after the judge's tenth answer) then resumed. Returns
    both results, the judge requests of the uninterrupted run, before the stop and on resume, and the
    resumed call's warnings."""
    stall_after: int | None = None
    answered, stalled = 0, anyio.Event()

    async def judge_says(request: ChatRequest) -> str:
        nonlocal answered
        if stall_after is not None and answered >= stall_after:
            stalled.set()
            await anyio.sleep(60)
        answered += 1
        return "yes" if request.last_user.startswith("Right? yes") else "no"

    async with (
        FakeOpenAIServer(responder=World(), api_key="sk-world") as server,
        FakeOpenAIServer(responder=judge_says, api_key="sk-judge") as judge_server,
        OpenAICompatibleLM("judge", judge_server.base_url, api_key="sk-judge", max_concurrency=1) as judge,
    ):

        async def by_judge(example: aprompt.Example, prediction: Any) -> bool:
            verdict = "yes" if metric(example, prediction) else "no"
            return (await judge.chat([{"role": "user", "content": f"Right? {verdict}"}])).text == "yes"

        reference = await _run(server, tmp_path / "reference", metric=by_judge, **options)
        uninterrupted = len(judge_server.chat_requests)
        judge_server.reset_records()
        stall_after, answered = 10, 0
        async with anyio.create_task_group() as tg:

            async def stop_at_stall() -> None:
                await stalled.wait()
                # The program's requests sent before the stall are let finish (those after it wait on the
                # judge): how many a stop finds in flight would otherwise follow the machine's load, and
                # each is paid again on resume.
                while server.in_flight:  # noqa: ASYNC110 - the fake server keeps a count, not an event
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

            tg.start_soon(stop_at_stall)
            await _run(server, tmp_path / "run", metric=by_judge, **options)
        before_stop = len(judge_server.chat_requests)  # the one in flight at the stop is not recorded
        stall_after = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resumed = await _run(server, tmp_path / "run", metric=by_judge, **options)
        again = len(judge_server.chat_requests) - before_stop
    return reference, resumed, [uninterrupted, before_stop, again], caught


async def test_a_resumed_run_does_not_pay_again_for_the_answers_of_its_metrics_judge(tmp_path: Path) -> None:
    # The stop leaves the first evaluation unfinished: it runs again on resume, its program's answers
    # from the cache, and its judge's too.
    reference, resumed, (uninterrupted, before_stop, again), _ = await _judged_runs(tmp_path)
    assert _summary(resumed) == _summary(reference)
    assert before_stop == 10
    # Only the request in flight at the stop is sent again (before: the ten answered too).
    assert before_stop + again == uninterrupted, (before_stop, again, uninterrupted)


async def test_a_run_with_a_judge_stopped_mid_step_resumes_under_a_limit_to_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    # The judge's answers are the unfinished step's own, as a predictor's are: before, they were not
    # counted as answered, so the resumed run decided on other amounts (and said it might differ).
    limits = aprompt.Limits(max_lm_calls=700)
    reference, resumed, _, caught = await _judged_runs(tmp_path, limits=limits)
    assert reference.stopped_by == "max_lm_calls"
    assert [str(w.message) for w in caught if issubclass(w.category, InexactResumeWarning)] == []
    assert _summary(resumed) == _summary(reference)
