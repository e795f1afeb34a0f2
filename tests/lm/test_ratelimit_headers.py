"""The x-ratelimit-* headers: reading them, and a client that keeps under the limits a server states."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest

from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.ratelimit_headers import (
    StatedLimits,
    parse_duration,
    read_rate_limit_headers,
    read_raw_rate_limit_headers,
)
from aprompt.lm.types import Message
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
