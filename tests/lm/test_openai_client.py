"""The OpenAI-compatible client against a loopback server: requests, limits, cache, usage, keys."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import httpx
import pytest

import aprompt
from aprompt._errors import (
    AuthenticationError,
    BadResponseError,
    ConfigError,
    IncompleteResponseError,
    LMError,
    RequestRejectedError,
    ServerError,
)
from aprompt.lm._http import HTTPChatLM
from aprompt.lm.anthropic import AnthropicLM
from aprompt.lm.cache import CACHE_FILE_NAME, ResponseCache
from aprompt.lm.endpoints import Endpoint
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import LM, Message
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault
from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.anyio

#: The package's folder: its frames are the library's own.
_PACKAGE = Path(aprompt.__file__).resolve().parent
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

QUICK = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)
HELLO: list[Message] = [{"role": "user", "content": "Hello"}]


def question(index: int) -> list[Message]:
    return [{"role": "user", "content": f"Question {index}"}]


async def run_all(lm: OpenAICompatibleLM, prompts: list[list[Message]]) -> None:
    async with anyio.create_task_group() as tg:
        for messages in prompts:
            tg.start_soon(lm.chat, messages)


def files_content(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` (the SQLite file and any journal beside it)."""
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}


def max_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + width) for i, t in enumerate(times))


# -- requests and responses ----------------------------------------------------------------------
@both_backends
async def test_chat_returns_the_text_and_the_reported_usage(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.responder = lambda request: f"echo {request.last_user}"
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        completion = await lm.chat(HELLO)
    assert isinstance(lm, LM)
    assert (completion.text, completion.finish_reason, completion.cached) == (
        "echo Hello",
        "stop",
        False,
    )
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)


async def test_rollout_is_never_sent_and_params_merge_over_defaults(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    defaults = {"temperature": 0.0, "max_tokens": 64, "seed": 1}
    async with OpenAICompatibleLM(**lm_kwargs, default_params=defaults) as lm:
        await lm.chat(HELLO, rollout=3, temperature=0.7, seed=None)
    (request,) = fake_server.chat_requests
    assert request.body == {
        "model": "fake-model",
        "messages": HELLO,
        "max_tokens": 64,
        "temperature": 0.7,
    }


async def test_a_client_told_to_seeds_each_request_with_its_rollout(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    async with OpenAICompatibleLM(**lm_kwargs, seed_rollouts=True) as lm:
        await lm.chat(HELLO, rollout=7, temperature=1.0)
        await lm.chat(HELLO, temperature=1.0)
        await lm.chat(HELLO, rollout=7, temperature=1.0, seed=42)  # the caller's own seed wins
    assert [r.body.get("seed") for r in fake_server.chat_requests] == [7, 0, 42]


async def test_api_key_is_read_from_the_environment_variable(
    fake_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_FAKE_KEY", TEST_API_KEY)
    async with OpenAICompatibleLM("fake-model", fake_server.base_url, api_key_env="MY_FAKE_KEY") as lm:
        await lm.chat(HELLO)
    assert fake_server.chat_requests[0].headers["authorization"] == f"Bearer {TEST_API_KEY}"


async def test_a_request_refused_for_want_of_a_key_says_which_variable_is_not_set(
    fake_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MY_FAKE_KEY", raising=False)
    async with OpenAICompatibleLM("fake-model", fake_server.base_url, api_key_env="MY_FAKE_KEY") as lm:
        with pytest.raises(AuthenticationError, match=r"no API key was sent: \$MY_FAKE_KEY is not set"):
            await lm.chat(HELLO)
    assert "authorization" not in fake_server.chat_requests[0].headers
    # A wrong key is not a missing one.
    async with OpenAICompatibleLM("fake-model", fake_server.base_url, api_key=TEST_API_KEY + "x") as lm:
        with pytest.raises(AuthenticationError) as caught:
            await lm.chat(HELLO)
    assert "no API key was sent" not in str(caught.value)


async def test_a_404_names_the_url_the_request_went_to_and_the_model(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    # A base URL without its /v1 (or a mistyped model): the server's "Not Found" alone does not say which.
    fake_server.queue_faults(Fault.http_status(404, "Not Found"))
    base_url = lm_kwargs["base_url"] + "?api-version=1"
    async with OpenAICompatibleLM(**{**lm_kwargs, "base_url": base_url}) as lm:
        with pytest.raises(RequestRejectedError) as caught:
            await lm.chat(HELLO)
    url = f"{lm_kwargs['base_url']}/chat/completions?api-version=1"
    expected = f"HTTP 404: Not Found; check the base URL (this request went to {url})"
    assert str(caught.value).startswith(expected)
    assert "the model name 'fake-model'" in str(caught.value) and caught.value.status_code == 404


async def test_the_locals_of_a_failed_calls_traceback_show_no_key(fake_server: FakeOpenAIServer) -> None:
    # What a traceback printer that shows locals (pytest's --showlocals, rich, an error tracker) prints.
    fake_server.queue_faults(Fault.http_status(500))
    url = f"{fake_server.base_url}?api-key=sk-query-key-123456"
    async with OpenAICompatibleLM("fake-model", url, api_key=TEST_API_KEY, max_retries=0) as lm:
        with pytest.raises(ServerError) as caught:
            await lm.chat(HELLO)
    # The library's own frames: the test's (which holds the fake server and its key) lies outside the
    # package, wherever the repository is checked out (a clone's folder may be named aprompt too).
    frames = [entry.frame for entry in caught.traceback if Path(entry.path).is_relative_to(_PACKAGE)]
    shown = [repr(value) for frame in frames for value in frame.f_locals.values()]
    assert any("ReplyReader(" in text for text in shown)  # the reader's frame is among them
    assert not [text for text in shown if TEST_API_KEY in text]
    # A key in the URL's query is in the URL the request is sent to, and nowhere else.
    beyond_the_url = [
        repr(value)
        for frame in frames
        for value in frame.f_locals.values()
        if not isinstance(value, httpx.URL)
    ]
    assert not [text for text in beyond_the_url if "sk-query-key-123456" in text]


async def test_repr_shows_model_and_endpoint_but_not_the_key(lm_kwargs: dict[str, Any]) -> None:
    lm = OpenAICompatibleLM(**lm_kwargs)
    assert "fake-model" in repr(lm) and lm_kwargs["base_url"] in repr(lm)
    assert TEST_API_KEY not in repr(lm) and TEST_API_KEY not in str(lm)
    await lm.aclose()


async def test_no_key_in_errors_or_debug_logs(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    fake_server.queue_faults(*[Fault.drop_connection()] * 2, *[Fault.http_status(502)] * 2)
    async with OpenAICompatibleLM(**lm_kwargs, retry=QUICK, max_retries=1) as lm:
        for _ in range(2):
            with pytest.raises(LMError) as caught:
                await lm.chat(HELLO)
            errors.append(caught.value)
        fake_server.queue_faults(Fault.rate_limited("0.01"))
        await lm.chat(HELLO)
    async with OpenAICompatibleLM(**{**lm_kwargs, "api_key": TEST_API_KEY + "x"}) as lm:
        with pytest.raises(AuthenticationError) as caught:
            await lm.chat(HELLO)
        errors.append(caught.value)
    assert "retrying" in caplog.text  # the retries were logged ...
    assert TEST_API_KEY not in caplog.text  # ... without the key
    for error in errors:
        chained: BaseException | None = error
        while chained is not None:
            assert TEST_API_KEY not in f"{chained} {chained!r} {vars(chained)!r}"
            chained = chained.__cause__ or chained.__context__


@pytest.mark.parametrize("client", [OpenAICompatibleLM, AnthropicLM])
@pytest.mark.parametrize(
    "suffix", ["\n", "\r\nX-Injected: yes", "\t", "\u2019"], ids=["newline", "crlf", "tab", "not-ascii"]
)
async def test_a_key_with_a_control_or_non_ascii_character_is_a_config_error_that_never_shows_the_key(
    fake_server: FakeOpenAIServer, client: type[HTTPChatLM], suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key read from a file keeps its line break: sent as is, it would end the request's head early
    # (or inject a header) and the server would answer something unrelated to the key. A character not
    # ASCII (a quote pasted with the key) went out as UTF-8 for a 401, or through httpx (a proxy, a
    # caller's client) as a UnicodeEncodeError that held the key.
    key = TEST_API_KEY + suffix
    monkeypatch.setenv("MY_FAKE_KEY", key)
    for options in (
        {"api_key": key},
        {"api_key_env": "MY_FAKE_KEY"},
        {"base_url": [Endpoint(fake_server.base_url, api_key=key)]},
    ):
        with pytest.raises(ConfigError, match="API key") as caught:
            client("fake-model", **{"base_url": fake_server.base_url, **options})  # type: ignore[arg-type]
        assert TEST_API_KEY not in f"{caught.value} {caught.value!r}"
    assert fake_server.requests == []


async def test_a_passed_in_http_client_is_used_and_left_open(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    async with httpx.AsyncClient() as client:
        async with OpenAICompatibleLM(**lm_kwargs, http_client=client) as lm:
            await lm.chat(HELLO)
        assert not client.is_closed
        response = await client.get(f"{fake_server.base_url}/models")
        assert response.status_code == 200


async def test_the_owned_http_client_is_closed_on_exit(lm_kwargs: dict[str, Any]) -> None:
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        await lm.chat(HELLO)
    with pytest.raises(LMError, match="closed"):
        await lm.chat(HELLO)


# -- concurrency and rate limits -----------------------------------------------------------------
@both_backends
async def test_concurrency_cap_holds_at_the_server(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.latency = 0.02
    async with OpenAICompatibleLM(**lm_kwargs, max_concurrency=8) as lm:
        await run_all(lm, [question(i) for i in range(100)])
    assert fake_server.max_in_flight == 8
    assert lm.usage.calls == 100


@both_backends
async def test_requests_per_minute_burst_cap_paces_requests_at_the_server(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    # 600 per minute: at most 30 (three even shares) in any second, the rest once it has passed.
    rpm, calls, burst = 600, 70, 30
    async with OpenAICompatibleLM(**lm_kwargs, requests_per_minute=rpm) as lm:
        await run_all(lm, [question(i) for i in range(calls)])
    arrived = sorted(r.started for r in fake_server.chat_requests)
    assert len(arrived) == calls
    # More than a second's even share (10) goes at once: a token bucket of one second's worth
    # would let through at most 10 + 0.9 * 9.83 in the first 0.9 s.
    assert sum(t < arrived[0] + 0.9 for t in arrived) > 20
    # The first request may arrive a little after it was admitted (connection set-up); later ones
    # no sooner than a second after their burst's first admission.
    assert arrived[burst] - arrived[0] >= 0.8
    assert arrived[2 * burst] - arrived[0] >= 1.8


async def test_tokens_per_minute_cap_reserved_tokens_until_refunds_make_room(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    # Each request reserves 4 + 4 prompt tokens + 92 max_tokens = 100; the burst cap is 300 tokens a
    # second (three even shares of 6000/min), so three go at once and the others wait for refunds:
    # the server reports 4 + 3 tokens each.
    fake_server.latency = 0.3
    async with OpenAICompatibleLM(**lm_kwargs, tokens_per_minute=6000, max_concurrency=8) as lm:
        async with anyio.create_task_group() as tg:
            for index in range(6):
                messages: list[Message] = [{"role": "user", "content": f"x{index:02d}" + "x" * 13}]
                tg.start_soon(functools.partial(lm.chat, messages, max_tokens=92))
    requests = fake_server.chat_requests
    first_answer = min(r.finished for r in requests)
    assert len(requests) == 6
    assert sum(r.started < first_answer for r in requests) == 3


@both_backends
async def test_a_429_pauses_every_task_for_its_retry_after(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.latency = 0.02
    fake_server.queue_faults(Fault.rate_limited(retry_after="1"))

    async def worker(lm: OpenAICompatibleLM, index: int) -> None:
        for call in range(6):
            await lm.chat(question(index * 100 + call))

    async with OpenAICompatibleLM(**lm_kwargs, retry=QUICK) as lm:
        async with anyio.create_task_group() as tg:
            for index in range(8):
                tg.start_soon(worker, lm, index)
    limited = next(r for r in fake_server.chat_requests if r.status == 429)
    # Requests already on the wire when the 429 left the server may still arrive just after it.
    during_pause = [
        r for r in fake_server.chat_requests if limited.finished + 0.05 < r.started < limited.finished + 1.0
    ]
    assert during_pause == []
    assert lm.usage.calls == 48 and lm.usage.rate_limited == 1


# -- cache ---------------------------------------------------------------------------------------
@both_backends
async def test_identical_concurrent_requests_make_one_http_call(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    fake_server.latency = 0.05
    with ResponseCache.in_directory(tmp_path) as cache:
        async with OpenAICompatibleLM(**lm_kwargs, cache=cache) as lm:
            await run_all(lm, [HELLO] * 20)
    assert len(fake_server.chat_requests) == 1
    assert (lm.usage.calls, lm.usage.cache_hits, lm.usage.requests) == (20, 19, 1)


async def test_a_cache_hit_makes_no_request_and_counts_as_a_call(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        async with OpenAICompatibleLM(**lm_kwargs, cache=cache) as lm:
            first = await lm.chat(HELLO, temperature=0.0)
            again = await lm.chat(HELLO, temperature=0.0)
            other_rollout = await lm.chat(HELLO, temperature=0.0, rollout=1)
    assert (first.cached, again.cached, other_rollout.cached) == (False, True, False)
    assert again.text == first.text
    assert len(fake_server.chat_requests) == 2
    assert (lm.usage.calls, lm.usage.cache_hits, lm.usage.requests) == (3, 1, 2)
    assert lm.usage.prompt_tokens == 2 * first.usage.prompt_tokens


async def test_the_cache_file_holds_no_api_key(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        async with OpenAICompatibleLM(**lm_kwargs, cache=cache) as lm:
            await run_all(lm, [question(i) for i in range(5)])
    stored = files_content(tmp_path)
    assert CACHE_FILE_NAME in stored and len(stored[CACHE_FILE_NAME]) > 0
    assert all(TEST_API_KEY.encode() not in content for content in stored.values())


async def test_an_answer_received_is_returned_when_the_cache_file_cannot_store_it(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process holds the file's write lock past the busy timeout: the answer is already paid for,
    # and a cache only saves calls, so the call returns it (and says the file could not take it).
    with ResponseCache.in_directory(tmp_path, busy_timeout=0.05) as cache:
        other = sqlite3.connect(tmp_path / CACHE_FILE_NAME, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with OpenAICompatibleLM(**lm_kwargs, cache=cache) as lm:
                with caplog.at_level(logging.WARNING):
                    completion = await lm.chat(HELLO)
                again = await lm.chat(HELLO)  # from memory
        finally:
            other.execute("ROLLBACK")
            other.close()
    assert (completion.text, completion.cached, again.cached) == ("Answer: ok", False, True)
    assert len(fake_server.chat_requests) == 1
    assert (lm.usage.calls, lm.usage.errors) == (2, 0)
    assert "cannot write to the LM cache" in caplog.text


CHILD = """
import json, sys
import anyio
from aprompt.lm.cache import ResponseCache
from aprompt.lm.openai import OpenAICompatibleLM

async def main() -> None:
    with ResponseCache.in_directory(sys.argv[1]) as cache:
        async with OpenAICompatibleLM("fake-model", sys.argv[2], cache=cache) as lm:
            completion = await lm.chat([{"role": "user", "content": "6 x 7?"}], temperature=0)
    print(json.dumps({"text": completion.text, "cached": completion.cached, **lm.usage.as_dict()}))

anyio.run(main)
"""


async def test_the_disk_cache_answers_a_new_process_without_a_request(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_server.responder = lambda request: "42"
    command = [sys.executable, "-c", CHILD, str(tmp_path / "cache"), fake_server.base_url]
    env = {**os.environ, "OPENAI_API_KEY": TEST_API_KEY}
    first = json.loads((await anyio.run_process(command, env=env)).stdout)
    second = json.loads((await anyio.run_process(command, env=env)).stdout)
    assert (first["text"], first["cached"], first["requests"]) == ("42", False, 1)
    assert (second["text"], second["cached"], second["requests"]) == ("42", True, 0)
    assert second["cache_hits"] == 1
    assert len(fake_server.chat_requests) == 1


def choices_with_content(content: object) -> tuple[str, dict[str, Any]]:
    """A responder's reply whose message content is ``content`` as given (not necessarily a string)."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    return "", {"choices": [choice]}


async def test_content_sent_as_a_list_of_parts_is_the_text_of_its_text_parts(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    # Some OpenAI-compatible servers (Mistral's reasoning models) send the content as parts.
    parts = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "6 x 7 is 42"}]},
        {"type": "text", "text": "Answer: "},
        {"type": "text", "text": "42"},
    ]
    fake_server.responder = lambda request: choices_with_content(parts)
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        completion = await lm.chat(HELLO)
    assert completion.text == "Answer: 42"


@pytest.mark.parametrize("content", [42, {"text": "Answer: 42"}, [{"type": "text", "text": 42}]])
async def test_content_that_is_not_text_is_a_bad_response(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], content: object
) -> None:
    fake_server.responder = lambda request: choices_with_content(content)
    async with OpenAICompatibleLM(**lm_kwargs, max_retries=0) as lm:
        with pytest.raises(BadResponseError, match="content"):
            await lm.chat(HELLO)


async def test_a_200_carrying_an_error_instead_of_choices_is_a_bad_response_with_the_servers_message(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    # Routers (OpenRouter) answer an upstream failure with a 200 whose body is an error.
    error = {"message": "Upstream provider overloaded", "code": 502}
    fake_server.responder = lambda request: ("", {"choices": [], "error": error})
    async with OpenAICompatibleLM(**lm_kwargs, max_retries=0) as lm:
        with pytest.raises(BadResponseError, match="Upstream provider overloaded"):
            await lm.chat(HELLO)


@pytest.mark.parametrize("where", ["body", "choice"])
@pytest.mark.parametrize("text", ["", "Answer: 4"])
async def test_a_200_whose_reply_carries_an_error_is_a_bad_response_not_an_answer(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], where: str, text: str
) -> None:
    # OpenRouter reports a generation that failed upstream in a 200, its error beside what text came
    # before the failure: neither an answer nor the prompt's own empty reply (which would score 0).
    error = {"message": "Upstream provider died mid-reply", "code": 502}
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
    if where == "body":
        fake_server.responder = lambda request: ("", {"choices": [choice], "error": error})
    else:
        fake_server.responder = lambda request: ("", {"choices": [{**choice, "error": error}]})
    async with OpenAICompatibleLM(**lm_kwargs, max_retries=0) as lm:
        with pytest.raises(BadResponseError, match="Upstream provider died mid-reply") as raised:
            await lm.chat(HELLO)
    assert not isinstance(raised.value, IncompleteResponseError)


# -- usage ---------------------------------------------------------------------------------------
async def test_usage_counts_calls_hits_requests_retries_errors_and_tokens_exactly(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        async with OpenAICompatibleLM(**lm_kwargs, cache=cache, retry=QUICK, max_retries=2) as lm:
            fake_server.queue_faults(Fault.http_status(503), Fault.rate_limited("0.01"))
            fresh = await lm.chat(HELLO)  # 3 requests, 2 retries, 1 rate-limited
            await lm.chat(HELLO)  # a cache hit
            fake_server.queue_faults(*[Fault.http_status(500)] * 3)
            with pytest.raises(ServerError):
                await lm.chat(question(1))  # 3 requests, 2 retries, 1 error
            usage = lm.usage
    assert usage.as_dict() == {
        "calls": 2,
        "cache_hits": 1,
        "requests": 6,
        "retries": 4,
        "errors": 1,
        "rate_limited": 1,
        "prompt_tokens": fresh.usage.prompt_tokens,
        "completion_tokens": fresh.usage.completion_tokens,
    }
    assert usage.lm_calls == usage.requests == 6  # LM calls: the requests sent, retries included


# -- connections ---------------------------------------------------------------------------------
async def test_sequential_calls_reuse_one_keep_alive_connection(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        for index in range(5):
            await lm.chat(question(index))
    assert fake_server.connections_opened == 1


@both_backends
async def test_the_probe_opens_the_connection_the_first_call_then_uses(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        await lm.probe()
        await lm.chat(question(0))
    assert [r.path for r in fake_server.requests] == ["/v1/models", "/v1/chat/completions"]
    assert fake_server.connections_opened == 1


@both_backends
async def test_a_base_url_query_follows_the_path_of_the_probe_and_of_each_call(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    kwargs = {**lm_kwargs, "base_url": fake_server.base_url + "?api-version=2"}
    async with OpenAICompatibleLM(**kwargs) as lm:
        await lm.probe()
        await lm.chat(question(0))
    assert [r.path for r in fake_server.requests] == [
        "/v1/models?api-version=2",
        "/v1/chat/completions?api-version=2",
    ]


@both_backends
async def test_cookies_an_answer_sets_are_not_sent_back(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.response_headers = lambda number: {"set-cookie": f"session=s{number}; Path=/"}
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        for index in range(3):
            await lm.chat(question(index))
    assert fake_server.connections_opened == 1  # one lane, whose client would keep a jar
    assert [r.headers.get("cookie") for r in fake_server.chat_requests] == [None, None, None]


async def test_concurrent_calls_open_no_more_connections_than_the_concurrency_cap(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.latency = 0.005
    async with OpenAICompatibleLM(**lm_kwargs, max_concurrency=8) as lm:
        for _ in range(3):
            await run_all(lm, [question(i) for i in range(40)])
    assert fake_server.connections_opened == 8


async def test_a_parameter_that_is_not_json_is_a_config_error_before_any_request(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        with pytest.raises(ConfigError):
            await lm.chat(HELLO, logit_bias=object())
    assert fake_server.chat_requests == [] and lm.usage.requests == 0


@pytest.mark.parametrize("client", [OpenAICompatibleLM, AnthropicLM])
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_retries", -1),
        ("max_retries", 1.5),
        ("timeout", math.nan),
        ("timeout", "30"),
        ("max_concurrency", 2.5),
        ("max_concurrency", "8"),
        ("retry", 3),  # a number of retries, meant as max_retries
        ("max_response_bytes", "1000000"),
    ],
)
async def test_a_bad_client_option_is_a_config_error_naming_it(
    fake_server: FakeOpenAIServer, client: type[HTTPChatLM], option: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=option):
        client("fake-model", fake_server.base_url, api_key="", **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [{"max_retries": -1}, {"initial_backoff": math.nan}, {"jitter": 2.0}, {"max_backoff": "30"}],
)
def test_a_bad_retry_policy_is_a_config_error_naming_the_field(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        RetryPolicy(**options)


@pytest.mark.parametrize("client", [OpenAICompatibleLM, AnthropicLM])
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ("Hello", "a list of messages"),
        (iter([{"role": "user", "content": "Hello"}]), "a list of messages"),
        ([("user", "Hello")], "message 0"),
        ([{"role": "user"}], "message 0.*content"),
        ([{"role": "system", "content": "Be brief."}, {"content": "Hello"}], "message 1.*role"),
        ([{"role": "user", "content": None}], "message 0.*content"),
    ],
    ids=["string", "iterator", "tuple", "no-content", "no-role", "null-content"],
)
async def test_malformed_messages_are_a_config_error_naming_the_message_before_any_request(
    fake_server: FakeOpenAIServer,
    client: type[HTTPChatLM],
    cached: bool,
    messages: Any,
    problem: str,
) -> None:
    cache = ResponseCache.memory_only() if cached else None
    async with client("fake-model", fake_server.base_url, api_key=TEST_API_KEY, cache=cache) as lm:
        with pytest.raises(ConfigError, match=problem):
            await lm.chat(messages)
    assert fake_server.requests == [] and lm.usage.requests == 0


async def test_messages_in_a_tuple_of_read_only_mappings_are_sent_as_a_list_of_dicts_would_be(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    as_dicts: list[Message] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    as_mappings = tuple(MappingProxyType(dict(message)) for message in as_dicts)
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        first = await lm.chat(as_dicts)
        second = await lm.chat(as_mappings)  # type: ignore[arg-type]
    assert second.text == first.text
    sent = [request.body for request in fake_server.chat_requests]
    assert sent[0] is not None and sent[1] is not None
    assert sent[0]["messages"] == sent[1]["messages"] == as_dicts


@pytest.mark.parametrize("client", [OpenAICompatibleLM, AnthropicLM])
@pytest.mark.parametrize("where", ["call", "default_params"])
async def test_streaming_is_a_config_error_before_any_request(
    fake_server: FakeOpenAIServer, client: type[HTTPChatLM], where: str
) -> None:
    # A streamed answer is a series of events, not one JSON body: every attempt would be paid for and
    # then fail as malformed.
    options: dict[str, Any] = {"default_params": {"stream": True}} if where == "default_params" else {}
    call: dict[str, Any] = {"stream": True} if where == "call" else {}
    async with client("fake-model", fake_server.base_url, api_key=TEST_API_KEY, **options) as lm:
        with pytest.raises(ConfigError, match="stream"):
            await lm.chat(HELLO, **call)
    assert fake_server.requests == []


@pytest.mark.parametrize("option", ["requests_per_minute", "tokens_per_minute"])
@pytest.mark.parametrize("value", [math.inf, math.nan, "60", True], ids=["inf", "nan", "text", "bool"])
async def test_a_rate_limit_that_is_not_a_finite_positive_number_is_a_config_error(
    fake_server: FakeOpenAIServer, option: str, value: object
) -> None:
    # None is "no limit"; infinity is not a way to say it (the adaptive cap would be infinite).
    with pytest.raises(ConfigError, match="rate limit"):
        OpenAICompatibleLM("fake-model", fake_server.base_url, api_key="", **{option: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rate limit"):
        OpenAICompatibleLM("fake-model", [Endpoint(fake_server.base_url, **{option: value})], api_key="")  # type: ignore[arg-type]


@pytest.mark.parametrize("client", [OpenAICompatibleLM, AnthropicLM])
@pytest.mark.parametrize(
    ("name", "where"), [("model", "call"), ("model", "default_params"), ("messages", "default_params")]
)
async def test_a_parameter_that_would_replace_the_model_or_the_messages_is_a_config_error(
    fake_server: FakeOpenAIServer, client: type[HTTPChatLM], name: str, where: str
) -> None:
    # Sent, it would replace the body's own field: the reply would be another model's (priced, metered
    # and reported as this client's model) or an answer to other messages.
    value: Any = "gpt-4o" if name == "model" else [{"role": "user", "content": "Something else"}]
    options: dict[str, Any] = {"default_params": {name: value}} if where == "default_params" else {}
    call: dict[str, Any] = {name: value} if where == "call" else {}
    async with client("fake-model", fake_server.base_url, api_key=TEST_API_KEY, **options) as lm:
        with pytest.raises(ConfigError, match=name):
            await lm.chat(HELLO, **call)
    assert fake_server.requests == []


FIRST_REQUEST_CHILD = """
import sys, anyio
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.testing.fake_openai import FakeOpenAIServer

async def main():
    async with FakeOpenAIServer() as server:
        before = set(sys.modules)
        async with OpenAICompatibleLM("fake-model", server.base_url, api_key="") as lm:
            await lm.chat([{"role": "user", "content": "Hello"}])
        print(" ".join(sorted(set(sys.modules) - before)))

anyio.run(main, backend=sys.argv[1])
"""


HTTP_STACK = {"httpx", "httpcore", "h11", "certifi", "trio"}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_clients_first_request_imports_no_http_module(backend: str) -> None:
    # httpx imports httpcore (and httpcore trio) when its first client is built: 0.1-0.4 s of CPU
    # inside a run. (trio's own first connection imports the stdlib's IDNA codec, which is cheap.)
    command = [sys.executable, "-c", FIRST_REQUEST_CHILD, backend]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    imported = done.stdout.split()
    assert [name for name in imported if name.split(".")[0] in HTTP_STACK] == []


def test_a_call_from_another_threads_loop_while_calls_are_in_flight_is_a_config_error_not_a_hang() -> None:
    """The client's limiters wake waiters with their own loop's primitives, which another thread's loop
    never sees: a call there, queued behind this loop's, waited forever."""
    import threading

    from aprompt.testing.fake_openai import FakeOpenAIServer

    arrived, release = threading.Event(), threading.Event()

    async def held(request: object) -> str:
        arrived.set()
        await anyio.to_thread.run_sync(release.wait, abandon_on_cancel=True)
        return "hi"

    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(FakeOpenAIServer(responder=held, api_key="sk-two-loops")) as server,
    ):
        lm = OpenAICompatibleLM("m", server.base_url, api_key="sk-two-loops", max_concurrency=1)
        other: list[BaseException] = []

        def from_another_thread() -> None:
            async def ask() -> None:
                with anyio.fail_after(5):
                    await lm.chat([{"role": "user", "content": "two"}])

            try:
                anyio.run(ask, backend="trio")
            except BaseException as failure:
                other.append(failure)

        async def main() -> str:
            async with anyio.create_task_group() as group:
                answer: list[str] = []

                async def first() -> None:
                    answer.append((await lm.chat([{"role": "user", "content": "one"}])).text)

                group.start_soon(first)
                await anyio.to_thread.run_sync(arrived.wait, abandon_on_cancel=True)
                await anyio.to_thread.run_sync(from_another_thread)
                release.set()
            await lm.aclose()
            return answer[0]

        assert anyio.run(main) == "hi"
    assert len(other) == 1 and isinstance(other[0], ConfigError), other
    assert "another event loop" in str(other[0])
