"""``timeout`` bounds a whole attempt (headers and the entire body), and a body longer than
``max_response_bytes`` is not read on: against both fake servers, on asyncio and trio."""

from __future__ import annotations

import pytest
from anyio import current_time, move_on_after

from aprompt._errors import BadResponseError, ConfigError, LMTimeoutError
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import Message
from aprompt.testing.fake_openai import Fault
from tests.lm.providers import Provider

pytestmark = pytest.mark.anyio

HELLO: list[Message] = [{"role": "user", "content": "Hello"}]
MIB = 2**20


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_trickling_body_times_out_within_the_timeout(provider: Provider) -> None:
    # About 300 bytes at one byte every 0.1 s: half a minute in all, each read well under the timeout.
    provider.server.queue_faults(Fault.slow_body(chunk_bytes=1, every=0.1))
    async with provider.make(timeout=1.0, max_retries=0) as lm:
        started = current_time()
        with move_on_after(10.0) as guard, pytest.raises(LMTimeoutError, match="1 s timeout"):
            await lm.chat(HELLO)
    assert not guard.cancelled_caught
    assert current_time() - started < 2.0


async def test_an_attempt_timed_out_mid_body_is_retried_on_a_clean_connection(provider: Provider) -> None:
    provider.server.queue_faults(Fault.slow_body(chunk_bytes=1, every=0.1))
    async with provider.make(timeout=0.5, max_retries=1, max_concurrency=1) as lm:
        completion = await lm.chat(HELLO)
        again = await lm.chat([{"role": "user", "content": "Again"}])
    assert (completion.text, again.text) == ("Answer: ok", "Answer: ok")
    assert (lm.usage.requests, lm.usage.retries) == (3, 1)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_max_response_bytes_raises_bad_response_error(
    provider: Provider, chunked: bool
) -> None:
    provider.server.queue_faults(Fault.huge_body(megabytes=3, chunked=chunked))
    async with provider.make(max_response_bytes=MIB, max_retries=0) as lm:
        with pytest.raises(BadResponseError, match=f"max_response_bytes={MIB}"):
            await lm.chat(HELLO)


async def test_a_huge_body_is_not_read_past_the_default_cap(provider: Provider) -> None:
    # 200 MiB of a valid answer, without a Content-Length: read whole, it would parse.
    provider.server.queue_faults(Fault.huge_body(megabytes=200, chunked=True))
    async with provider.make(max_retries=0) as lm:
        with pytest.raises(BadResponseError, match=f"max_response_bytes={10 * MIB}"):
            await lm.chat(HELLO)


async def test_a_too_large_body_is_retried(provider: Provider) -> None:
    provider.server.queue_faults(Fault.huge_body(megabytes=2))
    async with provider.make(max_response_bytes=MIB, max_retries=1) as lm:
        completion = await lm.chat(HELLO)
    assert completion.text == "Answer: ok"
    assert lm.usage.retries == 1


async def test_a_body_under_the_cap_is_read_whole(provider: Provider) -> None:
    provider.server.queue_faults(Fault.huge_body(megabytes=1, chunked=True))
    async with provider.make(max_response_bytes=2 * MIB, max_retries=0) as lm:
        completion = await lm.chat(HELLO)
    assert completion.text == "Answer: ok"


def test_max_response_bytes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_response_bytes"):
        OpenAICompatibleLM("m", "http://127.0.0.1:9/v1", api_key="", max_response_bytes=0)
