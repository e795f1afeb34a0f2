"""A metered call (how aprompt itself calls an LM): counted by the run's meter, ended by its time limit,
and otherwise left to its caller."""

from __future__ import annotations

import anyio
import pytest

from aprompt.lm._limit_reached import LimitReached
from aprompt.lm._meter_context import metered_chat, metering
from aprompt.lm._metering import RequestMeter
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import Message
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.anyio
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

HELLO: list[Message] = [{"role": "user", "content": "Hello"}]


@both_backends
async def test_a_metered_call_without_a_time_limit_is_answered_and_counted(
    fake_server: FakeOpenAIServer,
) -> None:
    meter = RequestMeter()
    async with OpenAICompatibleLM("m", fake_server.base_url, api_key=TEST_API_KEY) as lm:
        with metering(meter):
            completion = await metered_chat(lm, HELLO)
    assert completion.text == "Answer: ok"
    assert (meter.usage.requests, meter.usage.calls) == (1, 1)


@both_backends
async def test_a_metered_call_without_a_time_limit_is_cancelled_by_its_caller_alone(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.latency = 5.0
    meter = RequestMeter()
    async with OpenAICompatibleLM("m", fake_server.base_url, api_key=TEST_API_KEY) as lm:
        with metering(meter), anyio.move_on_after(0.2) as caller:
            await metered_chat(lm, HELLO)
    assert caller.cancelled_caught  # the caller's cancellation, not a LimitReached
    assert meter.usage.requests == 1


@both_backends
async def test_a_metered_call_in_flight_at_the_time_limit_raises_limit_reached(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.latency = 5.0
    meter = RequestMeter(max_seconds=0.2)
    async with OpenAICompatibleLM("m", fake_server.base_url, api_key=TEST_API_KEY) as lm:
        with metering(meter), anyio.fail_after(3.0), pytest.raises(LimitReached) as raised:
            await metered_chat(lm, HELLO)
    assert raised.value.limit == "max_time"
