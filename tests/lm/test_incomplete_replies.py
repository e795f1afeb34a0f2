"""A 200 that is not an answer (empty or null content, filtered, cut at its token budget) is an LM failure,
never a reply: against both fake servers, on asyncio and trio."""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from typing import Any

import anyio
import pytest

import aprompt
from aprompt import Example, Predict, Prediction
from aprompt._errors import (
    BadResponseError,
    ContentFilteredError,
    EmptyResponseError,
    IncompleteResponseError,
    TruncatedResponseError,
)
from aprompt.lm._http import TRUNCATION_RETRY_MAX_TOKENS
from aprompt.lm._replies import accepting_cut_replies
from aprompt.lm.anthropic import AnthropicLM
from aprompt.lm.cache import ResponseCache
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import Message
from aprompt.testing.fake_anthropic import FakeAnthropicServer
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, Fault
from tests.lm.providers import QUICK, Provider

pytestmark = pytest.mark.anyio

HELLO: list[Message] = [{"role": "user", "content": "Hello"}]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- empty and filtered replies: retried like a transient fault, then raised ----------------------


@pytest.mark.parametrize("fault", [Fault.empty_content(), Fault.null_content()], ids=["empty", "null"])
async def test_an_empty_reply_is_retried_and_the_next_answer_returned(
    provider: Provider, fault: Fault
) -> None:
    provider.server.script([fault])
    async with provider.make() as lm:
        completion = await lm.chat(HELLO)
    assert completion.text == "Answer: ok"
    assert (lm.usage.requests, lm.usage.retries, lm.usage.errors) == (2, 1, 0)


async def test_replies_empty_on_every_attempt_raise_empty_response_error(provider: Provider) -> None:
    provider.server.script(lambda n: Fault.empty_content())
    async with provider.make() as lm:
        with pytest.raises(EmptyResponseError) as caught:
            await lm.chat(HELLO)
    assert isinstance(caught.value, BadResponseError)
    assert (lm.usage.requests, lm.usage.retries, lm.usage.errors, lm.usage.calls) == (3, 2, 1, 0)


async def test_a_filtered_reply_is_retried_and_the_next_answer_returned(provider: Provider) -> None:
    provider.server.script([Fault.content_filter("I can't")])
    async with provider.make() as lm:
        completion = await lm.chat(HELLO)
    assert (completion.text, completion.finish_reason) == ("Answer: ok", "stop")
    assert (lm.usage.requests, lm.usage.retries) == (2, 1)


async def test_replies_filtered_on_every_attempt_raise_content_filtered_error(provider: Provider) -> None:
    provider.server.script(lambda n: Fault.content_filter("Answer: 4"))
    async with provider.make() as lm:
        with pytest.raises(ContentFilteredError) as caught:
            await lm.chat(HELLO)
    assert (caught.value.finish_reason, caught.value.text) == ("content_filter", "Answer: 4")
    assert lm.usage.requests == 3


async def test_a_reply_that_stopped_to_call_a_tool_is_retried_not_returned(provider: Provider) -> None:
    # Sent with tools, the model may stop to call one ("tool_calls"; Anthropic's "tool_use"): the text before
    # the call leads up to it, and no program runs the tool, so it is no answer.
    provider.server.script([Fault.reply("Answer: let me look that up.", finish_reason="tool_calls")])
    async with provider.make() as lm:
        completion = await lm.chat(HELLO)
    assert (completion.text, completion.finish_reason) == ("Answer: ok", "stop")
    assert (lm.usage.requests, lm.usage.retries) == (2, 1)


async def test_replies_that_stop_to_call_a_tool_every_time_say_to_leave_tools_out(provider: Provider) -> None:
    provider.server.script(lambda n: Fault.reply("Let me look that up.", finish_reason="tool_calls"))
    async with provider.make() as lm:
        with pytest.raises(IncompleteResponseError) as caught:
            await lm.chat(HELLO)
    assert type(caught.value) is IncompleteResponseError  # not an empty reply, scored as the prompt's
    assert (caught.value.finish_reason, caught.value.text) == ("tool_calls", "Let me look that up.")
    assert "leave tools and tool_choice out" in str(caught.value)


async def test_an_anthropic_refusal_is_a_filtered_reply() -> None:
    async with FakeAnthropicServer() as server:
        server.script(lambda n: Fault.reply("no", finish_reason="refusal"))
        async with AnthropicLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            with pytest.raises(ContentFilteredError):
                await lm.chat(HELLO)


async def test_an_openai_refusal_is_a_filtered_reply_that_names_it() -> None:
    # OpenAI sends a refusal as null content, finish_reason "stop" and the model's words in "refusal".
    refusal = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    fields = {"choices": [{"index": 0, "message": refusal, "finish_reason": "stop"}]}
    async with FakeOpenAIServer() as server:
        server.script(lambda n: Fault.reply("", fields=fields))
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            with pytest.raises(ContentFilteredError) as caught:
                await lm.chat(HELLO)
    assert "refused" in str(caught.value) and "I can't help with that." in str(caught.value)
    assert caught.value.text == "I can't help with that."
    assert lm.usage.requests == 3  # retried like a filtered reply


async def test_the_tokens_of_incomplete_replies_count_in_usage(provider: Provider) -> None:
    provider.server.script([Fault.content_filter("four words of reply"), Fault.empty_content()])
    async with provider.make() as lm:
        completion = await lm.chat(HELLO)
    # Billed: the filtered reply's 5 completion tokens, the empty one's 0, the answer's 3.
    assert lm.usage.completion_tokens == 5 + 0 + completion.usage.completion_tokens
    assert lm.usage.prompt_tokens == 3 * completion.usage.prompt_tokens


async def test_an_incomplete_reply_is_never_cached(provider: Provider) -> None:
    provider.server.script([Fault.content_filter(), Fault.empty_content()])
    with ResponseCache.memory_only() as cache:
        async with provider.make(cache=cache, max_retries=0) as lm:
            for expected in (ContentFilteredError, EmptyResponseError):
                with pytest.raises(expected):
                    await lm.chat(HELLO)
            answered = await lm.chat(HELLO)
            again = await lm.chat(HELLO)
    assert (answered.text, answered.cached, again.cached) == ("Answer: ok", False, True)
    assert len(provider.server.chat_requests) == 3


async def test_a_cut_reply_one_caller_accepted_is_no_cached_answer_to_a_caller_that_does_not() -> None:
    async with FakeOpenAIServer() as server:
        server.script([Fault.truncated("Answer: o")] * 3)
        with ResponseCache.memory_only() as cache:
            async with OpenAICompatibleLM(
                "fake", server.base_url, api_key="", retry=QUICK, cache=cache
            ) as lm:
                with accepting_cut_replies(lambda text: True):
                    accepted = await lm.chat(HELLO, max_tokens=4)
                with pytest.raises(TruncatedResponseError):  # cut again, and again after the re-send
                    await lm.chat(HELLO, max_tokens=4)
                answered = await lm.chat(HELLO, max_tokens=4)
                with accepting_cut_replies(lambda text: True):
                    kept = await lm.chat(HELLO, max_tokens=4)
    assert (accepted.text, accepted.finish_reason) == ("Answer: o", "length")
    assert (answered.text, answered.finish_reason, answered.cached) == ("Answer: ok", "stop", False)
    assert (kept.text, kept.cached) == ("Answer: o", True)  # still the accepting callers' answer
    assert [(r.body or {}).get("max_tokens") for r in server.chat_requests] == [4, 4, 8, 4]


async def test_a_caller_that_accepts_cut_replies_never_takes_the_cut_of_an_identical_call_that_does_not(
    anyio_backend: str,
) -> None:
    # Two identical calls at once share one request; the first does not accept a cut reply and fails with
    # TruncatedResponseError. The second accepts it: that failure is not its outcome, as without a cache.
    asked, release = anyio.Event(), anyio.Event()

    async def cut_once_released(request: ChatRequest) -> Fault:
        asked.set()
        await release.wait()
        return Fault.truncated("Answer: o")

    outcomes: dict[str, str] = {}
    async with FakeOpenAIServer(responder=cut_once_released) as server:
        with ResponseCache.memory_only() as cache:
            async with OpenAICompatibleLM(
                "fake", server.base_url, api_key="", retry=QUICK, cache=cache
            ) as lm:

                async def call(name: str, accepts: bool) -> None:
                    with accepting_cut_replies(lambda text: True) if accepts else nullcontext():
                        try:
                            outcomes[name] = (await lm.chat(HELLO, max_tokens=4)).text
                        except TruncatedResponseError as exc:
                            outcomes[name] = type(exc).__name__

                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call, "strict", False)
                        await asked.wait()
                        tg.start_soon(call, "accepting", True)
                        await anyio.wait_all_tasks_blocked()  # it waits for the strict call's request
                        release.set()
        assert [(r.body or {}).get("max_tokens") for r in server.chat_requests] == [4, 8, 4]
    assert outcomes == {"strict": "TruncatedResponseError", "accepting": "Answer: o"}


@pytest.mark.parametrize("reason", ["error", "abort", "insufficient_system_resource"])
async def test_a_reply_the_server_stopped_on_an_error_is_retried_not_returned(reason: str) -> None:
    # OpenRouter reports a generation that failed upstream as finish_reason "error", vLLM an aborted one as
    # "abort", DeepSeek one broken off for want of capacity as "insufficient_system_resource": whatever
    # text came with it is a fragment, not the prompt's answer.
    async with FakeOpenAIServer() as server:
        server.script([Fault.reply("Answer: 4", finish_reason=reason)])
        with ResponseCache.memory_only() as cache:
            async with OpenAICompatibleLM(
                "fake", server.base_url, api_key="", retry=QUICK, cache=cache
            ) as lm:
                completion = await lm.chat(HELLO)
                again = await lm.chat(HELLO)
    assert (completion.text, completion.finish_reason) == ("Answer: ok", "stop")
    assert again.text == "Answer: ok"
    assert (lm.usage.requests, lm.usage.retries) == (2, 1)


async def test_replies_stopped_on_an_error_every_time_raise_an_incomplete_response_error() -> None:
    async with FakeOpenAIServer() as server:
        server.script(lambda n: Fault.reply("Answer: 4", finish_reason="error"))
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            with pytest.raises(IncompleteResponseError) as caught:
                await lm.chat(HELLO)
    assert (caught.value.finish_reason, caught.value.text) == ("error", "Answer: 4")
    assert "finish_reason 'error'" in str(caught.value)
    assert lm.usage.requests == 3


@pytest.mark.parametrize(
    "fields",
    [
        {"usage": "not reported"},
        {"usage": [1, 2]},
        # JSON's Infinity, which Python's json reads, and negative counts (which would lower the tokens
        # and cost counted against a run's limits): each provider's names in one usage object.
        {"usage": {"prompt_tokens": math.inf, "input_tokens": math.inf}},
        {"usage": {"prompt_tokens": 9, "completion_tokens": -400, "input_tokens": 9, "output_tokens": -400}},
    ],
    ids=["usage-text", "usage-list", "usage-infinite", "usage-negative"],
)
async def test_a_body_with_malformed_usage_is_a_bad_response(
    provider: Provider, fields: dict[str, Any]
) -> None:
    provider.server.responder = lambda request: ("Answer: 4", fields)
    async with provider.make(max_retries=0) as lm:
        with pytest.raises(BadResponseError, match="malformed response body"):
            await lm.chat(HELLO)
    assert (lm.usage.prompt_tokens, lm.usage.completion_tokens) == (0, 0)


@pytest.mark.parametrize("reason", [{"type": "stop"}, ["stop"]], ids=["object", "list"])
async def test_a_finish_reason_that_is_not_a_string_is_a_bad_response(reason: Any) -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "Answer: 4"}, "finish_reason": reason}
    async with FakeOpenAIServer() as server:
        server.script([Fault.reply(fields={"choices": [choice]})])
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", max_retries=0) as lm:
            with pytest.raises(BadResponseError, match="malformed response body"):
                await lm.chat(HELLO)


async def test_a_web_page_for_an_answer_says_what_came_and_where_to_look(provider: Provider) -> None:
    # A base URL that points at a web server's site, not its API, answers 200 with a page.
    provider.server.queue_faults(*[Fault.html_page()] * 2)
    async with provider.make(max_retries=1, retry=QUICK) as lm:
        with pytest.raises(BadResponseError) as caught:
            await lm.chat(HELLO)
        assert len(provider.server.chat_requests) == 2  # retried like any bad body, then raised
    message = str(caught.value)
    assert "not JSON" in message and "'<!DOCTYPE html> <html><head><title>Welcome" in message
    assert "base URL" in message


@pytest.mark.parametrize("fault", [Fault.event_stream(), Fault.encoded("br")], ids=["sse", "brotli"])
async def test_a_reply_in_a_form_never_read_is_raised_at_once_saying_what_to_change(fault: Fault) -> None:
    async with FakeOpenAIServer() as server:
        server.script(lambda n: fault)
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            with pytest.raises(aprompt.UnreadableResponseError, match=r"server or (the|a) proxy") as caught:
                await lm.chat(HELLO)
    assert isinstance(caught.value, BadResponseError)
    assert lm.usage.requests == 1  # every reply would come the same way: not retried


async def test_an_anthropic_content_block_that_is_not_an_object_is_a_bad_response() -> None:
    async with FakeAnthropicServer() as server:
        server.responder = lambda request: ("", {"content": ["Answer: 4"]})
        async with AnthropicLM("fake", server.base_url, api_key="", max_retries=0) as lm:
            with pytest.raises(BadResponseError, match="malformed response body"):
                await lm.chat(HELLO)


# -- truncated replies: re-sent once with a larger budget, said so, then raised -------------------


async def test_a_truncated_reply_is_resent_once_with_twice_max_tokens(
    provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.server.script([Fault.truncated("Value: 91")])
    provider.server.responder = lambda request: "Value: 919"
    with caplog.at_level(logging.WARNING, logger="aprompt.lm"):
        async with provider.make() as lm:
            completion = await lm.chat(HELLO, max_tokens=50)
    assert completion.text == "Value: 919"
    assert [provider.sent(i)["max_tokens"] for i in range(2)] == [50, 100]
    assert (lm.usage.requests, lm.usage.retries, lm.usage.calls) == (2, 1, 1)
    assert "re-sending once with max_tokens=100" in caplog.text


async def test_only_the_first_cut_reply_of_a_client_is_a_warning(
    provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    # A small model rambles past its budget on many calls of a run: one warning, the rest counted at DEBUG.
    provider.server.script([Fault.truncated("Value: 91"), None, Fault.truncated("Value: 92"), None])
    provider.server.responder = lambda request: "Value: 919"
    with caplog.at_level(logging.DEBUG, logger="aprompt.lm"):
        async with provider.make() as lm:
            for question in ("one", "two"):
                completion = await lm.chat([{"role": "user", "content": question}], max_tokens=50)
                assert completion.text == "Value: 919"
    cuts = [r for r in caplog.records if "reply cut at its token budget" in r.getMessage()]
    assert [r.levelno for r in cuts] == [logging.WARNING, logging.DEBUG]
    assert "further cut replies are logged at DEBUG" in cuts[0].getMessage()
    assert cuts[1].getMessage().endswith("(2 so far)")


async def test_a_reply_truncated_again_raises_without_more_retries(provider: Provider) -> None:
    provider.server.script(lambda n: Fault.truncated("Value: 91"))
    async with provider.make(max_retries=6) as lm:
        with pytest.raises(TruncatedResponseError) as caught:
            await lm.chat(HELLO, max_tokens=50)
    assert "cut again with max_tokens=100" in str(caught.value)
    assert (caught.value.text, caught.value.finish_reason) == ("Value: 91", "length")
    assert len(provider.server.chat_requests) == 2
    assert (lm.usage.requests, lm.usage.errors) == (2, 1)


async def test_a_truncated_reply_is_resent_even_without_retries(provider: Provider) -> None:
    provider.server.script([Fault.truncated("Value: 91")])
    async with provider.make(max_retries=0) as lm:
        completion = await lm.chat(HELLO, max_tokens=50)
    assert completion.text == "Answer: ok"


async def test_a_rejected_larger_budget_raises_the_truncation(provider: Provider) -> None:
    provider.server.script([Fault.truncated("Value: 91"), Fault.reply("max_tokens is too large", status=400)])
    async with provider.make() as lm:
        with pytest.raises(TruncatedResponseError, match=r"max_tokens=100 was rejected.*too large"):
            await lm.chat(HELLO, max_tokens=50)


async def test_a_transient_fault_after_the_larger_resend_keeps_the_larger_budget(provider: Provider) -> None:
    provider.server.script([Fault.truncated(), Fault.http_status(503)])
    async with provider.make() as lm:
        completion = await lm.chat(HELLO, max_tokens=50)
    assert completion.text == "Answer: ok"
    assert [provider.sent(i)["max_tokens"] for i in range(3)] == [50, 100, 100]


async def test_a_truncated_reply_without_a_budget_is_resent_with_the_documented_cap() -> None:
    async with FakeOpenAIServer() as server:
        server.script([Fault.truncated()])
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            await lm.chat(HELLO)
    bodies = [r.body or {} for r in server.chat_requests]
    assert ["max_tokens" in bodies[0], bodies[1].get("max_tokens")] == [False, TRUNCATION_RETRY_MAX_TOKENS]


async def test_max_completion_tokens_is_the_budget_doubled_when_it_is_set() -> None:
    async with FakeOpenAIServer() as server:
        server.script([Fault.truncated()])
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            await lm.chat(HELLO, max_completion_tokens=30)
    assert [(r.body or {}).get("max_completion_tokens") for r in server.chat_requests] == [30, 60]


async def test_an_anthropic_context_window_stop_is_a_truncated_reply_raised_without_a_resend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The window, not the budget, cut it: twice the budget would be cut at the same place, after paying
    for nearly a whole window again. It is raised at once, saying what to shorten."""
    async with FakeAnthropicServer() as server:
        server.script(lambda n: Fault.reply("Val", finish_reason="model_context_window_exceeded"))
        async with AnthropicLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            with (
                caplog.at_level(logging.DEBUG, logger="aprompt.lm"),
                pytest.raises(TruncatedResponseError) as caught,
            ):
                await lm.chat(HELLO, max_tokens=1000)
    assert [(r.body or {})["max_tokens"] for r in server.chat_requests] == [1000]
    assert (lm.usage.requests, lm.usage.retries, lm.usage.errors) == (1, 0, 1)
    message = str(caught.value)
    assert "context window" in message and "shorten the prompt" in message
    assert "token budget" not in message
    assert caught.value.finish_reason == "model_context_window_exceeded" and caught.value.text == "Val"
    assert not [r for r in caplog.records if "re-sending" in r.getMessage()]


async def test_a_mistral_context_window_stop_is_a_truncated_reply_raised_without_a_resend() -> None:
    # Mistral's finish_reason "model_length": the reply filled the model's context, its text a fragment.
    async with FakeOpenAIServer() as server:
        server.script(lambda n: Fault.reply("Val", finish_reason="model_length"))
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            with pytest.raises(TruncatedResponseError, match="context window") as caught:
                await lm.chat(HELLO, max_tokens=1000)
    assert [(r.body or {})["max_tokens"] for r in server.chat_requests] == [1000]
    assert caught.value.finish_reason == "model_length" and caught.value.text == "Val"


async def test_a_length_stop_short_of_its_budget_is_a_window_cut_raised_without_a_resend() -> None:
    # llama.cpp (and vLLM) say "length" also when the prompt and the reply filled a slot's context: the
    # reply wrote 77 of its 150 tokens. A re-send with 300 would be cut at the same place.
    usage = {"prompt_tokens": 179, "completion_tokens": 77, "total_tokens": 256}
    async with FakeOpenAIServer() as server:
        server.script(lambda n: Fault.reply("Val", finish_reason="length", fields={"usage": usage}))
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            with pytest.raises(TruncatedResponseError, match="context window") as caught:
                await lm.chat(HELLO, max_tokens=150)
    assert [(r.body or {})["max_tokens"] for r in server.chat_requests] == [150]
    assert caught.value.by_window and caught.value.finish_reason == "length"
    assert "77 of 150 tokens" in str(caught.value) and "ctx_per_slot" in str(caught.value)


async def test_a_length_stop_at_its_budget_is_still_resent_with_a_larger_one() -> None:
    usage = {"prompt_tokens": 179, "completion_tokens": 150, "total_tokens": 329}
    async with FakeOpenAIServer() as server:
        server.script(
            lambda n: Fault.reply("Val", finish_reason="length", fields={"usage": usage}) if n == 0 else None
        )
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            await lm.chat(HELLO, max_tokens=150)
    assert [(r.body or {})["max_tokens"] for r in server.chat_requests] == [150, 300]


async def test_a_resent_reply_the_window_cuts_is_named_a_window_cut() -> None:
    # The first reply wrote its whole budget of 50; twice that met the slot's context after 77 tokens.
    window = {"prompt_tokens": 179, "completion_tokens": 77, "total_tokens": 256}
    async with FakeOpenAIServer() as server:
        server.script(
            lambda n: Fault.reply("Val", finish_reason="length", fields={"usage": window} if n else None)
        )
        async with OpenAICompatibleLM("fake", server.base_url, api_key="", retry=QUICK) as lm:
            with pytest.raises(TruncatedResponseError, match="context window") as caught:
                await lm.chat(HELLO, max_tokens=50)
    assert [(r.body or {})["max_tokens"] for r in server.chat_requests] == [50, 100]
    assert caught.value.by_window and "77 of 100 tokens" in str(caught.value)


# -- end to end: after the client's retries, such replies are the prompt's failure, scored 0 ----------


class ValueProgram:
    """One predictor: question -> value."""

    def __init__(self) -> None:
        self.solve = Predict("question -> value", instruction="Compute the value.", max_parse_retries=0)

    async def __call__(self, question: str) -> Prediction:
        return await self.solve(question=question)


#: What the server does for some items (every time it is asked); the others are answered right.
ITEM_REPLIES = {
    1: Fault.content_filter(),
    2: Fault.empty_content(),
    3: Fault.null_content(),
    4: Fault.truncated("Value: 4"),  # a prefix that parses, of the right answer 419: too long, scored 0
    7: "no fields here at all",  # finished normally but unreadable: the prompt's fault, scored 0
}


def answer_by_item(request: ChatRequest) -> str | Fault:
    item = int(request.last_user.split("item-")[1].split("?")[0])
    return ITEM_REPLIES.get(item, f"Value: {item}19")


def value_metric(example: Example, prediction: Any) -> bool:
    return str(prediction.value).strip() == example.labels["value"]


async def test_evaluate_scores_0_the_examples_whose_replies_are_empty_filtered_or_cut(
    provider: Provider,
) -> None:
    """A reply that is empty, filtered, or cut at its token budget (even at twice the budget) after the
    client's retries is the prompt's doing, as a program run on it would fail the same way: scored 0.
    Left unscored, a prompt that draws no answer on the hard examples would be ranked on the easy ones."""
    provider.server.responder = answer_by_item
    examples = [
        Example(inputs={"question": f"What is item-{i}?"}, labels={"value": f"{i}19"}, id=f"v{i}")
        for i in range(10)
    ]
    async with provider.make(max_retries=1) as lm:
        evaluation = await aprompt.evaluate(ValueProgram(), examples, value_metric, lm=lm)
    scores = {r.example_id: r.score for r in evaluation.results}
    assert scores == {f"v{i}": 0.0 for i in (1, 2, 3, 4, 7)} | {f"v{i}": 1.0 for i in (0, 5, 6, 8, 9)}
    assert evaluation.mean == pytest.approx(5 / 10) and evaluation.n_unscored == 0
    errors = {r.example_id: (r.error or "").split(":")[0] for r in evaluation.results if r.error}
    assert errors == {
        "v1": "ContentFilteredError",
        "v2": "EmptyResponseError",
        "v3": "EmptyResponseError",
        "v4": "TruncatedResponseError",
    }
