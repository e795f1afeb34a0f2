"""Predict and ChainOfThought against the loopback fake server: messages, parsing, retries, LMs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from aprompt._errors import ConfigError, ParseError
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import Completion, Message
from aprompt.program import (
    ChainOfThought,
    Demo,
    InputField,
    OutputField,
    Predict,
    Prediction,
    Signature,
    current_lm,
    use_lm,
)
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, estimate_tokens

pytestmark = pytest.mark.anyio


class RecordingLM:
    """Wraps a real client and notes the rollout and parameters of each call."""

    def __init__(self, inner: OpenAICompatibleLM) -> None:
        self.inner = inner
        self.calls: list[tuple[int, dict[str, Any]]] = []

    @property
    def model(self) -> str:
        return self.inner.model

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion:
        self.calls.append((rollout, params))
        return await self.inner.chat(messages, rollout=rollout, **params)


def sent_messages(server: FakeOpenAIServer, index: int = -1) -> list[dict[str, Any]]:
    body = server.chat_requests[index].body
    assert body is not None
    return list(body["messages"])


async def test_predict_sends_instruction_first_then_demos_then_inputs(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = lambda req: "Answer: 3"
    predict = Predict("question -> answer: int", instruction="Count the animals.", lm=lm)
    predict.demos = [{"question": "a cat and a dog?", "answer": 2}]
    await predict(question="a cat, a dog and a fish?")
    messages = sent_messages(fake_server)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Count the animals.\n\nInput fields:\n- Question\n")
    assert messages[0]["content"].endswith("Answer: <an integer>")
    assert messages[1:] == [
        {"role": "user", "content": "Question: a cat and a dog?"},
        {"role": "assistant", "content": "Answer: 2"},
        {"role": "user", "content": "Question: a cat, a dog and a fish?"},
    ]


async def test_a_prediction_gives_fields_by_attribute_and_key_with_usage(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = lambda req: "Reasoning: 2 and 2\nAnswer: 4"
    prediction = await Predict("question -> reasoning, answer: int", lm=lm)(question="2+2?")
    assert isinstance(prediction, Prediction)
    assert prediction.answer == prediction["answer"] == 4
    assert dict(prediction) == {"reasoning": "2 and 2", "answer": 4}
    assert prediction.completion is not None
    assert prediction.completion.text == "Reasoning: 2 and 2\nAnswer: 4"
    assert prediction.usage.completion_tokens > 0


async def test_sampling_params_reach_the_server_and_call_overrides_win(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    predict = Predict("question -> answer", lm=lm, temperature=0.2, max_tokens=64)
    await predict(question="q")
    await predict(question="q", lm_params={"temperature": 0.9})
    first, second = (r.body or {} for r in fake_server.chat_requests)
    assert (first["temperature"], first["max_tokens"]) == (0.2, 64)
    assert (second["temperature"], second["max_tokens"]) == (0.9, 64)


async def test_the_rollout_of_a_call_is_passed_to_the_lm(lm: OpenAICompatibleLM) -> None:
    recording = RecordingLM(lm)
    await Predict("question -> answer", lm=recording)(question="q", rollout=7)
    assert recording.calls == [(7, {})]


async def test_the_call_lm_beats_the_predictor_lm_which_beats_use_lm(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    async with (
        OpenAICompatibleLM(**{**lm_kwargs, "model": "call"}) as call_lm,
        OpenAICompatibleLM(**{**lm_kwargs, "model": "own"}) as own_lm,
        OpenAICompatibleLM(**{**lm_kwargs, "model": "ambient"}) as ambient_lm,
    ):
        with use_lm(ambient_lm):
            await Predict("question -> answer", lm=own_lm)(question="q", lm=call_lm)
            await Predict("question -> answer", lm=own_lm)(question="q")
            await Predict("question -> answer")(question="q")
    models = [(r.body or {})["model"] for r in fake_server.chat_requests]
    assert models == ["call", "own", "ambient"]


async def test_without_any_lm_a_call_is_a_config_error(fake_server: FakeOpenAIServer) -> None:
    with pytest.raises(ConfigError, match="has no LM"):
        await Predict("question -> answer")(question="q")
    assert fake_server.chat_requests == []


async def test_use_lm_is_per_task_and_restored_on_exit(lm_kwargs: dict[str, Any]) -> None:
    seen: dict[str, str | None] = {}
    async with (
        OpenAICompatibleLM(**{**lm_kwargs, "model": "a"}) as lm_a,
        OpenAICompatibleLM(**{**lm_kwargs, "model": "b"}) as lm_b,
    ):

        async def run(name: str, client: OpenAICompatibleLM) -> None:
            async with use_lm(client):
                await anyio.sleep(0.01)
                found = current_lm()
                seen[name] = found.model if found is not None else None

        async with anyio.create_task_group() as group:
            group.start_soon(run, "a", lm_a)
            group.start_soon(run, "b", lm_b)
    assert seen == {"a": "a", "b": "b"}
    assert current_lm() is None


@pytest.mark.parametrize(
    ("inputs", "message"),
    [({}, r"missing \['question'\]"), ({"question": "q", "extra": 1}, r"unexpected \['extra'\]")],
)
async def test_wrong_inputs_are_a_config_error_before_any_call(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM, inputs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await Predict("question -> answer", lm=lm)(**inputs)
    assert fake_server.chat_requests == []


def _bad_then_good(request: ChatRequest) -> str:
    if request.last_user.startswith("Your reply could not be read"):
        return "Reasoning: counted\nAnswer: 3"
    return "Reasoning: I think it is three."


async def test_an_unreadable_reply_is_retried_with_a_correction(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = _bad_then_good
    prediction = await Predict("question -> reasoning, answer: int", lm=lm)(question="q")
    assert prediction.answer == 3
    assert len(fake_server.chat_requests) == 2
    first, retry = sent_messages(fake_server, 0), sent_messages(fake_server, 1)
    assert retry[: len(first)] == first
    assert retry[len(first)] == {"role": "assistant", "content": "Reasoning: I think it is three."}
    assert retry[-1] == {
        "role": "user",
        "content": (
            "Your reply could not be read:\n"
            "- Answer: missing\n"
            "Reply again with every field on its own line, in exactly this format:\n"
            "Reasoning: <reasoning>\n"
            "Answer: <an integer>"
        ),
    }


async def test_a_reply_saying_both_yes_and_no_is_asked_again_not_read_by_its_first_word(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    def both_then_yes(request: ChatRequest) -> str:
        if request.last_user.startswith("Your reply could not be read"):
            return "Answer: yes"
        return "Answer: No, that is not wrong. So yes."

    fake_server.responder = both_then_yes
    prediction = await Predict("claim -> answer: bool", lm=lm)(claim="water is wet")
    assert prediction.answer is True
    assert len(fake_server.chat_requests) == 2
    assert "says both yes and no" in sent_messages(fake_server, 1)[-1]["content"]


async def test_retries_keep_the_callers_rollout_and_usage_counts_every_attempt(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = _bad_then_good
    recording = RecordingLM(lm)
    prediction = await Predict("question -> reasoning, answer: int", lm=recording)(question="q", rollout=3)
    assert [rollout for rollout, _ in recording.calls] == [3, 3]
    prompt_tokens = [
        estimate_tokens("\n".join(m["content"] for m in sent_messages(fake_server, i))) for i in range(2)
    ]
    assert prediction.usage.prompt_tokens == sum(prompt_tokens)


async def test_a_reply_still_unreadable_after_the_retries_raises_parse_error(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = lambda req: "I don't know."
    # By default one corrective follow-up: two requests in all.
    with pytest.raises(ParseError, match="after 2 attempt") as caught:
        await Predict("question -> answer: int", lm=lm)(question="q")
    assert caught.value.raw_text == "I don't know."
    assert caught.value.missing == ("answer",)
    assert len(fake_server.chat_requests) == 2
    with pytest.raises(ParseError, match="after 3 attempt"):
        await Predict("question -> answer: int", lm=lm, max_parse_retries=2)(question="q")
    assert len(fake_server.chat_requests) == 2 + 3


async def test_max_parse_retries_zero_makes_a_single_attempt(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = lambda req: "no number here"
    with pytest.raises(ParseError):
        await Predict("question -> answer: int", lm=lm, max_parse_retries=0)(question="q")
    assert len(fake_server.chat_requests) == 1


async def test_chain_of_thought_asks_for_reasoning_before_the_outputs(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    fake_server.responder = lambda req: "Reasoning: one cat, one dog.\nAnswer: 2"
    solve = ChainOfThought("question -> answer: int", lm=lm)
    assert str(solve.signature) == "question -> reasoning, answer: int"
    prediction = await solve(question="a cat and a dog?")
    assert (prediction.reasoning, prediction.answer) == ("one cat, one dog.", 2)
    assert sent_messages(fake_server)[0]["content"].endswith("Reasoning: <reasoning>\nAnswer: <an integer>")


def test_chain_of_thought_refuses_a_signature_that_has_reasoning() -> None:
    with pytest.raises(ConfigError, match="already has a 'reasoning' field"):
        ChainOfThought("question -> reasoning, answer")


def test_predict_accepts_a_string_a_signature_or_a_class() -> None:
    class QA(Signature):
        """Answer."""

        question: str = InputField()
        answer: int = OutputField()

    signatures = {
        str(Predict(spec).signature)
        for spec in ("question -> answer: int", Signature.parse("question -> answer: int"), QA)
    }
    assert signatures == {"question -> answer: int"}


async def test_changed_prompt_state_is_used_by_the_next_call(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    predict = Predict("question -> answer", lm=lm)
    await predict(question="q")
    predict.instruction = "Answer in French."
    predict.demos = [Demo({"question": "hi", "answer": "salut"})]
    await predict(question="q")
    before, after = sent_messages(fake_server, 0), sent_messages(fake_server, 1)
    assert after[0]["content"].startswith("Answer in French.\n\n")
    assert len(after) == len(before) + 2
    assert predict.signature.instruction != "Answer in French."


async def test_same_state_and_inputs_send_byte_identical_requests(
    fake_server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    predict = Predict("question, context: list[str] -> answer", lm=lm, temperature=0.0)
    predict.demos = [{"question": "x", "context": ["y"], "answer": "z"}]
    await predict(question="q", context=["a", "b"])
    await predict(context=["a", "b"], question="q")
    first, second = (r.body for r in fake_server.chat_requests)
    assert first == second


async def test_a_deep_copy_shares_the_lm_but_owns_its_demos(
    lm: OpenAICompatibleLM,
) -> None:
    predict = Predict("question -> answer", lm=lm, demos=[{"question": "q", "answer": "a"}])
    clone = copy.deepcopy(predict)
    clone.demos.append(Demo({"question": "q2", "answer": "a2"}))
    assert clone.lm is lm
    assert len(predict.demos) == 1


def test_demos_assigned_as_mappings_become_demo_values() -> None:
    predict = Predict("question -> answer", demos=[{"question": "q", "answer": "a"}])
    assert predict.demos == [Demo({"question": "q", "answer": "a"})]


def test_a_negative_retry_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_parse_retries"):
        Predict("q -> a", max_parse_retries=-1)


@pytest.mark.parametrize("retries", [1.5, "1", None, True, float("nan")])
def test_a_retry_count_that_is_not_a_whole_number_is_a_config_error(retries: Any) -> None:
    # 1.5 and NaN used to be accepted and fail every call with a TypeError; "1" and None raised one here.
    with pytest.raises(ConfigError, match="max_parse_retries must be a whole number"):
        Predict("q -> a", max_parse_retries=retries)


def test_an_instruction_that_is_not_text_is_a_config_error() -> None:
    # It used to be accepted and fail every call with an AttributeError.
    with pytest.raises(ConfigError, match="instruction must be text"):
        Predict("q -> a", instruction=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("demos", ["q: 2+2, a: 4", [("q", "a")], [None]])
def test_demos_that_are_not_mappings_are_a_config_error(demos: Any) -> None:
    with pytest.raises(ConfigError, match="demo"):
        Predict("q -> a", demos=demos)


def test_a_single_demo_given_as_demos_is_a_config_error_saying_to_wrap_it_in_a_list() -> None:
    with pytest.raises(ConfigError, match="wrap a single demo in a list"):
        Predict("q -> a", demos={"q": "2+2", "a": "4"})
