"""``aprompt.evaluate`` takes mappings with ``input_fields`` like ``optimize``, and its per-example table
says which examples the program fails: inputs, output, expected labels and score."""

from __future__ import annotations

from typing import Any

import pytest

import aprompt
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.qa_task import QAProgram, answers, exact_match, lm_for


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def rows(start: int, stop: int) -> list[dict[str, str]]:
    """Plain mappings: the question (the program's input) and the expected answer."""
    return [
        {"question": f"What is the answer for item-{i}?", "answer": f"ans-{i}"} for i in range(start, stop)
    ]


@pytest.mark.anyio
async def test_evaluate_scores_mappings_split_by_input_fields(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = answers  # right unless the item is a multiple of 3
    async with lm_for(fake_server) as lm:
        evaluation = await aprompt.evaluate(
            QAProgram(), rows(1, 10), exact_match, input_fields=["question"], lm=lm
        )
    assert [r.score for r in evaluation.results] == [0.0 if i % 3 == 0 else 1.0 for i in range(1, 10)]
    assert evaluation.mean == pytest.approx(6 / 9)


@pytest.mark.anyio
async def test_evaluate_refuses_mappings_without_input_fields_before_any_lm_call(
    fake_server: FakeOpenAIServer,
) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.ConfigError, match=r"examples\[0\] is a mapping; pass input_fields"):
            await aprompt.evaluate(QAProgram(), rows(1, 3), exact_match, lm=lm)
    assert fake_server.chat_requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["question", [1, 2]])
async def test_evaluate_refuses_input_fields_that_are_not_a_list_of_names(
    fake_server: FakeOpenAIServer, bad: object
) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.ConfigError, match="input_fields must be a list of field names"):
            await aprompt.evaluate(QAProgram(), rows(1, 3), exact_match, input_fields=bad, lm=lm)  # type: ignore[arg-type]
    assert fake_server.chat_requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("input_fields", [["question", "answer"], ["answer"]])
async def test_evaluate_refuses_inputs_the_program_does_not_take(
    fake_server: FakeOpenAIServer, input_fields: list[str]
) -> None:
    # Each run would be a TypeError, scored 0: a mean of 0.0 for a program never run.
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.ConfigError, match=r"does not fit the program's inputs \['question'\]"):
            await aprompt.evaluate(QAProgram(), rows(1, 3), exact_match, input_fields=input_fields, lm=lm)


@pytest.mark.anyio
async def test_the_table_lists_the_failing_examples_with_input_output_and_expected(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = answers
    data = rows(1, 10)
    async with lm_for(fake_server) as lm:
        evaluation = await aprompt.evaluate(QAProgram(), data, exact_match, input_fields=["question"], lm=lm)
    failing = evaluation.table(data, input_fields=["question"]).failing()
    assert [(r.inputs, r.outcome.output, r.labels, r.outcome.score) for r in failing] == [
        ({"question": f"What is the answer for item-{i}?"}, {"answer": "wrong"}, {"answer": f"ans-{i}"}, 0.0)
        for i in (3, 6, 9)
    ]


def strict_metric(example: aprompt.Example, prediction: Any) -> bool:
    """Raises on item 2 (a metric bug on one example), else exact match."""
    if "item-2?" in example.inputs["question"]:
        raise KeyError("grade")
    return exact_match(example, prediction)


@pytest.mark.anyio
async def test_the_table_keeps_the_output_and_error_of_an_example_the_metric_failed_on(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = answers
    data = rows(1, 3)
    async with lm_for(fake_server) as lm:
        evaluation = await aprompt.evaluate(
            QAProgram(), data, strict_metric, input_fields=["question"], lm=lm
        )
    (row,) = evaluation.table(data, input_fields=["question"]).failing()
    assert row.inputs == {"question": "What is the answer for item-2?"} and row.outcome.score == 0.0
    assert row.outcome.output == {"answer": "ans-2"} and row.outcome.error == "metric KeyError: 'grade'"


@pytest.mark.anyio
async def test_the_table_shows_each_example_its_own_outcome_when_ids_repeat(
    fake_server: FakeOpenAIServer,
) -> None:
    """``evaluate`` keeps Example objects' ids as given, duplicates included: each row is still its own."""
    fake_server.responder = answers  # item 3 wrong, item 4 right
    data = [
        aprompt.Example({"question": f"What is the answer for item-{i}?"}, {"answer": f"ans-{i}"}, id="row")
        for i in (3, 4)
    ]
    async with lm_for(fake_server) as lm:
        evaluation = await aprompt.evaluate(QAProgram(), data, exact_match, lm=lm, concurrency=1)
    assert [r.score for r in evaluation.results] == [0.0, 1.0]
    table = evaluation.table(data)
    assert [row.outcome.score for row in table.rows] == [0.0, 1.0]
    assert [row.outcome.output for row in table.rows] == [{"answer": "wrong"}, {"answer": "ans-4"}]
