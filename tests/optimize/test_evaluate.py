"""The evaluator: scores, failures, LM outages, concurrency, order, traces and prompt overrides."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import anyio
import pytest

import aprompt
from aprompt import CacheError, ConfigError, Example, LMError, Predict, Prediction, ResponseCache
from aprompt._optimize.evaluate import evaluate
from aprompt.program.overrides import PromptOverride
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault
from tests.optimize.qa_task import (
    ORIGINAL_INSTRUCTION,
    QAProgram,
    answers,
    exact_match,
    lm_for,
    messages_of,
    qa_examples,
    system_of,
)

pytestmark = pytest.mark.anyio


async def test_a_sync_bool_metric_scores_right_answers_1_and_wrong_ones_0(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        evaluation = await evaluate(QAProgram(), qa_examples(1, 7), exact_match, lm=lm)
    # Items 3 and 6 are answered wrong.
    assert evaluation.scores == {"q1": 1.0, "q2": 1.0, "q3": 0.0, "q4": 1.0, "q5": 1.0, "q6": 0.0}
    assert evaluation.mean == pytest.approx(4 / 6)
    assert evaluation.n_failed == 0 and evaluation.errors == {}


async def test_an_async_float_metric_is_awaited(fake_server: FakeOpenAIServer) -> None:
    async def half(example: Example, prediction: Any) -> float:
        return 0.5

    async with lm_for(fake_server) as lm:
        evaluation = await evaluate(QAProgram(), qa_examples(0, 4), half, lm=lm)
    assert evaluation.scores == {f"q{i}": 0.5 for i in range(4)}
    assert evaluation.mean == 0.5


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [(1.5, "returned 1.5, outside"), ("yes", "returned str 'yes'"), (None, "returned NoneType None")],
)
async def test_a_metric_value_that_is_not_a_score_aborts_the_evaluation_naming_the_metric(
    fake_server: FakeOpenAIServer, bad_value: object, message: str
) -> None:
    def odd_metric(example: Example, prediction: Any) -> object:
        return bad_value if example.id == "q2" else 1.0

    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match=f"metric .*odd_metric {message}") as info:
            await evaluate(QAProgram(), qa_examples(0, 4), odd_metric, lm=lm)  # type: ignore[arg-type]
    assert str(info.value).endswith("for example q2)")  # the one example that reproduces it


@pytest.mark.parametrize("metric", [None, "exact_match", lambda prediction: True])
async def test_a_metric_that_cannot_be_called_is_refused_before_any_lm_call(
    fake_server: FakeOpenAIServer, metric: Any
) -> None:
    # Called, each would raise a TypeError, scored 0 on every example: a mean of 0.0 for a metric never run.
    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match="metric"):
            await evaluate(QAProgram(), qa_examples(0, 4), metric, lm=lm)
    assert fake_server.chat_requests == []


async def test_an_lm_not_yet_entered_is_refused_before_any_program_call(tmp_path: Path) -> None:
    # Passed as is, each example raised an AttributeError, scored 0: a mean of 0.0 for a program never run.
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="async context manager: pass the LM it yields"):
        await evaluate(QAProgram(), qa_examples(0, 4), exact_match, lm=aprompt.local_lm(model))  # type: ignore[arg-type]


async def test_numpy_scores_are_scores(fake_server: FakeOpenAIServer) -> None:
    numpy = pytest.importorskip("numpy")
    values = {"q0": numpy.bool_(True), "q1": numpy.float64(0.25), "q2": numpy.int64(0)}

    async with lm_for(fake_server) as lm:
        evaluation = await evaluate(QAProgram(), qa_examples(0, 3), lambda e, p: values[e.id], lm=lm)
    assert evaluation.scores == {"q0": 1.0, "q1": 0.25, "q2": 0.0}


async def test_a_program_that_raises_scores_0_with_its_error_recorded(fake_server: FakeOpenAIServer) -> None:
    class Fragile(QAProgram):
        async def __call__(self, question: str) -> Prediction:
            if "item-1?" in question:
                raise RuntimeError("cannot handle item 1")
            return await super().__call__(question)

    async with lm_for(fake_server) as lm:
        evaluation = await evaluate(Fragile(), qa_examples(0, 3), lambda e, p: 1.0, lm=lm)
    assert evaluation.scores == {"q0": 1.0, "q1": 0.0, "q2": 1.0}
    assert evaluation.errors == {"q1": "RuntimeError: cannot handle item 1"}
    assert evaluation.n_failed == 1


class AwaitsACancelledFuture(QAProgram):
    """On item 1, awaits a future that other code cancelled: the program's own ``CancelledError``,
    not a cancellation of the evaluation."""

    async def __call__(self, question: str) -> Prediction:
        prediction = await super().__call__(question)
        if "item-1?" in question:
            future = asyncio.get_running_loop().create_future()
            future.cancel("the shared lookup was abandoned")
            await future
        return prediction


async def test_a_cancelled_error_of_the_programs_own_scores_its_example_0_and_drops_no_other(
    fake_server: FakeOpenAIServer,
) -> None:
    async with lm_for(fake_server) as lm:
        evaluation = await evaluate(AwaitsACancelledFuture(), qa_examples(0, 6), lambda e, p: 1.0, lm=lm)
    assert [r.example_id for r in evaluation.results] == [f"q{i}" for i in range(6)]
    assert evaluation.scores == {"q0": 1.0, "q1": 0.0, **{f"q{i}": 1.0 for i in range(2, 6)}}
    assert evaluation.errors == {"q1": "CancelledError: the shared lookup was abandoned"}


async def test_a_metric_raising_cancelled_error_scores_its_example_0_and_drops_no_other(
    fake_server: FakeOpenAIServer,
) -> None:
    async def judged(example: Example, prediction: Prediction) -> float:
        if example.id == "q1":
            raise asyncio.CancelledError("the judge call was abandoned")
        return 1.0

    async with lm_for(fake_server) as lm:
        evaluation = await evaluate(QAProgram(), qa_examples(0, 6), judged, lm=lm)
    assert [r.example_id for r in evaluation.results] == [f"q{i}" for i in range(6)]
    assert evaluation.scores == {"q0": 1.0, "q1": 0.0, **{f"q{i}": 1.0 for i in range(2, 6)}}
    assert evaluation.errors == {"q1": "metric CancelledError: the judge call was abandoned"}


async def test_an_lm_cache_closed_under_the_program_stops_the_evaluation_instead_of_scoring_0(
    fake_server: FakeOpenAIServer,
) -> None:
    # No prompt causes or fixes a closed cache: scored 0, it would pass for the prompt's wrong answer.
    cache = ResponseCache.memory_only()
    cache.close()
    async with lm_for(fake_server, cache=cache) as lm:
        with pytest.raises(CacheError, match="closed"):
            await evaluate(QAProgram(), qa_examples(0, 3), lambda e, p: 1.0, lm=lm)
    assert fake_server.chat_requests == []


async def test_a_setup_fault_in_a_metrics_own_task_group_stops_the_evaluation(
    fake_server: FakeOpenAIServer,
) -> None:
    # An LM-judged metric asks its judge in a task group: the judge's ConfigError (a parameter its
    # endpoint refuses) arrives wrapped in a group, and must stop the evaluation, not score 0.
    async def judged(example: Example, prediction: Prediction) -> float:
        async def ask_judge() -> None:
            raise ConfigError("the judge's endpoint refuses the parameter 'logprobs'")

        async with anyio.create_task_group() as group:
            group.start_soon(ask_judge)
        return 1.0

    async with lm_for(fake_server) as lm:
        with pytest.raises(ConfigError, match="refuses the parameter"):
            await evaluate(QAProgram(), qa_examples(0, 3), judged, lm=lm)


async def test_an_lm_failure_after_retries_leaves_the_example_unscored(fake_server: FakeOpenAIServer) -> None:
    fake_server.queue_faults(Fault.http_status(500))
    async with lm_for(fake_server, max_retries=0) as lm:
        # One example at a time, so the first example's request is the one that fails.
        evaluation = await evaluate(QAProgram(), qa_examples(0, 4), lambda e, p: 1.0, lm=lm, concurrency=1)
    assert [r.score for r in evaluation.results] == [None, 1.0, 1.0, 1.0]
    assert evaluation.results[0].lm_failure
    assert "ServerError" in evaluation.errors["q0"]
    assert evaluation.mean == 1.0, "an unscored example stays out of the mean"
    assert evaluation.n_unscored == 1 and evaluation.n_failed == 0
    assert "q0" not in evaluation.scores


async def test_an_evaluation_with_every_lm_call_failing_has_no_mean() -> None:
    async with FakeOpenAIServer(fault_rates=[(Fault.http_status(503), 1.0)]) as server:
        async with lm_for(server, max_retries=0) as lm:
            evaluation = await evaluate(QAProgram(), qa_examples(0, 3), lambda e, p: 1.0, lm=lm)
    assert evaluation.mean is None
    assert evaluation.n_unscored == 3 and evaluation.scores == {}


async def test_the_concurrency_limit_bounds_the_runs_in_flight_and_is_reached() -> None:
    async with FakeOpenAIServer(latency=0.03) as server:
        async with lm_for(server) as lm:
            await evaluate(QAProgram(), qa_examples(0, 12), lambda e, p: 1.0, lm=lm, concurrency=4)
        assert server.max_in_flight == 4
        assert len(server.chat_requests) == 12


async def test_results_are_in_the_order_of_the_examples() -> None:
    # Random latencies make the runs finish out of order.
    async with FakeOpenAIServer(latency=lambda rng: rng.uniform(0.0, 0.03)) as server:
        async with lm_for(server) as lm:
            examples = qa_examples(0, 16)
            evaluation = await evaluate(QAProgram(), examples, lambda e, p: 1.0, lm=lm)
        arrivals_in_finish_order = [r.started for r in server.chat_requests]
    assert arrivals_in_finish_order != sorted(arrivals_in_finish_order), "runs finished out of order"
    assert [r.example_id for r in evaluation.results] == [e.id for e in examples]


async def test_a_program_changing_its_inputs_in_place_leaves_the_example_as_it_was_for_its_next_run(
    fake_server: FakeOpenAIServer,
) -> None:
    # Else every later run of the example (each trial, the final evaluation) would see other inputs.
    class Appending:
        def __init__(self) -> None:
            self.answer = Predict("question, passages -> answer")

        async def __call__(self, question: str, passages: list[str], meta: dict[str, list[str]]) -> Any:
            passages.append("seen")
            meta["tags"].sort()
            meta["tags"].append("seen")
            return await self.answer(question=question, passages=[*passages, *meta["tags"]])

    example = Example(
        inputs={
            "question": "What is the answer for item-1?",
            "passages": ["p1"],
            "meta": {"tags": ["b", "a"]},
        },
        labels={"answer": "ans-1"},
        id="q1",
    )
    async with lm_for(fake_server) as lm:
        for _ in range(2):
            await evaluate(Appending(), [example], exact_match, lm=lm, collect_traces=True)
    first, second = (messages_of(r) for r in fake_server.chat_requests)
    assert first == second
    assert example.inputs == {
        "question": "What is the answer for item-1?",
        "passages": ["p1"],
        "meta": {"tags": ["b", "a"]},
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda: (["p1"],),  # a list inside a tuple
        lambda: collections.defaultdict(list, {0: ["p1"]}),
        lambda: collections.OrderedDict({0: ["p1"]}),
    ],
    ids=["tuple", "defaultdict", "OrderedDict"],
)
async def test_a_program_changing_a_list_in_a_tuple_or_a_kind_of_dict_leaves_the_example_as_it_was(
    fake_server: FakeOpenAIServer, make: Any
) -> None:
    class Appending:
        def __init__(self) -> None:
            self.answer = Predict("question, passages -> answer")

        async def __call__(self, question: str, passages: Any) -> Any:
            passages[0].append("seen")
            return await self.answer(question=question, passages=passages[0])

    example = Example({"question": "What is the answer for item-1?", "passages": make()}, {"answer": "x"})
    async with lm_for(fake_server) as lm:
        for _ in range(2):
            await evaluate(Appending(), [example], exact_match, lm=lm)
    first, second = (messages_of(r) for r in fake_server.chat_requests)
    assert first == second
    assert example.inputs["passages"] == make()
    assert type(example.inputs["passages"]) is type(make())


async def test_traces_are_kept_only_when_asked(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = answers
    program = QAProgram()
    async with lm_for(fake_server) as lm:
        plain = await evaluate(program, qa_examples(1, 3), exact_match, lm=lm)
        traced = await evaluate(program, qa_examples(1, 3), exact_match, lm=lm, collect_traces=True)
    assert all(r.trace == () for r in plain.results)
    entries = [r.trace for r in traced.results]
    assert [len(t) for t in entries] == [1, 1]
    first = entries[0][0]
    assert first.predictor_name == "answer"
    assert first.inputs == {"question": "What is the answer for item-1?"}
    assert first.outputs == {"answer": "ans-1"}


async def test_prompt_overrides_change_the_messages_the_server_sees(fake_server: FakeOpenAIServer) -> None:
    program = QAProgram()
    override = PromptOverride(
        "Reply with the item's secret answer.", ({"question": "What is item-99?", "answer": "ans-99"},)
    )
    async with lm_for(fake_server) as lm:
        await evaluate(program, qa_examples(0, 1), lambda e, p: 1.0, lm=lm, prompts={"answer": override})
        await evaluate(program, qa_examples(0, 1), lambda e, p: 1.0, lm=lm)
    overridden, own = fake_server.chat_requests
    assert system_of(overridden).startswith("Reply with the item's secret answer.")
    assert [m["content"] for m in messages_of(overridden)[1:3]] == [
        "Question: What is item-99?",
        "Answer: ans-99",
    ]
    assert system_of(own).startswith(ORIGINAL_INSTRUCTION)
    assert len(messages_of(own)) == 2
    assert program.answer.instruction == ORIGINAL_INSTRUCTION and program.answer.demos == []


async def test_an_lm_failure_inside_the_programs_task_group_leaves_the_example_unscored(
    fake_server: FakeOpenAIServer,
) -> None:
    class TwoAtOnce(QAProgram):
        async def __call__(self, question: str) -> Prediction:
            found: list[Prediction] = []

            async def ask() -> None:
                found.append(await self.answer(question=question))

            async with anyio.create_task_group() as group:
                group.start_soon(ask)
                group.start_soon(ask)
            return found[0]

    fake_server.queue_faults(Fault.http_status(500))
    async with lm_for(fake_server, max_retries=0) as lm:
        evaluation = await evaluate(TwoAtOnce(), qa_examples(0, 2), lambda e, p: 1.0, lm=lm, concurrency=1)
    assert [r.score for r in evaluation.results] == [None, 1.0]
    assert "ServerError" in evaluation.errors["q0"]


async def test_an_lm_failure_a_program_reraised_as_its_own_error_leaves_the_example_unscored(
    fake_server: FakeOpenAIServer,
) -> None:
    class Explaining(QAProgram):
        """Says which step failed, keeping the LM failure as the cause (``raise ... from``)."""

        async def __call__(self, question: str) -> Prediction:
            try:
                return await super().__call__(question)
            except LMError as exc:
                raise RuntimeError(f"the answer step failed on {question!r}") from exc

    fake_server.queue_faults(Fault.http_status(500))
    async with lm_for(fake_server, max_retries=0) as lm:
        evaluation = await evaluate(Explaining(), qa_examples(0, 3), lambda e, p: 1.0, lm=lm, concurrency=1)
    assert [r.score for r in evaluation.results] == [None, 1.0, 1.0], "a provider fault is no wrong answer"
    assert evaluation.results[0].lm_failure and "ServerError" in evaluation.errors["q0"]


async def test_an_lm_failure_a_program_raised_its_own_error_while_handling_leaves_the_example_unscored(
    fake_server: FakeOpenAIServer,
) -> None:
    class Explaining(QAProgram):
        """Says which step failed from inside the ``except`` block, without ``from``: Python keeps the LM
        failure as the context, and it is still the provider's fault. ``from None`` disowns it."""

        def __init__(self, disown: bool) -> None:
            super().__init__()
            self.disown = disown

        async def __call__(self, question: str) -> Prediction:
            try:
                return await super().__call__(question)
            except LMError:
                if self.disown:
                    raise RuntimeError("no answer, whatever the reason") from None
                raise RuntimeError(f"the answer step failed on {question!r}")  # noqa: B904

    async with lm_for(fake_server, max_retries=0) as lm:
        fake_server.queue_faults(Fault.http_status(500))
        kept = await evaluate(Explaining(False), qa_examples(0, 3), lambda e, p: 1.0, lm=lm, concurrency=1)
        fake_server.queue_faults(Fault.http_status(500))
        disowned = await evaluate(Explaining(True), qa_examples(3, 6), lambda e, p: 1.0, lm=lm, concurrency=1)
    assert [r.score for r in kept.results] == [None, 1.0, 1.0], "a provider fault is no wrong answer"
    assert kept.results[0].lm_failure and "ServerError" in kept.errors["q0"]
    assert [r.score for r in disowned.results] == [0.0, 1.0, 1.0]
    assert disowned.errors == {"q3": "RuntimeError: no answer, whatever the reason"}
