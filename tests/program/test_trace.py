"""Tracing predictor calls: names, entries, demos, and separation of concurrent runs."""

from __future__ import annotations

import functools
import re

import anyio
import pytest

from aprompt._errors import ConfigError, ParseError
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.program import Demo, Predict, Prediction, Trace, trace, use_lm
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer

pytestmark = pytest.mark.anyio


class TwoStep:
    """Extract a number from a text, then double it: two predictors, answers depend on the input."""

    def __init__(self) -> None:
        self.extract = Predict("text -> number: int")
        self.double = Predict("number: int -> result: int")

    async def __call__(self, text: str) -> Prediction:
        extracted = await self.extract(text=text)
        return await self.double(number=extracted.number)


def two_step_responder(request: ChatRequest) -> str:
    text = request.last_user
    if match := re.fullmatch(r"Text: item-(\d+)", text):
        return f"Number: {match.group(1)}"
    if match := re.fullmatch(r"Number: (\d+)", text):
        return f"Result: {2 * int(match.group(1))}"
    return "?"


async def test_a_trace_records_each_call_with_its_program_name(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = two_step_responder
    program = TwoStep()
    async with use_lm(lm), trace(program) as t:
        await program(text="item-21")
    extract, double = t.entries
    assert (extract.predictor_name, extract.predictor) == ("extract", program.extract)
    assert (extract.inputs, extract.outputs, extract.raw_text) == (
        {"text": "item-21"},
        {"number": 21},
        "Number: 21",
    )
    assert (double.predictor_name, double.outputs) == ("double", {"result": 42})
    assert double.usage.completion_tokens > 0


async def test_without_the_program_entries_are_named_by_signature(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = two_step_responder
    with trace() as t:
        await Predict("text -> number: int", lm=lm)(text="item-3")
    assert [e.predictor_name for e in t] == ["text -> number: int"]


async def test_an_entry_becomes_a_demo_of_inputs_and_outputs(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = two_step_responder
    with trace() as t:
        await Predict("text -> number: int", lm=lm)(text="item-5")
    assert t.entries[0].as_demo() == Demo({"text": "item-5", "number": 5})


async def test_an_entry_keeps_the_values_of_its_call_when_the_program_changes_them_later(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    # A growing history passed to each call, and an output list the program extends: each entry (and
    # so each bootstrapped demo) shows what that call was given and answered.
    fake_server.responder = lambda request: 'Reply: ["a"]'
    step = Predict("history: list[str] -> reply: list[str]", lm=lm)
    history = ["q"]
    with trace() as t:
        for _ in range(2):
            prediction = await step(history=history)
            history.append("r")
            prediction.reply.append("changed")
    assert [e.as_demo() for e in t] == [
        Demo({"history": ["q"], "reply": ["a"]}),
        Demo({"history": ["q", "r"], "reply": ["a"]}),
    ]


async def test_calls_outside_the_block_and_failed_calls_are_not_recorded(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = two_step_responder
    predict = Predict("text -> number: int", lm=lm, max_parse_retries=0)
    with trace() as t:
        with pytest.raises(ParseError):
            await predict(text="nothing to see")
    await predict(text="item-1")
    assert len(t) == 0


async def test_nested_traces_both_see_the_inner_calls(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = two_step_responder
    predict = Predict("text -> number: int", lm=lm)
    with trace() as outer:
        await predict(text="item-1")
        with trace() as inner:
            await predict(text="item-2")
    assert [e.outputs["number"] for e in outer] == [1, 2]
    assert [e.outputs["number"] for e in inner] == [2]


async def test_tasks_started_inside_a_trace_are_recorded_in_it(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = two_step_responder
    predict = Predict("text -> number: int", lm=lm)
    async with trace() as t:
        async with anyio.create_task_group() as group:
            for i in range(5):
                group.start_soon(functools.partial(predict, text=f"item-{i}"))
    assert sorted(e.outputs["number"] for e in t) == [0, 1, 2, 3, 4]


async def test_a_trace_cannot_be_entered_twice() -> None:
    t = Trace()
    with t:
        pass
    with pytest.raises(ConfigError, match="entered only once"):
        with t:
            pass


async def test_200_concurrent_runs_through_one_program_keep_separate_complete_traces(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = two_step_responder
    fake_server.latency = lambda rng: rng.random() * 0.02  # interleave the runs
    program = TwoStep()
    traces: dict[int, Trace] = {}
    results: dict[int, int] = {}

    async def run(i: int) -> None:
        async with trace(program) as t:
            results[i] = (await program(text=f"item-{i}")).result
        traces[i] = t

    with use_lm(lm):
        async with anyio.create_task_group() as group:
            for i in range(200):
                group.start_soon(run, i)

    assert len(fake_server.chat_requests) == 400
    for i in range(200):
        extract, double = traces[i].entries
        assert (extract.predictor_name, double.predictor_name) == ("extract", "double")
        assert extract.inputs == {"text": f"item-{i}"}
        assert extract.outputs == {"number": i}
        assert double.inputs == {"number": i}
        assert double.outputs == {"result": 2 * i} and results[i] == 2 * i
