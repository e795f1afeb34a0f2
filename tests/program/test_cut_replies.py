"""A reply cut at its token budget is an answer only when it already holds its whole answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import aprompt
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.program.reply_reading import answered_before_cut
from aprompt.program.signature import Signature
from aprompt.testing._wire import Fault
from aprompt.testing.fake_openai import FakeOpenAIServer


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


NUMBER = Signature.parse("question -> answer: int")
TEXT = Signature.parse("question -> answer")
REASONED = Signature.parse("question -> reasoning, answer: int")
LISTED = Signature.parse("question -> cities: list[str]")


@pytest.mark.parametrize(
    ("signature", "text", "whole"),
    [
        (NUMBER, "Answer: 919\nBecause there are", True),
        (NUMBER, "Answer: 91", False),
        (NUMBER, "Answer: 919", False),
        (NUMBER, "Answer:\n", False),
        (NUMBER, "919 because", False),
        (TEXT, "Answer: Paris\nIt is the capi", False),
        (TEXT, "Answer: Paris\nQuestion: and Spai", True),
        (REASONED, "Reasoning: two and one\nAnswer: 3\nSo", True),
        (REASONED, "Reasoning: two and one\nAnswer: 3", False),
        (LISTED, 'Cities: [\n  "Paris",\n  "Lon', False),  # a JSON list cut mid-way
        (LISTED, "Cities:\n- Paris\n- London\n- Ber", False),  # bullets may have had more
        (LISTED, 'Cities: ["Paris", "London"]\nThese are', True),
    ],
)
def test_a_cut_reply_is_whole_only_when_every_field_ended_before_the_cut(
    signature: Signature, text: str, whole: bool
) -> None:
    assert answered_before_cut(signature, text) is whole


@pytest.mark.anyio
async def test_a_cut_reply_holding_the_whole_answer_is_read_without_a_resend(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.script([Fault.truncated("Answer: 919\nThe count is")])
    answer = aprompt.Predict("question -> answer: int", max_tokens=8)
    prediction = await answer(question="How many?", lm=lm)
    assert prediction.answer == 919
    assert len(fake_server.chat_requests) == 1


@pytest.mark.anyio
async def test_a_cut_reply_whose_prefix_parses_is_resent_and_never_read_as_an_answer(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.script([Fault.truncated("Answer: 91"), Fault.truncated("Answer: 91")])
    answer = aprompt.Predict("question -> answer: int", max_tokens=8)
    with pytest.raises(aprompt.TruncatedResponseError):
        await answer(question="How many?", lm=lm)
    sent = [r.body for r in fake_server.chat_requests]
    assert [body["max_tokens"] for body in sent if body is not None] == [8, 16]


class ScriptedLM:
    """Any LM (not an aprompt client): replies from a list, as another framework's model would."""

    def __init__(self, replies: Sequence[aprompt.Completion]) -> None:
        self.replies = list(replies)

    @property
    def model(self) -> str:
        return "scripted"

    async def chat(self, messages: Sequence[aprompt.Message], *, rollout: int = 0, **params: Any) -> Any:
        return self.replies.pop(0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (aprompt.Completion("Answer: 91", finish_reason="length"), aprompt.TruncatedResponseError),
        (aprompt.Completion("", finish_reason="stop"), aprompt.EmptyResponseError),
        (aprompt.Completion("Answer: 3", finish_reason="content_filter"), aprompt.ContentFilteredError),
    ],
)
async def test_a_reply_that_is_not_an_answer_is_an_lm_failure_from_any_lm(
    reply: aprompt.Completion, error: type[Exception]
) -> None:
    answer = aprompt.Predict("question -> answer: int")
    with pytest.raises(error):
        await answer(question="How many?", lm=ScriptedLM([reply]))


@pytest.mark.anyio
async def test_a_whole_cut_reply_from_any_lm_is_an_answer() -> None:
    answer = aprompt.Predict("question -> answer: int")
    lm = ScriptedLM([aprompt.Completion("Answer: 919\nThe", finish_reason="length")])
    assert (await answer(question="How many?", lm=lm)).answer == 919
