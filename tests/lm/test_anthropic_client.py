"""The Anthropic Messages API client against a loopback fake: wire format, parsing, retries, errors,
cache, concurrency and keys."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from aprompt._errors import (
    AuthenticationError,
    BadResponseError,
    ConfigError,
    ContextOverflowError,
    IncompleteResponseError,
    LMError,
    RateLimitError,
    RequestRejectedError,
    ServerError,
)
from aprompt.lm.anthropic import AnthropicLM
from aprompt.lm.cache import CACHE_FILE_NAME, ResponseCache
from aprompt.lm.endpoints import Endpoint
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import LM, Message
from aprompt.program import Predict
from aprompt.testing.fake_anthropic import FakeAnthropicServer, Fault, MessagesRequest
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.anyio
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

QUICK = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)
HELLO: list[Message] = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def server() -> AsyncIterator[FakeAnthropicServer]:
    """A fake Messages API answering "Answer: ok" to requests carrying ``TEST_API_KEY``."""
    async with FakeAnthropicServer(api_key=TEST_API_KEY) as fake:
        yield fake


@pytest.fixture
def kwargs(server: FakeAnthropicServer) -> dict[str, Any]:
    """Keyword arguments for ``AnthropicLM`` pointing at ``server``, with quick retries."""
    return {"model": "fake-claude", "base_url": server.base_url, "api_key": TEST_API_KEY, "retry": QUICK}


def sent(server: FakeAnthropicServer, index: int = -1) -> dict[str, Any]:
    body = server.chat_requests[index].body
    assert body is not None
    return body


def files_content(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` (the SQLite file and any journal beside it)."""
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


def question(index: int) -> list[Message]:
    return [{"role": "user", "content": f"Question {index}"}]


async def run_all(lm: AnthropicLM, prompts: list[list[Message]]) -> None:
    async with anyio.create_task_group() as tg:
        for messages in prompts:
            tg.start_soon(lm.chat, messages)


# -- the request on the wire ---------------------------------------------------------------------
@both_backends
async def test_requests_carry_the_key_and_version_headers_and_a_json_body(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    async with AnthropicLM(**kwargs, anthropic_version="2023-01-01") as lm:
        await lm.chat(HELLO)
    (request,) = server.chat_requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == TEST_API_KEY
    assert request.headers["anthropic-version"] == "2023-01-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers


async def test_system_messages_are_joined_into_the_top_level_system_field(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    messages: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Answer in French."},
    ]
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(messages)
    body = sent(server)
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


async def test_without_a_system_message_no_system_field_is_sent(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(HELLO)
    assert "system" not in sent(server)


async def test_consecutive_messages_of_one_role_are_merged_so_roles_alternate(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    messages: list[Message] = [
        {"role": "user", "content": "Q1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A1"},
        {"role": "system", "content": "S"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "Q3"},
    ]
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(messages)
    assert sent(server)["messages"] == [
        {"role": "user", "content": "Q1\n\nQ2"},
        {"role": "assistant", "content": "A1\n\nA2"},
        {"role": "user", "content": "Q3"},
    ]


async def test_a_blank_turn_is_left_out_and_its_neighbours_merge(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    """The API refuses a turn without text (400 "text content blocks must contain non-whitespace text")."""
    messages: list[Message] = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": " \n"},
        {"role": "user", "content": "Q2"},
    ]
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(messages)
    assert sent(server)["messages"] == [{"role": "user", "content": "Q1\n\nQ2"}]


async def test_max_tokens_is_always_sent_and_a_call_or_default_params_override_it(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    async with AnthropicLM(**kwargs, max_tokens=300) as lm:
        await lm.chat(HELLO)
        await lm.chat(HELLO, max_tokens=20)
        await lm.chat(HELLO, max_completion_tokens=30)
        await lm.chat(HELLO, max_tokens=None)
    async with AnthropicLM(**kwargs, default_params={"max_tokens": 40}) as lm:
        await lm.chat(HELLO)
    assert [sent(server, i)["max_tokens"] for i in range(5)] == [300, 20, 30, 300, 40]
    assert "max_completion_tokens" not in sent(server, 2)


@pytest.mark.parametrize("max_tokens", [0, 1.5, True, "100"])
async def test_a_max_tokens_that_is_not_a_positive_integer_is_a_config_error(
    kwargs: dict[str, Any], max_tokens: object
) -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        AnthropicLM(**kwargs, max_tokens=max_tokens)  # type: ignore[arg-type]


async def test_stop_becomes_stop_sequences_and_openai_only_params_are_dropped(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(HELLO, stop="\n", seed=7, n=1, presence_penalty=0.5, logit_bias={"1": 2})
        await lm.chat(HELLO, stop=["END", "STOP"], stop_sequences=["###"])
    first, second = sent(server, 0), sent(server, 1)
    assert first == {
        "model": "fake-claude",
        "messages": HELLO,
        "max_tokens": 1024,
        "stop_sequences": ["\n"],
    }
    assert second["stop_sequences"] == ["###", "END", "STOP"]


async def test_stop_sequences_given_as_a_string_with_stop_stay_one_sequence(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    """Not one sequence per character, which would end every reply at its first "E", "N" or "D"."""
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(HELLO, stop="\n", stop_sequences="END")
    assert sent(server)["stop_sequences"] == ["END", "\n"]


async def test_other_params_pass_through_unchanged(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(HELLO, temperature=0.3, top_k=5, metadata={"user_id": "u-1"})
    body = sent(server)
    assert (body["temperature"], body["top_k"], body["metadata"]) == (0.3, 5, {"user_id": "u-1"})


async def test_a_temperature_above_one_is_clamped_to_the_api_maximum(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(HELLO, temperature=1.4)
    assert sent(server)["temperature"] == 1.0


async def test_the_rollout_is_never_sent(server: FakeAnthropicServer, kwargs: dict[str, Any]) -> None:
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(HELLO, rollout=3)
    assert "rollout" not in sent(server) and "rollout" not in str(sent(server))


async def test_the_api_key_is_read_from_anthropic_api_key_by_default(
    server: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_API_KEY)
    async with AnthropicLM("fake-claude", server.base_url) as lm:
        await lm.chat(HELLO)
    assert server.chat_requests[0].headers["x-api-key"] == TEST_API_KEY


async def test_the_base_url_is_read_from_anthropic_base_url_by_default(
    server: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
    async with AnthropicLM("fake-claude", api_key=TEST_API_KEY) as lm:
        assert lm.endpoints == (server.base_url,)
        await lm.chat(HELLO)
    assert len(server.chat_requests) == 1


async def test_without_a_base_url_anywhere_the_public_api_is_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    async with AnthropicLM("fake-claude", api_key=TEST_API_KEY) as lm:
        assert lm.endpoints == ("https://api.anthropic.com",)


async def test_each_endpoint_gets_its_own_key(server: FakeAnthropicServer) -> None:
    other_key = "sk-ant-other-endpoint-3c9d"
    async with FakeAnthropicServer(api_key=other_key) as other:
        endpoints = [
            Endpoint(server.base_url, api_key=TEST_API_KEY),
            Endpoint(other.base_url, api_key=other_key),
        ]
        async with AnthropicLM("fake-claude", endpoints, max_concurrency=2) as lm:
            await run_all(lm, [question(i) for i in range(8)])
        assert len(server.chat_requests) > 0 and len(other.chat_requests) > 0
        assert all(r.status == 200 for r in [*server.requests, *other.requests])


# -- the answer ----------------------------------------------------------------------------------
@both_backends
async def test_chat_returns_the_text_usage_model_and_finish_reason(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    server.responder = lambda request: f"echo {request.last_user}"
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO)
    assert isinstance(lm, LM)
    assert (completion.text, completion.model, completion.finish_reason, completion.cached) == (
        "echo Hello",
        "fake-claude",
        "stop",
        False,
    )
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    assert (lm.usage.prompt_tokens, lm.usage.completion_tokens) == (2, 3)


async def test_text_blocks_are_concatenated_and_other_blocks_ignored(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    blocks = [
        {"type": "thinking", "thinking": "hmm", "signature": "x"},
        {"type": "text", "text": "Answer: "},
        {"type": "text", "text": "42"},
    ]
    server.responder = lambda request: ("", {"content": blocks})
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO)
    assert completion.text == "Answer: 42"


async def test_prompt_tokens_include_prompt_cache_reads_and_writes(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 7,
    }
    server.responder = lambda request: ("ok", {"usage": usage})
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1105, 7)


async def test_a_reply_cut_by_max_tokens_is_resent_with_twice_the_budget(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    server.responder = lambda request: "x" * 60
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO, max_tokens=10)
    assert (completion.text, completion.finish_reason) == ("x" * 60, "stop")
    assert [sent(server, i)["max_tokens"] for i in range(2)] == [10, 20]


async def test_a_reply_cut_by_max_completion_tokens_is_resent_not_taken_for_a_window_cut(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    """``max_completion_tokens`` is the budget sent (as ``max_tokens``), over the client's default: a reply
    cut at it wrote its whole budget. Read against the default, it was a context-window cut ('length'
    after 10 of 1024 tokens), raised at once with the advice to shorten the prompt."""
    server.responder = lambda request: "x" * 60
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO, max_completion_tokens=10)
    assert (completion.text, completion.finish_reason) == ("x" * 60, "stop")
    assert [sent(server, i)["max_tokens"] for i in range(2)] == [10, 20]


async def test_a_reply_cut_at_the_clients_max_tokens_after_a_call_unset_it_is_resent_with_twice_it(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    """``max_tokens=None`` sends the client's budget; a reply cut at it is re-sent with twice that, not
    with a default re-send budget below the one it was cut at."""
    server.responder = lambda request: "x" * 4 * 6000
    async with AnthropicLM(**kwargs, max_tokens=5000) as lm:
        completion = await lm.chat(HELLO, max_tokens=None)
    assert (len(completion.text), completion.finish_reason) == (24000, "stop")
    assert [sent(server, i)["max_tokens"] for i in range(2)] == [5000, 10000]


async def test_a_paused_turn_is_not_an_answer_and_is_sent_again(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    """``pause_turn``: the API stopped a long turn midway; its text is a part of a reply, not the reply."""
    server.queue_faults(Fault.reply("Let me look that up.", finish_reason="pause_turn"))
    async with AnthropicLM(**kwargs, max_retries=1) as lm:
        completion = await lm.chat(HELLO)
        assert (completion.text, completion.finish_reason) == ("Answer: ok", "stop")
        server.queue_faults(*[Fault.reply("Still looking.", finish_reason="pause_turn")] * 2)
        with pytest.raises(IncompleteResponseError) as caught:
            await lm.chat(question(1))
    assert (caught.value.finish_reason, caught.value.text) == ("pause_turn", "Still looking.")
    assert len(server.chat_requests) == 4


# -- retries -------------------------------------------------------------------------------------
@both_backends
async def test_a_429_is_retried_after_its_retry_after(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    server.queue_faults(Fault.rate_limited(retry_after="0.3"))
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO)
    limited, answered = server.chat_requests
    assert (limited.status, answered.status, completion.text) == (429, 200, "Answer: ok")
    assert answered.started - limited.finished >= 0.25
    assert (lm.usage.rate_limited, lm.usage.retries) == (1, 1)


@both_backends
async def test_a_529_overloaded_is_retried(server: FakeAnthropicServer, kwargs: dict[str, Any]) -> None:
    server.queue_faults(Fault.http_status(529, "Overloaded"), Fault.http_status(529, "Overloaded"))
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO)
    assert [r.status for r in server.chat_requests] == [529, 529, 200]
    assert completion.text == "Answer: ok"


async def test_a_500_is_retried(server: FakeAnthropicServer, kwargs: dict[str, Any]) -> None:
    server.queue_faults(Fault.http_status(500, "Internal server error"))
    async with AnthropicLM(**kwargs) as lm:
        await lm.chat(HELLO)
    assert [r.status for r in server.chat_requests] == [500, 200]


async def test_a_dropped_connection_is_retried(server: FakeAnthropicServer, kwargs: dict[str, Any]) -> None:
    server.queue_faults(Fault.drop_connection())
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO)
    assert [r.fault for r in server.chat_requests] == ["drop", None]
    assert completion.text == "Answer: ok"


async def test_invalid_json_and_a_body_without_content_are_retried(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    server.queue_faults(Fault.invalid_json(), Fault.missing_choices())
    async with AnthropicLM(**kwargs) as lm:
        completion = await lm.chat(HELLO)
    assert [r.fault for r in server.chat_requests] == ["invalid_json", "missing_choices", None]
    assert completion.text == "Answer: ok"


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        {"error": {"type": "api_error", "message": "upstream failed"}},
    ],
    ids=["error-shape", "error-beside-a-message"],
)
async def test_a_200_carrying_an_error_beside_text_is_retried_and_names_the_error(
    server: FakeAnthropicServer, kwargs: dict[str, Any], fields: dict[str, Any]
) -> None:
    server.responder = lambda request: ("Answer: partial", fields)
    async with AnthropicLM(**kwargs, max_retries=1) as lm:
        with pytest.raises(BadResponseError) as caught:
            await lm.chat(HELLO)
    assert fields["error"]["message"] in str(caught.value)
    assert len(server.chat_requests) == 2


async def test_when_retries_run_out_the_last_error_carries_the_servers_message(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    server.queue_faults(*[Fault.http_status(529, "Overloaded")] * 3)
    async with AnthropicLM(**kwargs, max_retries=2) as lm:
        with pytest.raises(ServerError) as caught:
            await lm.chat(HELLO)
    assert caught.value.status_code == 529
    assert caught.value.server_message == "overloaded_error: Overloaded"
    assert caught.value.endpoint == server.base_url
    assert lm.usage.errors == 1 and len(server.chat_requests) == 3


async def test_a_429_that_persists_raises_a_rate_limit_error(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    server.queue_faults(*[Fault.rate_limited(retry_after="0")] * 2)
    async with AnthropicLM(**kwargs, max_retries=1) as lm:
        with pytest.raises(RateLimitError, match="rate_limit_error"):
            await lm.chat(HELLO)


# -- errors that are not retried -----------------------------------------------------------------
@both_backends
async def test_a_401_is_an_authentication_error_with_the_servers_message_and_no_key(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    wrong_key = TEST_API_KEY + "-wrong"
    async with AnthropicLM(**{**kwargs, "api_key": wrong_key}) as lm:
        with pytest.raises(AuthenticationError) as caught:
            await lm.chat(HELLO)
    error = caught.value
    assert (error.status_code, error.server_message) == (401, "authentication_error: invalid x-api-key")
    assert len(server.chat_requests) == 1
    assert wrong_key not in f"{error} {error!r} {vars(error)!r}"


async def test_a_400_is_a_request_rejected_error_and_is_not_retried(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    async with AnthropicLM(**kwargs) as lm:
        with pytest.raises(RequestRejectedError) as caught:
            await lm.chat([{"role": "assistant", "content": "I start"}])
    assert caught.value.status_code == 400
    assert "first message must use the 'user' role" in caught.value.server_message
    assert len(server.chat_requests) == 1 and lm.usage.errors == 1


async def test_a_prompt_leaving_no_room_for_max_tokens_is_a_context_overflow_not_retried(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    """The API's 400 for input + ``max_tokens`` over the context is the prompt's, as "prompt is too long"."""
    message = (
        "input length and `max_tokens` exceed context limit: 199500 + 1024 > 200000, "
        "decrease input length or `max_tokens` and try again"
    )
    server.queue_faults(Fault.http_status(400, message))
    async with AnthropicLM(**kwargs) as lm:
        with pytest.raises(ContextOverflowError) as caught:
            await lm.chat(HELLO)
    assert caught.value.server_message == f"invalid_request_error: {message}"
    assert len(server.chat_requests) == 1


# -- cache ---------------------------------------------------------------------------------------
async def test_a_second_identical_call_is_answered_by_the_cache_without_a_request(
    server: FakeAnthropicServer, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        async with AnthropicLM(**kwargs, cache=cache) as lm:
            first = await lm.chat(HELLO, temperature=0.0)
            again = await lm.chat(HELLO, temperature=0.0)
    assert (first.cached, again.cached, again.text, again.usage) == (False, True, first.text, first.usage)
    assert len(server.chat_requests) == 1
    assert (lm.usage.calls, lm.usage.cache_hits, lm.usage.requests) == (2, 1, 1)


async def test_the_rollout_is_part_of_the_cache_key_but_never_sent(
    server: FakeAnthropicServer, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        async with AnthropicLM(**kwargs, cache=cache) as lm:
            await lm.chat(HELLO, temperature=1.0)
            other = await lm.chat(HELLO, temperature=1.0, rollout=1)
    assert other.cached is False
    assert len(server.chat_requests) == 2 and sent(server, 0) == sent(server, 1)


async def test_the_max_tokens_default_is_part_of_the_cache_key(
    server: FakeAnthropicServer, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        async with AnthropicLM(**kwargs, cache=cache, max_tokens=10) as short:
            await short.chat(HELLO)
        async with AnthropicLM(**kwargs, cache=cache, max_tokens=500) as long:
            completion = await long.chat(HELLO)
    assert completion.cached is False and len(server.chat_requests) == 2


async def test_a_call_that_unsets_max_tokens_is_keyed_by_the_budget_sent(
    server: FakeAnthropicServer, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    # max_tokens=None sends the client's own budget: a client of another budget must not be answered with
    # a reply written under this one's.
    with ResponseCache.in_directory(tmp_path) as cache:
        async with AnthropicLM(**kwargs, cache=cache, max_tokens=10) as short:
            await short.chat(HELLO, max_tokens=None)
        async with AnthropicLM(**kwargs, cache=cache, max_tokens=500) as long:
            completion = await long.chat(HELLO, max_tokens=None)
            again = await long.chat(HELLO)  # the same request: the budget sent is the same
    assert (completion.cached, again.cached) == (False, True)
    assert [sent(server, i)["max_tokens"] for i in range(2)] == [10, 500]


async def test_an_openai_compatible_client_of_the_same_model_does_not_share_its_cache_entries(
    server: FakeAnthropicServer, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        async with AnthropicLM(**kwargs, cache=cache, max_tokens=50) as anthropic:
            await anthropic.chat(HELLO, temperature=0.0)
        async with FakeOpenAIServer() as openai_server:
            async with OpenAICompatibleLM(
                "fake-claude", openai_server.base_url, api_key=TEST_API_KEY, cache=cache
            ) as openai:
                completion = await openai.chat(HELLO, temperature=0.0, max_tokens=50)
            assert len(openai_server.chat_requests) == 1
    assert completion.cached is False


async def test_the_cache_file_holds_no_api_key(
    server: FakeAnthropicServer, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        async with AnthropicLM(**kwargs, cache=cache) as lm:
            await run_all(lm, [question(i) for i in range(5)])
    stored = files_content(tmp_path)
    assert CACHE_FILE_NAME in stored and len(stored[CACHE_FILE_NAME]) > 0
    assert all(TEST_API_KEY.encode() not in content for content in stored.values())


# -- concurrency ---------------------------------------------------------------------------------
@both_backends
async def test_the_concurrency_cap_holds_at_the_server(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    server.latency = 0.02
    async with AnthropicLM(**kwargs, max_concurrency=6) as lm:
        started = time.monotonic()
        await run_all(lm, [question(i) for i in range(60)])
    assert server.max_in_flight == 6
    assert lm.usage.calls == 60
    assert time.monotonic() - started >= 10 * 0.02


# -- keys ----------------------------------------------------------------------------------------
async def test_repr_shows_model_and_endpoint_but_not_the_key(kwargs: dict[str, Any]) -> None:
    async with AnthropicLM(**kwargs) as lm:
        text = f"{lm!r} {lm!s}"
    assert "fake-claude" in text and kwargs["base_url"] in text
    assert TEST_API_KEY not in text


async def test_no_key_in_errors_or_debug_logs(
    server: FakeAnthropicServer, kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    server.queue_faults(*[Fault.drop_connection()] * 2, *[Fault.http_status(529, "Overloaded")] * 2)
    async with AnthropicLM(**kwargs, max_retries=1) as lm:
        for _ in range(2):
            with pytest.raises(LMError) as caught:
                await lm.chat(HELLO)
            errors.append(caught.value)
        server.queue_faults(Fault.rate_limited("0.01"))
        await lm.chat(HELLO)
    async with AnthropicLM(**{**kwargs, "api_key": TEST_API_KEY + "x"}) as lm:
        with pytest.raises(AuthenticationError) as auth:
            await lm.chat(HELLO)
        errors.append(auth.value)
    assert "retrying" in caplog.text  # the retries were logged ...
    assert TEST_API_KEY not in caplog.text  # ... without the key
    for error in errors:
        chained: BaseException | None = error
        while chained is not None:
            assert TEST_API_KEY not in f"{chained} {chained!r} {vars(chained)!r}"
            chained = chained.__cause__ or chained.__context__


# -- programs ------------------------------------------------------------------------------------
@both_backends
async def test_a_predict_runs_through_the_anthropic_client(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    seen: list[MessagesRequest] = []

    def respond(request: Any) -> str:
        seen.append(request)
        return "Answer: 3"

    server.responder = respond
    predict = Predict("question -> answer: int", instruction="Count the animals.", lm=None)
    predict.demos = [{"question": "a cat and a dog?", "answer": 2}]
    async with AnthropicLM(**kwargs) as lm:
        prediction = await predict(question="a cat, a dog and a fish?", lm=lm)
    assert prediction.answer == 3
    body = sent(server)
    assert body["system"].startswith("Count the animals.")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert seen[0].last_user == "Question: a cat, a dog and a fish?"


async def test_a_blank_reply_gets_the_predicts_correction_not_a_rejected_request(
    server: FakeAnthropicServer, kwargs: dict[str, Any]
) -> None:
    """A reply of whitespace alone is unreadable: the correction that quotes it back must still be sent."""
    replies = iter([" \n", "Answer: 3"])
    server.responder = lambda request: next(replies)
    predict = Predict("question -> answer: int", lm=None)
    async with AnthropicLM(**kwargs) as lm:
        prediction = await predict(question="How many?", lm=lm)
    assert prediction.answer == 3
    assert [m["role"] for m in sent(server)["messages"]] == ["user"]
    assert len(server.chat_requests) == 2


# -- the fake itself -----------------------------------------------------------------------------
async def test_the_fake_answers_errors_in_the_apis_shape(server: FakeAnthropicServer) -> None:
    headers = {"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"}
    request = {"model": "m", "max_tokens": 8, "messages": HELLO}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        no_version = await client.post("/v1/messages", json=request, headers={"x-api-key": TEST_API_KEY})
        no_max_tokens = await client.post(
            "/v1/messages", json={**request, "max_tokens": None}, headers=headers
        )
        extra = await client.post("/v1/messages", json={**request, "stop": ["x"]}, headers=headers)
        server.queue_faults(Fault.http_status(529, "Overloaded"))
        overloaded = await client.post("/v1/messages", json=request, headers=headers)
    assert [r.status_code for r in (no_version, no_max_tokens, extra, overloaded)] == [400, 400, 400, 529]
    assert extra.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "stop: Extra inputs are not permitted"},
    }
    assert overloaded.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}


async def test_the_fake_accepts_system_and_content_as_text_blocks(server: FakeAnthropicServer) -> None:
    server.responder = lambda request: f"{request.prompt_text!r}"
    headers = {"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"}
    request = {
        "model": "m",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.post("/v1/messages", json=request, headers=headers)
    answer = response.json()
    assert (answer["type"], answer["role"], answer["stop_reason"]) == ("message", "assistant", "end_turn")
    assert answer["content"] == [{"type": "text", "text": "'Be brief.\\nHi'"}]
    assert set(answer["usage"]) == {"input_tokens", "output_tokens"}
