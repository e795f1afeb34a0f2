"""The rate limiter: token-bucket bounds, fairness, settlement, and the shared pause after a 429."""

from __future__ import annotations

import time

import anyio
import pytest

from aprompt._errors import ConfigError
from aprompt.lm.limits import (
    DEFAULT_COMPLETION_TOKENS,
    RateLimiter,
    TokenBucket,
    estimate_prompt_tokens,
    estimate_request_tokens,
)

pytestmark = pytest.mark.anyio
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def max_in_window(times: list[float], width: float) -> int:
    """The most timestamps any half-open window ``[t, t + width)`` starting at a timestamp holds."""
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + width) for i, t in enumerate(times))


def test_prompt_estimate_is_characters_over_four_plus_four_per_message() -> None:
    messages = [{"role": "system", "content": "x" * 10}, {"role": "user", "content": "y" * 7}]
    assert estimate_prompt_tokens(messages) == 5 + 8


def test_request_estimate_reserves_max_tokens_for_the_completion() -> None:
    messages = [{"role": "user", "content": "abcd"}]
    assert estimate_request_tokens(messages, {"max_tokens": 50}) == 5 + 50
    assert estimate_request_tokens(messages, {}) == 5 + DEFAULT_COMPLETION_TOKENS


def test_bucket_capacity_must_be_below_the_limit() -> None:
    with pytest.raises(ConfigError):
        TokenBucket(10, capacity=10)
    with pytest.raises(ConfigError):
        TokenBucket(1)  # default capacity 1 == limit


def test_bucket_hands_out_at_most_capacity_plus_rate_times_window() -> None:
    clock = ManualClock()
    bucket = TokenBucket(600, capacity=10, now=clock.now)
    admitted = []
    for _ in range(2000):  # greedy: take whenever allowed, in 1 ms steps
        if bucket.delay(1, clock.now) == 0:
            bucket.take(1)
            admitted.append(clock.now)
        clock.now += 0.001
    assert max_in_window(admitted, 1.0) <= 10 + 1.0 * (600 - 10) / 60
    assert bucket.rate == pytest.approx((600 - 10) / 60)


def test_bucket_refund_and_charge_move_the_level_within_capacity() -> None:
    bucket = TokenBucket(6000, capacity=100)
    bucket.take(80)
    bucket.give(50)
    assert bucket.level == 70
    bucket.give(500)
    assert bucket.level == 100
    bucket.give(-150)
    assert bucket.level == -50


def test_cost_above_capacity_waits_for_a_full_bucket_then_borrows() -> None:
    clock = ManualClock()
    bucket = TokenBucket(6000, capacity=100, now=clock.now)
    assert bucket.delay(500, clock.now) == 0
    bucket.take(500)
    assert bucket.level == -400
    assert bucket.delay(500, clock.now) == pytest.approx(500 / bucket.rate)


def test_throttle_empties_the_bucket_halves_the_rate_and_recovers_over_a_period() -> None:
    clock = ManualClock()
    bucket = TokenBucket(120, capacity=2, now=clock.now)
    bucket.throttle(clock.now)
    assert (bucket.level, bucket.rate_factor) == (0.0, 0.5)
    clock.now += 30.0
    bucket.refill(clock.now)
    assert bucket.rate_factor == pytest.approx(1.0)


@both_backends
async def test_limiter_never_admits_more_than_the_limit_in_any_period() -> None:
    limiter = RateLimiter(requests_per_minute=30, period=0.5)  # 30 per 0.5 s, burst 1
    rate = (30 - 1) / 0.5
    admitted: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        admitted.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(one)
    assert max_in_window(admitted, 0.5) <= 30
    assert max_in_window(admitted, 0.2) <= 1 + 0.2 * rate
    # Not much slower than allowed either (a burst of 1 loses the sleeps' overshoot).
    assert 49 / rate - 0.02 <= admitted[-1] - admitted[0] <= 49 / rate * 1.2


async def test_limiter_admits_waiting_tasks_in_arrival_order() -> None:
    limiter = RateLimiter(requests_per_minute=600, period=1.0, request_burst=1)
    order: list[int] = []

    async def one(index: int) -> None:
        await limiter.acquire()
        order.append(index)

    async with anyio.create_task_group() as tg:
        for index in range(12):
            tg.start_soon(one, index)
            await anyio.sleep(0.001)
    assert order == list(range(12))


async def test_token_limit_counts_reserved_tokens() -> None:
    limiter = RateLimiter(tokens_per_minute=1000, period=1.0, token_burst=100)
    started = time.monotonic()
    for _ in range(4):
        await limiter.acquire(tokens=100)
    # 100 from the full bucket, then 300 at 900 tokens/s.
    assert time.monotonic() - started == pytest.approx(300 / 900, abs=0.05)


async def test_settle_refunds_unused_tokens_to_later_requests() -> None:
    limiter = RateLimiter(tokens_per_minute=600, period=1.0, token_burst=100)
    await limiter.acquire(tokens=100)
    limiter.settle(reserved=100, used=10)
    started = time.monotonic()
    await limiter.acquire(tokens=90)
    assert time.monotonic() - started < 0.02


async def test_a_cancelled_waiter_takes_nothing() -> None:
    limiter = RateLimiter(requests_per_minute=120, period=1.0, request_burst=1)
    await limiter.acquire()  # empty now; the next fits in 1/119 s
    with anyio.move_on_after(0.001):
        await limiter.acquire()
    bucket = limiter.request_bucket
    assert bucket is not None
    await anyio.sleep(0.02)
    bucket.refill(time.monotonic())
    assert bucket.level == pytest.approx(1.0)


@both_backends
async def test_pause_holds_every_waiting_task_until_it_ends() -> None:
    limiter = RateLimiter()
    limiter.pause(0.3)
    admitted: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        admitted.append(time.monotonic())

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert min(admitted) - started >= 0.29


async def test_pause_extended_while_waiting_is_honoured() -> None:
    limiter = RateLimiter(requests_per_minute=6000)
    limiter.pause(0.1)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire)
        await anyio.sleep(0.05)
        limiter.pause(0.2)
    assert time.monotonic() - started >= 0.24


def test_repeated_pauses_within_one_pause_throttle_once() -> None:
    clock = ManualClock()
    limiter = RateLimiter(requests_per_minute=600, clock=clock)
    limiter.pause(1.0)
    limiter.pause(1.0)
    bucket = limiter.request_bucket
    assert bucket is not None and bucket.rate_factor == 0.5
    assert limiter.paused_until == clock.now + 1.0
