"""The rate-limit headers (OpenAI's x-ratelimit-*, Anthropic's anthropic-ratelimit-*): reading them, and a
client that keeps under the limits a server states."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import pytest

from aprompt.lm.anthropic import AnthropicLM
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.ratelimit_headers import (
    StatedLimits,
    parse_duration,
    parse_reset_time,
    read_anthropic_rate_limit_headers,
    read_rate_limit_headers,
    read_raw_anthropic_rate_limit_headers,
    read_raw_rate_limit_headers,
)
from aprompt.lm.types import Message
from aprompt.testing.fake_anthropic import FakeAnthropicServer
from aprompt.testing.fake_openai import FakeOpenAIServer, ServerRateLimit

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def question(index: int) -> list[Message]:
    return [{"role": "user", "content": f"Question {index}"}]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.25", 0.25), ("250us", 0.00025)],
)
def test_reset_durations_are_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("number", "duration"), [("1.5", "1.5s"), ("1e3", "1e3s"), ("90", "90m"), (".5", ".5h")]
)
def test_a_plain_number_is_seconds_and_a_unit_ends_a_duration(number: str, duration: str) -> None:
    # A number with an exponent reads as seconds; with a unit after it, it is no duration at all.
    seconds = parse_duration(number)
    assert seconds is not None and seconds == float(number)
    expected = None if "e" in duration else float(number) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]
    assert parse_duration(duration) == expected


@pytest.mark.parametrize("text", [None, "", "soon", "5 s", "1x", "-3", "nan", "2s later"])
def test_unreadable_reset_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


def test_headers_are_read_and_missing_or_unreadable_ones_are_none() -> None:
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "599",
        "x-ratelimit-reset-requests": "100ms",
        "x-ratelimit-limit-tokens": "lots",
    }
    assert read_rate_limit_headers(headers) == StatedLimits(
        requests_limit=600.0, requests_remaining=599.0, requests_reset=0.1
    )
    assert read_rate_limit_headers({"retry-after": "1"}) is None


def test_raw_headers_are_read_whatever_the_case_of_their_names() -> None:
    raw = [(b"Content-Type", b"application/json"), (b"X-RateLimit-Limit-Tokens", b"150000")]
    assert read_raw_rate_limit_headers(raw) == StatedLimits(tokens_limit=150000.0)
    assert read_raw_rate_limit_headers([(b"Content-Type", b"application/json")]) is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e999"])
def test_an_infinite_stated_limit_is_unreadable(value: str) -> None:
    assert read_rate_limit_headers({"x-ratelimit-limit-requests": value}) == StatedLimits()


async def test_a_server_stating_an_infinite_limit_is_answered_normally(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.response_headers = lambda number: {"x-ratelimit-limit-requests": "inf"}
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        for index in range(2):
            assert (await lm.chat(question(index))).text == "Answer: ok"


async def test_a_limit_the_server_states_keeps_the_client_under_it(fake_server: FakeOpenAIServer) -> None:
    fake_server.rate_limit = ServerRateLimit(requests_per_minute=5, headers=True)
    fake_server.api_key = None
    async with OpenAICompatibleLM("m", fake_server.base_url, api_key="") as lm:
        with anyio.move_on_after(2.5):
            for index in range(7):
                await lm.chat(question(index))
    # Learned from the first answer: 5 a minute, so at most one a second (the burst cap), and never
    # a request the server refuses.
    arrivals = [r.started for r in fake_server.chat_requests]
    assert [r.status for r in fake_server.chat_requests] == [200] * len(arrivals)
    assert len(arrivals) >= 2
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(arrivals))
    assert lm.usage.rate_limited == 0


async def test_when_the_server_says_none_remain_the_client_holds_until_the_reset(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    def headers(number: int) -> dict[str, str]:
        if number == 0:
            return {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "400ms"}
        return {}

    fake_server.response_headers = headers
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        await lm.chat(question(0))
        await lm.chat(question(1))
    first, second = fake_server.chat_requests
    assert second.started >= first.finished + 0.38
    assert lm.usage.rate_limited == 0


async def test_a_stated_limit_sets_the_adaptive_cap(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.latency = 0.1
    fake_server.response_headers = lambda number: {"x-ratelimit-limit-requests": "120"}
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        assert lm.capacity == 64  # no limit known yet
        await lm.chat(question(0))
        # 120/min lets 6 go in a second: 6/s x a latency of 0.1 s (or a few times that on a loaded
        # machine) x 1.5
        assert lm.capacity <= 5


# -- Anthropic's headers ---------------------------------------------------------------------------
def rfc3339(seconds: float) -> str:
    """The RFC 3339 time ``seconds`` after the epoch, as Anthropic writes its resets."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-01T00:01:40Z", 60.0),
        ("1970-01-01T00:01:40.5+00:00", 60.5),
        ("1970-01-01T01:01:40+01:00", 60.0),
        ("1970-01-01T00:00:10Z", 0.0),  # already past
    ],
)
def test_anthropic_reset_times_are_read_as_seconds_from_now(text: str, seconds: float) -> None:
    assert parse_reset_time(text, now=40.0) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "60", "1970-01-01T00:01:40"])
def test_unreadable_anthropic_reset_times_are_none(text: str | None) -> None:
    assert parse_reset_time(text, now=40.0) is None


def test_anthropic_headers_are_read_and_the_input_token_limit_is_the_token_limit() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": rfc3339(101.0),
        "anthropic-ratelimit-tokens-limit": "8000",
        "anthropic-ratelimit-tokens-remaining": "7000",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": rfc3339(100.5),
    }
    assert read_anthropic_rate_limit_headers(headers, now=100.0) == StatedLimits(
        requests_limit=50.0,
        tokens_limit=40000.0,
        requests_remaining=49.0,
        tokens_remaining=7000.0,
        requests_reset=pytest.approx(1.0),
        tokens_reset=None,
    )
    assert read_anthropic_rate_limit_headers({"retry-after": "1"}) is None


def test_an_exhausted_anthropic_output_token_limit_holds_until_its_reset() -> None:
    headers = {
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": rfc3339(100.5),
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": rfc3339(103.0),
    }
    stated = read_anthropic_rate_limit_headers(headers, now=100.0)
    assert stated is not None
    assert (stated.tokens_remaining, stated.tokens_reset) == (0.0, pytest.approx(3.0))


def test_raw_anthropic_headers_are_read_whatever_the_case_of_their_names() -> None:
    raw = [(b"Content-Type", b"application/json"), (b"Anthropic-RateLimit-Requests-Limit", b"50")]
    assert read_raw_anthropic_rate_limit_headers(raw) == StatedLimits(requests_limit=50.0)
    assert read_raw_anthropic_rate_limit_headers([(b"X-RateLimit-Limit-Requests", b"50")]) is None


async def test_an_anthropic_client_keeps_under_the_limit_its_server_states() -> None:
    async with FakeAnthropicServer(rate_limit=ServerRateLimit(requests_per_minute=5, headers=True)) as server:
        async with AnthropicLM("fake-claude", server.base_url, api_key="") as lm:
            with anyio.move_on_after(3.5):  # room for two or more calls on a loaded machine
                for index in range(7):
                    await lm.chat(question(index))
    records = server.chat_requests
    # Learned from the first answer: 5 a minute, so at most one a second (the burst cap), no 429.
    arrivals = [r.started for r in records]
    assert [r.status for r in records] == [200] * len(arrivals)
    assert len(arrivals) >= 2
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(arrivals))
    assert lm.usage.rate_limited == 0


async def test_the_fake_anthropic_server_states_its_limit_in_anthropics_headers() -> None:
    limit = ServerRateLimit(requests_per_minute=5, tokens_per_minute=1000, headers=True)
    async with FakeAnthropicServer(rate_limit=limit) as server:
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                server.base_url + "/v1/messages",
                headers={"anthropic-version": "2023-06-01"},
                json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
            )
    stated = read_anthropic_rate_limit_headers(reply.headers)
    assert not any(name.startswith("x-ratelimit-") for name in reply.headers)
    assert stated is not None
    assert (stated.requests_limit, stated.requests_remaining, stated.tokens_limit) == (5.0, 4.0, 1000.0)
    assert stated.requests_reset is not None and 59.0 < stated.requests_reset <= 60.0


async def test_when_anthropic_says_none_remain_the_client_holds_until_the_reset() -> None:
    def headers(number: int) -> dict[str, str]:
        if number == 0:
            return {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": rfc3339(time.time() + 0.5),
            }
        return {}

    async with FakeAnthropicServer(response_headers=headers) as server:
        async with AnthropicLM("fake-claude", server.base_url, api_key="") as lm:
            await lm.chat(question(0))
            await lm.chat(question(1))
    first, second = server.chat_requests
    assert second.started >= first.finished + 0.3
    assert lm.usage.rate_limited == 0
