"""Predictors honour per-task prompt overrides (how an optimizer runs many choices at once)."""

from __future__ import annotations

import pytest

from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.program import Demo, Predict
from aprompt.program.overrides import PromptOverride, PromptState, override_prompts
from aprompt.program.trace import trace
from aprompt.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


class Program:
    def __init__(self, lm: OpenAICompatibleLM) -> None:
        self.answer = Predict("question -> answer", lm=lm, temperature=0.0)


async def test_an_override_replaces_instruction_and_demos_without_changing_the_predictor(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    program = Program(lm)
    demo = Demo({"question": "hi", "answer": "salut"})
    with override_prompts(program, {"answer": PromptOverride("Answer in French.", (demo,))}):
        await program.answer(question="q")
    body = fake_server.chat_requests[-1].body or {}
    assert body["messages"][0]["content"].startswith("Answer in French.\n\n")
    assert body["messages"][1:3] == [
        {"role": "user", "content": "Question: hi"},
        {"role": "assistant", "content": "Answer: salut"},
    ]
    assert (program.answer.instruction, program.answer.demos) == (
        program.answer.signature.instruction,
        [],
    )


async def test_override_params_beat_the_predictor_and_call_params_beat_both(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    program = Program(lm)
    with override_prompts(program, {}, lm_params={"temperature": 1.0}):
        await program.answer(question="q")
        await program.answer(question="q", lm_params={"temperature": 0.5})
    temperatures = [(r.body or {})["temperature"] for r in fake_server.chat_requests]
    assert temperatures == [1.0, 0.5]


async def test_a_state_applied_again_inside_its_own_block_keeps_the_block_and_another_state_opens_its_own(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    # An evaluation opens one block for all its runs and each run applies the same state again (the
    # executor's step): that must not walk the program again, yet any other state or program must.
    program = Program(lm)
    french = PromptState({"answer": PromptOverride("Answer in French.")})
    german = PromptState({"answer": PromptOverride("Answer in German.")})
    with french.apply(program) as outer:
        with french.apply(program) as same:
            await program.answer(question="q")
        with PromptState({"answer": PromptOverride("Answer in French.")}).apply(program) as equal:
            pass
        with german.apply(program) as other:
            await program.answer(question="q")
        with french.apply(Program(lm)) as elsewhere:
            pass
    assert same is outer
    assert equal is not outer and other is not outer and elsewhere is not outer
    systems = [(r.body or {})["messages"][0]["content"] for r in fake_server.chat_requests]
    assert [s.split("\n")[0] for s in systems] == ["Answer in French.", "Answer in German."]


async def test_a_trace_inside_a_block_of_another_program_names_its_own_predictors(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    first, second = Program(lm), Pipeline(lm)
    with PromptState({}).apply(first), trace(second) as recorded:
        await second.draft(question="q")
    with PromptState({}).apply(second), trace(second) as inside:
        await second.draft(question="q")
    assert [e.predictor_name for e in recorded] == [e.predictor_name for e in inside] == ["draft"]


class Pipeline:
    def __init__(self, lm: OpenAICompatibleLM) -> None:
        self.draft = Predict("question -> answer", lm=lm, temperature=0.0)
