"""Predictors honour per-task prompt overrides (how an optimizer runs many choices at once)."""

from __future__ import annotations

import pytest

from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.program import Demo, Predict
from aprompt.program.overrides import PromptOverride, override_prompts
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
