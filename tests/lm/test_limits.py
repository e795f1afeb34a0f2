"""The rate limiter: the sliding-window bound in every trailing window, unused allowance spent later, the
burst cap, settlement, learned limits, fairness, and the shared pause after a 429."""

from __future__ import annotations

import math
import random
import time

import anyio
import pytest

from aprompt import OpenAICompatibleLM
from aprompt._errors import ConfigError
from aprompt.lm.limits import (
    DEFAULT_COMPLETION_TOKENS,
    RateLimiter,
    SlidingWindow,
    estimate_prompt_tokens,
    estimate_request_tokens,
)

pytestmark = pytest.mark.anyio

#: Clock steps of 1/64 s: every reading and every ``reading - period`` below is exact in binary.
TICK = 1 / 64


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def most_in_window(admissions: list[tuple[float, float]], width: float) -> float:
    """The largest total cost any half-open window ``[s, s + width)`` holds (``s`` an admission time:
    those windows are the fullest)."""
    return max(sum(cost for at, cost in admissions if s <= at < s + width) for s, _ in admissions)


def greedy(
    window: SlidingWindow, arrivals: list[tuple[float, float]], *, until: float
) -> list[tuple[float, float]]:
    """Admit ``(time, cost)`` arrivals first come first served, each as soon as the window lets it."""
    admitted, pending, queue = [], list(arrivals), []
    now = 0.0
    while now <= until and (pending or queue):
        while pending and pending[0][0] <= now:
            queue.append(pending.pop(0)[1])
        while queue and window.delay(queue[0], now) == 0:
            window.admit(queue[0], now)
            admitted.append((now, queue.pop(0)))
        now += TICK
    return admitted


# -- estimates ---------------------------------------------------------------------------------------
def test_prompt_estimate_is_characters_over_four_plus_four_per_message() -> None:
    messages = [{"role": "system", "content": "x" * 10}, {"role": "user", "content": "y" * 7}]
    assert estimate_prompt_tokens(messages) == 5 + 8


def test_request_estimate_reserves_max_tokens_for_the_completion() -> None:
    messages = [{"role": "user", "content": "abcd"}]
    assert estimate_request_tokens(messages, {"max_tokens": 50}) == 5 + 50
    assert estimate_request_tokens(messages, {}) == 5 + DEFAULT_COMPLETION_TOKENS


# -- the window alone, on a clock moved by hand -------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_no_trailing_window_ever_holds_more_than_the_limit(seed: int) -> None:
    """Random arrivals, costs, refunds and 429 throttles: every window of one period, with the costs
    as finally settled, holds at most the limit; every burst window at most the burst cap (or one
    admission)."""
    rng = random.Random(seed)
    period, limit = 4.0, rng.choice([5.0, 40.0, 500.0])
    burst = rng.choice([None, math.inf, limit / 8])
    window = SlidingWindow(limit, period=period, burst=burst)
    cap = window.burst
    max_cost = rng.choice([1.0, limit / 3, limit])
    pending: list[tuple[float, float]] = []
    for _ in range(rng.randrange(50, 400)):  # bursts after idle spells, and steady streams
        pending.append(
            (rng.choice([rng.uniform(0, 2), rng.uniform(0, 20)]), float(rng.randint(1, int(max_cost))))
        )
    pending.sort()
    queue: list[float] = []
    live, admitted = [], []
    now = 0.0
    while now < 40.0:
        while pending and pending[0][0] <= now:
            queue.append(pending.pop(0)[1])
        if rng.random() < 0.01:
            window.throttle(now)
        for entry in [entry for entry in live if rng.random() < 0.05]:  # refunds, some time after
            window.settle(entry, rng.randint(0, int(entry.cost)))
            live.remove(entry)
        while queue and window.delay(queue[0], now) == 0:
            live.append(window.admit(queue[0], now))
            admitted.append((now, live[-1]))
            queue.pop(0)
        now += TICK
    final = [(at, entry.cost) for at, entry in admitted]
    assert len(final) > 10
    assert most_in_window(final, period) <= limit
    for start, _ in final:
        in_burst = [cost for at, cost in final if start <= at < start + period / 60]
        assert sum(in_burst) <= cap or len(in_burst) == 1


def test_an_under_estimate_pushes_a_window_over_only_by_what_was_unsettled_when_it_closed() -> None:
    rng = random.Random(7)
    period, limit, reserved = 4.0, 300.0, 40.0
    window = SlidingWindow(limit, period=period, burst=math.inf)
    admitted: list[list[float]] = []  # [admitted at, final cost, settled at]
    live: dict[int, object] = {}
    now = 0.0
    while now < 30.0:
        for index, entry in list(live.items()):
            if rng.random() < 0.1:  # the server reports between a fifth and twice the estimate
                used = reserved * rng.uniform(0.2, 2.0)
                window.settle(entry, used)  # type: ignore[arg-type]
                admitted[index][1:] = [used, now]
                del live[index]
        if rng.random() < 0.5 and window.delay(reserved, now) == 0:
            live[len(admitted)] = window.admit(reserved, now)
            admitted.append([now, reserved, math.inf])
        now += TICK
    over = 0
    for start, _, _ in admitted:
        inside = [a for a in admitted if start <= a[0] < start + period]
        last = max(a[0] for a in inside)
        excess = sum(max(0.0, cost - reserved) for at, cost, settled in inside if settled > last)
        total = sum(cost for _, cost, _ in inside)
        assert total <= limit + excess + 1e-9
        over += total > limit
    assert over > 0  # the caveat is real: some windows did go over


def test_allowance_a_slow_start_leaves_unused_is_spent_later() -> None:
    window = SlidingWindow(600, period=60.0, burst=math.inf)
    arrivals = [(0.0, 1.0)] * 10 + [(30.0, 1.0)] * 590  # 10 early, then the rest at once
    admitted = greedy(window, arrivals, until=31.0)
    assert len(admitted) == 600
    assert max(at for at, _ in admitted) == 30.0


def test_the_default_burst_cap_spreads_a_minutes_allowance_over_twenty_seconds() -> None:
    window = SlidingWindow(600, period=60.0)
    assert window.burst == 30  # three even shares of 10 per second
    admitted = greedy(window, [(0.0, 1.0)] * 600, until=61.0)
    assert len(admitted) == 600
    assert most_in_window(admitted, 1.0) == 30
    assert 19.0 <= max(at for at, _ in admitted) <= 20.0


def test_a_cost_above_the_limit_is_admitted_alone_once_the_window_is_empty() -> None:
    window = SlidingWindow(100, period=4.0, burst=math.inf)
    window.admit(30, 0.0)
    assert window.delay(150, 1.0) == pytest.approx(3.0)
    assert window.delay(150, 4.0) == 0
    window.admit(150, 4.0)
    assert window.delay(1, 5.0) == pytest.approx(3.0)


def test_a_refund_makes_room_at_once() -> None:
    window = SlidingWindow(100, period=4.0, burst=math.inf)
    entry = window.admit(100, 0.0)
    assert window.delay(60, 1.0) == pytest.approx(3.0)
    window.settle(entry, 30)
    assert window.delay(60, 1.0) == 0


def test_a_settled_cost_leaves_the_window_at_its_admission_time() -> None:
    window = SlidingWindow(100, period=4.0, burst=math.inf)
    first = window.admit(50, 0.0)
    window.admit(40, 2.0)
    window.settle(first, 60)  # charged on the first admission, which leaves at 4.0
    assert window.used(3.0) == 100
    assert window.used(4.0) == 40


def test_a_throttle_with_no_limit_known_halves_the_limit_learned_which_recovers_over_one_period() -> None:
    window = SlidingWindow(None, period=4.0, burst=math.inf)
    window.throttle(0.0)
    window.learn(100)
    assert window.factor(0.0) == 0.5
    assert window.factor(1.0) == 0.75
    assert window.factor(2.0) == 1.0
    window.admit(50, 0.0)
    assert window.delay(10, 0.0) == pytest.approx(0.4)  # 60 fits once the factor reaches 0.6


def test_a_recovering_factor_waits_for_a_full_burst_window_rather_than_asking_again_at_once() -> None:
    # Throttled before the limit was known, then told 600 a minute: a burst cap of 30 a second, half of it
    # in force. Once the burst window is full, the next request fits when that window empties (or the
    # factor has risen enough), a second later; a wait of a microsecond had the limiter spin until then.
    window = SlidingWindow(None, period=60.0)
    window.throttle(0.0)
    window.learn(600)
    admitted = 0
    while window.delay(1, 1.0) == 0:
        window.admit(1, 1.0)
        admitted += 1
    assert admitted == 15
    delay = window.delay(1, 1.0)
    assert delay == pytest.approx(1.0)
    assert window.delay(1, 1.0 + delay) == 0


def test_the_peak_rate_is_the_burst_cap_per_second() -> None:
    assert SlidingWindow(600, period=60.0).peak_rate == 30
    assert SlidingWindow(600, period=60.0, burst=5).peak_rate == 5
    assert SlidingWindow(None, period=60.0).peak_rate is None
    assert RateLimiter(requests_per_minute=600, tokens_per_minute=60_000).peak_rates == (30, 3000)


def test_a_throttle_never_halves_a_known_limit() -> None:
    window = SlidingWindow(100, period=4.0, burst=math.inf)
    window.throttle(0.0)
    assert window.factor(0.0) == 1.0
    window.admit(90, 0.0)
    assert window.delay(10, 0.0) == 0


def test_a_narrowed_default_burst_cap_is_the_even_share() -> None:
    window = SlidingWindow(600, period=60.0)
    window.narrow_burst()
    assert window.burst == 10


def test_a_limit_learned_mid_run_counts_the_admissions_made_before_it() -> None:
    window = SlidingWindow(None, period=60.0, burst=math.inf)
    for second in range(50):
        assert window.delay(1, float(second)) == 0
        window.admit(1, float(second))
    window.learn(60)
    admitted = greedy(window, [(50.0, 1.0)] * 20, until=61.0)
    # 10 fit beside the 50 already sent; then one each time one of those leaves the window.
    assert [at for at, _ in admitted] == [50.0] * 10 + [60.0, 61.0]


def test_a_stated_limit_never_raises_the_configured_one() -> None:
    window = SlidingWindow(100, period=60.0)
    window.learn(1000)
    assert window.limit == 100
    window.learn(40)
    assert window.limit == 40


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="positive"):
        SlidingWindow(0, period=60.0)
    with pytest.raises(ConfigError, match="period"):
        RateLimiter(requests_per_minute=10, period=0)
    with pytest.raises(ConfigError, match="burst"):
        RateLimiter(requests_per_minute=10, request_burst=-1)


@pytest.mark.parametrize("field", ["requests_per_minute", "tokens_per_minute"])
def test_a_limit_below_one_a_minute_is_refused_as_no_window_can_hold_it(field: str) -> None:
    # A request is admitted whole, alone in its window: 0.5 a minute went at one a minute.
    with pytest.raises(ConfigError, match=r"at least 1 per period .* got 0\.5"):
        OpenAICompatibleLM("m", "http://127.0.0.1:9/v1", api_key="k", **{field: 0.5})
    with pytest.raises(ConfigError, match="at least 1 per period"):
        RateLimiter(**{field: 0.999})
    assert RateLimiter(**{field: 1}).limited


# -- the async limiter --------------------------------------------------------------------------------
async def test_the_limiter_admits_a_full_window_at_once_then_waits_for_the_first_to_leave() -> None:
    limiter = RateLimiter(requests_per_minute=5, period=0.3, request_burst=math.inf)
    admitted: list[float] = []
    for _ in range(8):
        admitted.append((await limiter.acquire()).at)
    assert admitted[4] - admitted[0] < 0.3  # no pacing inside the window's allowance
    assert admitted[5] >= admitted[0] + 0.3
    assert most_in_window([(at, 1.0) for at in admitted], 0.3) <= 5


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


async def test_a_small_request_never_passes_a_larger_one_waiting_at_the_head() -> None:
    limiter = RateLimiter(tokens_per_minute=600, period=0.2, token_burst=math.inf)
    await limiter.acquire(tokens=500)
    order: list[str] = []

    async def one(name: str, tokens: int) -> None:
        await limiter.acquire(tokens=tokens)
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "large", 600)  # waits for the first admission to leave the window
        await anyio.sleep(0.02)
        tg.start_soon(one, "small", 10)  # would fit now, but arrived second
    assert order == ["large", "small"]


async def test_a_request_that_fits_with_nobody_waiting_is_admitted_without_yielding() -> None:
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=60_000)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other task")

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        await limiter.acquire(tokens=100)
        assert ran == []  # the other task got no turn: no trip through the event loop
    assert ran == ["other task"]


async def test_settle_refunds_unused_tokens_to_later_requests() -> None:
    limiter = RateLimiter(tokens_per_minute=600, period=1.0, token_burst=math.inf)
    admission = await limiter.acquire(tokens=600)
    limiter.settle(admission, used=10)
    with anyio.fail_after(0.5):  # without the refund: a whole period
        await limiter.acquire(tokens=590)


async def test_a_cancelled_waiter_takes_nothing() -> None:
    clock = ManualClock()
    limiter = RateLimiter(requests_per_minute=1, period=1.0, clock=clock)
    await limiter.acquire()
    with anyio.move_on_after(0.01):
        await limiter.acquire()
    assert limiter.request_window.used(clock.now) == 1


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


async def test_a_limit_learned_while_tasks_wait_out_a_pause_binds_them() -> None:
    # The tasks entered before any limit was known; an answer states one (2 per period) during the
    # pause: when it ends, the window decides (throttled by the 429 to half the limit at first, and
    # recovering over a period), not all 10 at once.
    limiter = RateLimiter(period=6.0)
    limiter.pause(0.2)
    admitted: list[float] = []

    async def one() -> None:
        await limiter.acquire(10)
        admitted.append(time.monotonic())

    with anyio.move_on_after(1.0):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            await anyio.sleep(0.05)
            limiter.learn(requests_per_minute=2)
    assert 1 <= len(admitted) <= 2
    assert limiter.request_window.used(time.monotonic()) == len(admitted)


async def test_an_admission_held_elsewhere_past_the_edge_margin_is_counted_from_when_it_goes() -> None:
    # Admitted at t, then held (say by the client's limits) until t + 5 before it is sent: counted from
    # t + 5, it keeps its place in the window for a full period after it reaches the server.
    clock = ManualClock()
    limiter = RateLimiter(requests_per_minute=1, period=6.0, edge_margin=0.05, clock=clock)
    first = await limiter.acquire()
    clock.now += 5.0
    limiter.refresh(first)
    assert first.at == clock.now
    clock.now += 1.5  # past the first admission's original window, within the refreshed one
    assert limiter.request_window.delay(1, clock.now) == pytest.approx(6.05 - 1.5)
    clock.now += 10.0
    second = await limiter.acquire()
    limiter.refresh(second)  # just made: within the margin, left as it is
    assert second.at == clock.now and limiter.request_window.used(clock.now) == 1


def test_repeated_pauses_within_one_pause_throttle_once() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)  # no limit known: 429s throttle
    assert limiter.pause(1.0) is True
    assert limiter.pause(1.0) is False
    assert limiter.request_window.factor(clock.now) == 0.5
    assert limiter.paused_until == clock.now + 1.0
    clock.now += 1.0
    assert limiter.pause(1.0) is True


def test_a_hold_blocks_like_a_pause_without_throttling() -> None:
    clock = ManualClock()
    limiter = RateLimiter(requests_per_minute=600, clock=clock)
    limiter.hold(2.0)
    assert limiter.is_paused() and limiter.paused_until == clock.now + 2.0
    assert limiter.request_window.factor(clock.now) == 1.0
    assert limiter.pause(1.0) is True  # a 429 during a hold still starts a pause


@pytest.mark.parametrize(("made", "used"), [("asyncio", "trio"), ("trio", "asyncio")])
def test_a_limiter_made_on_one_loop_makes_requests_wait_on_another(made: str, used: str) -> None:
    """A client made under one backend (an app's setup) serves a later run under another: the requests a
    limit holds wait on the loop they run on (the queue was an anyio.Lock of the loop that made it,
    which raised RuntimeError on the other)."""

    async def make() -> RateLimiter:
        return RateLimiter(requests_per_minute=60)

    limiter = anyio.run(make, backend=made)

    async def burst() -> int:
        admitted = 0

        async def one() -> None:
            nonlocal admitted
            await limiter.acquire()
            admitted += 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for _ in range(4):  # one more than a burst window admits: the last waits its turn
                    group.start_soon(one)
        return admitted

    assert anyio.run(burst, backend=used) == 4
