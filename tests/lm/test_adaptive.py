"""The adaptive concurrency cap: Little's law from the limits and the measured latency, AIMD on 429s
when no limit is known, and how a client behaves around a 429 pause."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import anyio
import pytest

from aprompt.lm.adaptive import INITIAL_CONCURRENCY, ConcurrencyController
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.retry import RetryPolicy
from aprompt.lm.types import Message
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault

pytestmark = pytest.mark.anyio

QUICK = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def question(index: int) -> list[Message]:
    return [{"role": "user", "content": f"Question {index}"}]


async def run_all(lm: OpenAICompatibleLM, count: int) -> None:
    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(lm.chat, question(index))


def answer_rounds(controller: ConcurrencyController, rounds: int) -> list[int]:
    """Answer ``rounds`` rounds of requests with a backlog waiting (every free slot is taken at once,
    as waiting tasks do); the cap after each round."""
    caps = []
    for _ in range(rounds):
        held = 0
        for _ in range(controller.cap):
            while controller.slots.available_tokens > 0:
                controller.slots.acquire_nowait()
                held += 1
            controller.completed(latency=0.1, tokens=10)
            controller.slots.release()
            held -= 1
        for _ in range(held):
            controller.slots.release()
        caps.append(controller.cap)
    return caps


# -- the controller alone ----------------------------------------------------------------------------
async def test_with_a_request_limit_the_cap_is_rate_times_latency_times_headroom() -> None:
    controller = ConcurrencyController(None, maximum=1024, rates=lambda: (50.0, None))
    assert controller.cap == 75  # before any answer: a latency of 1 s; x 1.5
    controller.completed(latency=0.4, tokens=100)
    assert controller.cap == 30
    controller.completed(latency=1.4, tokens=100)  # the latency is a weighted mean: 0.4 + 0.1 * 1.0
    assert controller.latency == pytest.approx(0.5)
    assert controller.cap == 38


async def test_a_token_limit_counts_requests_by_their_mean_tokens() -> None:
    controller = ConcurrencyController(None, maximum=1024, rates=lambda: (50.0, 2000.0))
    controller.completed(latency=1.0, tokens=200)  # 2000 / 200 = 10 requests a second bind
    assert controller.cap == 15


async def test_the_cap_stays_between_one_and_the_maximum() -> None:
    fast = ConcurrencyController(None, maximum=300, rates=lambda: (10_000.0, None))
    assert fast.cap == 300
    slow = ConcurrencyController(None, maximum=300, rates=lambda: (0.01, None))
    slow.completed(latency=0.1, tokens=10)
    assert slow.cap == 1


async def test_a_limit_learned_later_switches_to_littles_law() -> None:
    rates: list[tuple[float | None, float | None]] = [(None, None)]
    controller = ConcurrencyController(None, maximum=1024, rates=lambda: rates[0])
    assert controller.cap == INITIAL_CONCURRENCY
    rates[0] = (6.0, None)
    controller.completed(latency=0.5, tokens=10)
    assert controller.cap == 5


async def test_without_limits_the_cap_doubles_per_round_until_a_429() -> None:
    controller = ConcurrencyController(None, maximum=1024, rates=lambda: (None, None))
    assert controller.cap == INITIAL_CONCURRENCY
    assert answer_rounds(controller, 3) == [128, 256, 512]


async def test_answers_with_free_slots_do_not_grow_the_cap() -> None:
    controller = ConcurrencyController(None, maximum=1024, rates=lambda: (None, None))
    for _ in range(200):
        controller.completed(latency=0.1, tokens=10)
    assert controller.cap == INITIAL_CONCURRENCY


async def test_a_pause_restarts_from_one_probe_doubles_back_to_half_then_adds_one_per_round() -> None:
    controller = ConcurrencyController(None, maximum=1024, rates=lambda: (None, None))
    controller.paused()
    assert controller.cap == 1
    caps = answer_rounds(controller, 9)
    assert caps[:5] == [2, 4, 8, 16, 32]
    above = caps[4:]  # then about one per round
    assert all(0 <= later - earlier <= 1 for earlier, later in itertools.pairwise(above))
    assert above[-1] - above[0] >= 3


async def test_an_adaptive_cap_never_passes_1024_but_a_fixed_one_may(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    async with OpenAICompatibleLM(**lm_kwargs, requests_per_minute=10**7) as adaptive:
        assert adaptive.capacity == 1024
    async with OpenAICompatibleLM(**lm_kwargs, max_concurrency=2000) as fixed:
        assert fixed.capacity == 2000


async def test_a_fixed_cap_never_changes() -> None:
    controller = ConcurrencyController(16, maximum=1024, rates=lambda: (1.0, None))
    controller.completed(latency=30.0, tokens=10)
    controller.paused()
    assert controller.cap == 16 and not controller.adaptive


async def test_the_planned_cap_is_the_fixed_cap_or_littles_law_at_the_guesses() -> None:
    measured = ConcurrencyController(None, maximum=1024, rates=lambda: (50.0, None))
    measured.completed(latency=0.1, tokens=10)
    assert measured.planned((30.0, None)) == 45  # 30/s x the 1 s guess x 1.5, whatever was measured
    assert measured.planned((None, 15_000.0)) == 45  # 15,000 tokens/s at the 500-token guess
    assert measured.planned((None, None)) is None  # adaptive, nothing to plan from
    assert ConcurrencyController(16, maximum=1024, rates=lambda: (1.0, None)).planned((None, None)) == 16


# -- a client against the fake server ------------------------------------------------------------------
async def test_the_planned_concurrency_follows_the_configured_limits_not_the_measured_latency_or_stated_ones(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.latency = 0.05
    fake_server.response_headers = lambda number: {"x-ratelimit-limit-requests": "120"}
    async with OpenAICompatibleLM(**lm_kwargs, requests_per_minute=600) as lm:
        assert lm.planned_concurrency == 45  # 30/s x a 1 s guess x 1.5
        await run_all(lm, 10)
        assert lm.capacity < 45  # the cap in force follows the stated limit and the latency...
        assert lm.planned_concurrency == 45  # ...the plan does not


async def test_the_planned_concurrency_is_an_explicit_cap_or_none_when_adaptive_without_limits(
    lm_kwargs: dict[str, Any],
) -> None:
    async with OpenAICompatibleLM(**lm_kwargs, max_concurrency=16) as fixed:
        assert fixed.planned_concurrency == 16
    async with OpenAICompatibleLM(**lm_kwargs) as adaptive:
        assert adaptive.planned_concurrency is None


async def test_with_a_high_rate_limit_the_client_keeps_more_than_64_in_flight(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.latency = 1.0
    async with OpenAICompatibleLM(**lm_kwargs, requests_per_minute=60_000) as lm:
        await run_all(lm, 200)
    assert fake_server.max_in_flight > 64


async def test_the_default_cap_follows_the_rate_limit_and_the_measured_latency(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.latency = 0.2
    async with OpenAICompatibleLM(**lm_kwargs, requests_per_minute=600) as lm:
        # The limiter lets 30 a second go (three even shares): 30/s x a 1 s guess x 1.5
        assert lm.capacity == 45
        await run_all(lm, 30)
        # 30/s x at least 0.2 s x 1.5; at most 30 unless a loaded machine answers 0.47 s later still
        assert 9 <= lm.capacity <= 30


async def test_without_limits_the_first_request_after_a_429_pause_goes_alone(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    # The 429s come back after the whole first wave went out, also on a loaded machine.
    fake_server.latency = 0.25
    fake_server.script(lambda n: Fault.rate_limited(retry_after="0.3") if n < 20 else None)
    async with OpenAICompatibleLM(**lm_kwargs, retry=QUICK) as lm:
        await run_all(lm, 20)
        assert lm.usage.rate_limited == 20 and lm.usage.calls == 20
    retries = sorted((r for r in fake_server.chat_requests if r.status == 200), key=lambda r: r.started)
    assert len(retries) == 20
    assert retries[1].started >= retries[0].finished  # the probe answered before the next went
    assert fake_server.max_in_flight == 20  # the first wave, before any 429


async def test_retries_a_pause_held_are_spread_after_it(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.script(lambda n: Fault.rate_limited(retry_after="1") if n < 20 else None)
    async with OpenAICompatibleLM(**lm_kwargs, retry=QUICK, max_concurrency=64) as lm:
        await run_all(lm, 20)
    first_429 = min(r.finished for r in fake_server.chat_requests if r.status == 429)
    retries = [r.started for r in fake_server.chat_requests if r.status == 200]
    assert len(retries) == 20
    assert min(retries) >= first_429 + 0.95
    assert max(retries) - min(retries) >= 0.1  # spread over a quarter of the pause, not all at once


async def test_one_log_line_per_pause_not_per_429(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    fake_server.script(lambda n: Fault.rate_limited(retry_after="0.5") if n < 10 else None)
    with caplog.at_level(logging.INFO, logger="aprompt.lm"):
        async with OpenAICompatibleLM(**lm_kwargs, retry=QUICK, max_concurrency=64) as lm:
            await run_all(lm, 10)
    assert lm.usage.rate_limited == 10
    pauses = [r for r in caplog.records if r.levelno >= logging.INFO and "429" in r.getMessage()]
    assert len(pauses) == 1
