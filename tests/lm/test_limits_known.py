"""A 429 under a known limit (configured or stated): the limit stays in force, the pause honours the
server's wait, and the causes of the 429 are corrected: token estimates calibrated by the counts the
server reports, and a margin at the window's edge."""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio
import pytest

from aprompt._errors import ConfigError
from aprompt.lm.limits import NEAR_FULL, RateLimiter, TokenEstimator, estimate_prompt_tokens
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.retry import RetryPolicy, retry_after_from
from aprompt.lm.types import Message
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, Fault
from tests.lm.test_limits import ManualClock

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def long_prompt(index: int) -> list[Message]:
    """A prompt of 396 characters: 99 + 4 tokens by the character estimate."""
    return [{"role": "user", "content": f"{index:04d}" + "x" * 392}]


# -- the limiter after a 429 ---------------------------------------------------------------------------
def test_a_429_near_a_known_limit_leaves_it_and_the_burst_cap_in_force() -> None:
    clock = ManualClock()
    limiter = RateLimiter(requests_per_minute=600, clock=clock)
    window = limiter.request_window
    for index in range(560):  # the last 30 s: the window is near full
        window.admit(1, clock.now - 30.0 + index * 30.0 / 560)
    assert window.near_full(clock.now) and 560 >= NEAR_FULL * 600

    assert limiter.pause(2.0) is True
    assert limiter.paused_until == clock.now + 2.0  # the server's wait is honoured
    assert window.factor(clock.now) == 1.0
    assert window.burst == 30  # three even shares of 600 a minute, per second
    clock.now += 2.0
    assert window.delay(1, clock.now) == 0  # the 40 requests left of the limit go at once


def test_a_429_far_below_every_known_limit_narrows_the_burst_cap_without_halving_the_limit() -> None:
    clock = ManualClock()
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=60_000, clock=clock)
    limiter.request_window.admit(1, clock.now)
    limiter.token_window.admit(500, clock.now)

    limiter.pause(1.0)
    # A 429 with the windows nearly empty: the server enforces something shorter than a minute.
    assert limiter.request_window.burst == 10 and limiter.token_window.burst == 1000
    assert limiter.request_window.factor(clock.now) == 1.0
    assert limiter.token_window.factor(clock.now) == 1.0


async def test_an_admission_is_counted_for_a_margin_beyond_the_period() -> None:
    clock = ManualClock()
    limiter = RateLimiter(requests_per_minute=1, clock=clock)
    admitted = await limiter.acquire()
    window = limiter.request_window
    # The server counts the request from its arrival, a little later: the client waits a margin more.
    assert window.delay(1, admitted.at + 60.0) == pytest.approx(0.5)
    assert window.delay(1, admitted.at + 60.5) == 0


# -- calibrated token estimates --------------------------------------------------------------------------
def test_prompt_estimates_are_scaled_by_the_ratio_the_server_reports_with_a_margin() -> None:
    estimator = TokenEstimator(margin=0.05)
    messages = long_prompt(1)
    raw = estimate_prompt_tokens(messages)
    assert estimator.prompt(messages) == raw  # nothing reported yet
    estimator.observe(messages, reported=3 * raw)
    assert estimator.ratio == 3.0
    assert estimator.prompt(long_prompt(2)) == math.ceil(raw * 3 * 1.05)
    assert estimator.request(long_prompt(2), {"max_tokens": 7}) == math.ceil(raw * 3 * 1.05) + 7


def test_the_calibration_follows_the_recent_reports() -> None:
    estimator = TokenEstimator(decay=0.9)
    messages = long_prompt(1)
    raw = estimate_prompt_tokens(messages)
    for _ in range(5):
        estimator.observe(messages, reported=2 * raw)
    for _ in range(60):
        estimator.observe(messages, reported=raw)
    assert estimator.ratio == pytest.approx(1.0, abs=0.01)


def test_an_estimate_made_once_reserves_and_calibrates_as_the_messages_would() -> None:
    by_messages, by_estimate = TokenEstimator(), TokenEstimator()
    messages = long_prompt(1)
    estimate = estimate_prompt_tokens(messages)
    for reported in (0, 3 * estimate, 2 * estimate):
        for params in ({}, {"max_tokens": 7}, {"max_completion_tokens": 9}):
            assert by_estimate.reservation(estimate, params) == by_messages.request(messages, params)
        by_messages.observe(messages, reported)
        by_estimate.observe_estimate(estimate, reported)
        assert by_estimate.ratio == by_messages.ratio


def test_a_report_of_no_prompt_tokens_leaves_the_estimate_uncalibrated() -> None:
    estimator = TokenEstimator()
    estimator.observe(long_prompt(1), reported=0)  # a server that reports no usage
    assert estimator.ratio is None
    assert estimator.prompt(long_prompt(1)) == estimate_prompt_tokens(long_prompt(1))


async def test_the_client_reserves_prompt_tokens_calibrated_by_the_usage_reported(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    """The server counts three times the character estimate. Told 4,800 tokens a minute (a burst cap of
    240 a second), the client fits two requests of 104 estimated tokens in one second, but only one of
    326 once calibrated: the second waits for the first to leave the burst window."""
    raw = estimate_prompt_tokens(long_prompt(0))

    def counted_thrice(request: ChatRequest) -> Fault:
        usage = {"prompt_tokens": 3 * raw, "completion_tokens": 1, "total_tokens": 3 * raw + 1}
        return Fault.reply("ok", fields={"usage": usage})

    fake_server.responder = counted_thrice
    fake_server.latency = 0.05
    async with OpenAICompatibleLM(**lm_kwargs, tokens_per_minute=4800, max_concurrency=8) as lm:
        await lm.chat(long_prompt(0), max_tokens=1)
        await anyio.sleep(1.05)  # the first request leaves the burst window
        async with anyio.create_task_group() as tg:
            for index in (1, 2):
                tg.start_soon(lambda i=index: lm.chat(long_prompt(i), max_tokens=1))
    first, second = sorted(r.started for r in fake_server.chat_requests[1:])
    assert second - first >= 0.8


# -- the server's wait -------------------------------------------------------------------------------------
def test_retry_after_ms_is_read_before_the_whole_seconds() -> None:
    assert retry_after_from({"retry-after": "2", "retry-after-ms": "40"}) == 0.04
    assert retry_after_from({"retry-after": "2", "retry-after-ms": "soon"}) == 2.0
    assert retry_after_from({}) is None


async def test_a_429s_exact_wait_in_milliseconds_is_honoured(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.queue_faults(Fault.rate_limited(retry_after="3"))
    fake_server.response_headers = lambda number: {"retry-after-ms": "100"} if number == 0 else {}
    quick = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)
    async with OpenAICompatibleLM(**lm_kwargs, retry=quick) as lm:
        with anyio.fail_after(2.0):  # whole seconds: 3 s
            await lm.chat(long_prompt(0))
    limited, answered = fake_server.chat_requests
    assert limited.status == 429 and answered.status == 200
    assert answered.started - limited.finished >= 0.09


async def test_attempts_that_time_out_keep_their_tokens_counted_and_error_statuses_refund_them() -> None:
    # A timed-out attempt reached the server, which counts its tokens: refunded, every retry would free
    # the window again and the server's tokens_per_minute would be crossed (4 attempts of ~305 tokens
    # in 4 s under 700 a minute before). An answer with an error status is not billed: refunded.
    async with FakeOpenAIServer() as server:
        server.queue_faults(*[Fault.reply(delay=2.0)] * 10)
        retry = RetryPolicy(max_retries=20, initial_backoff=0.01, max_backoff=0.01)
        async with OpenAICompatibleLM(
            "m", server.base_url, api_key="sk-t", timeout=0.3, tokens_per_minute=700, retry=retry
        ) as lm:
            with anyio.move_on_after(4.0):
                await lm.chat([{"role": "user", "content": "hi"}], max_tokens=300)
            # Attempts sent (the fake server logs a request once it has answered it).
            assert 1 <= lm.usage.requests <= 700 // 305
    async with FakeOpenAIServer() as server:
        server.queue_faults(*[Fault.http_status(500)] * 10)
        async with OpenAICompatibleLM(
            "m", server.base_url, api_key="sk-t", tokens_per_minute=700, retry=retry
        ) as lm:
            with anyio.move_on_after(4.0):
                await lm.chat([{"role": "user", "content": "hi"}], max_tokens=300)
            assert lm.usage.requests > 700 // 305


# -- replies of unknown length -----------------------------------------------------------------------------
def long_reply(completion_tokens: int) -> Any:
    """A responder whose every reply reports ``completion_tokens`` (and 30 prompt tokens)."""

    def respond(request: ChatRequest) -> Fault:
        usage = {"prompt_tokens": 30, "completion_tokens": completion_tokens}
        usage["total_tokens"] = 30 + completion_tokens
        return Fault.reply("ok", fields={"usage": usage})

    return respond


async def test_replies_longer_than_the_default_reservation_keep_a_told_limit_at_the_server(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    """Told 3,000 tokens a minute, requests without max_tokens whose replies report 900 completion tokens
    (930 in all): three fit in a minute at the server, not four. Reserving the default 256 completion
    tokens for each, the client sent four within four seconds while the first replies were on their way
    (3,720 tokens); it now reserves the longest reply seen, and the fourth waits for the minute."""
    fake_server.responder = long_reply(900)
    fake_server.latency = 1.2
    async with OpenAICompatibleLM(**lm_kwargs, tokens_per_minute=3000, max_concurrency=8) as lm:
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as tg:
                for index in range(4):
                    tg.start_soon(lambda i=index: lm.chat([{"role": "user", "content": f"q{i}"}]))
    assert len(fake_server.chat_requests) == 3  # 2,790 tokens


async def test_the_first_reply_of_unknown_length_goes_alone_under_a_token_limit(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    """Until a reply to a request without max_tokens tells how long such replies are, no other such
    request is sent beside it: at the default reservation, replies longer than it would fill a window
    past its limit before anything was learned. Here both fit the burst cap at once otherwise."""
    fake_server.responder = long_reply(2000)
    fake_server.latency = 0.3
    async with OpenAICompatibleLM(**lm_kwargs, tokens_per_minute=60_000, max_concurrency=8) as lm:
        async with anyio.create_task_group() as tg:
            for index in range(2):
                tg.start_soon(lambda i=index: lm.chat([{"role": "user", "content": f"q{i}"}]))
    first, second = sorted(fake_server.chat_requests, key=lambda r: r.started)
    assert second.started >= first.finished


async def test_a_request_larger_than_the_token_limit_is_named_in_one_warning(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Told 200 tokens a minute, a request reserving 103 + 500 is sent alone in its minute (one a
    minute): said, with the limit and the request's size."""
    async with OpenAICompatibleLM(**lm_kwargs, tokens_per_minute=200) as lm:
        with caplog.at_level(logging.WARNING, logger="aprompt.lm"):
            await lm.chat(long_prompt(0), max_tokens=500)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "603 tokens" in warnings[0] and "tokens_per_minute=200" in warnings[0]


@pytest.mark.parametrize("budget", [math.inf, math.nan, -5])
async def test_a_completion_budget_that_cannot_be_reserved_is_a_config_error(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], budget: float
) -> None:
    async with OpenAICompatibleLM(**lm_kwargs, tokens_per_minute=10_000) as lm:
        with pytest.raises(ConfigError, match="max_tokens"):
            await lm.chat(long_prompt(0), max_tokens=budget)
    assert fake_server.chat_requests == []


@pytest.mark.parametrize(("made", "used"), [("asyncio", "trio"), ("trio", "asyncio")])
def test_the_first_reply_of_unknown_length_waits_on_any_loop_the_client_serves(made: str, used: str) -> None:
    """A client made on one event loop (an app's setup under asyncio) and called on another after it (trio):
    the wait for the first reply of unknown length was a lock of the loop the client was made on, which
    another backend cannot take (RuntimeError on the first such request)."""
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(FakeOpenAIServer(responder=long_reply(50), latency=0.2)) as server,
    ):

        async def make() -> OpenAICompatibleLM:
            return OpenAICompatibleLM(
                "fake-model", server.base_url, api_key="k", cache=None, tokens_per_minute=60_000
            )

        lm = anyio.run(make, backend=made)

        async def ask() -> str:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for index in range(2):
                        tg.start_soon(lambda i=index: lm.chat([{"role": "user", "content": f"q{i}"}]))
                return (await lm.chat([{"role": "user", "content": "q2"}])).text

        assert anyio.run(ask, backend=used)
        anyio.run(lm.aclose, backend=used)
    first, second = sorted(server.chat_requests, key=lambda r: r.started)[:2]
    assert second.started >= first.finished  # still alone until the first reply told its length
