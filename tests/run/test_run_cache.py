"""A run without ``run_dir`` answers identical requests from an in-memory cache held for the run only."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import anyio
import pytest

from aprompt.lm.cache import ResponseCache
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import Message
from aprompt.run._storage import run_storage
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.qa_task import optimize_in_world

pytestmark = pytest.mark.anyio

HELLO: list[Message] = [{"role": "user", "content": "Hello"}]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_without_run_dir_identical_concurrent_calls_make_one_request(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any]
) -> None:
    fake_server.latency = 0.05
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        async with run_storage(None, False, {}, [lm, lm]) as journal:
            assert journal is None
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(lm.chat, HELLO)
            await lm.chat(HELLO)  # and again once answered
        assert lm.usage.requests == 1 and lm.usage.cache_hits == 10
    assert len(fake_server.chat_requests) == 1


async def test_the_memory_cache_is_detached_when_the_run_ends_even_by_an_error(
    lm_kwargs: dict[str, Any],
) -> None:
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        with pytest.raises(RuntimeError, match="stop"):
            async with run_storage(None, False, {}, [lm]):
                assert isinstance(lm.cache, ResponseCache) and lm.cache.disk is None
                raise RuntimeError("stop")
        assert lm.cache is None


async def test_only_lms_without_a_cache_get_the_memory_cache(lm_kwargs: dict[str, Any]) -> None:
    own = ResponseCache.memory_only()
    async with OpenAICompatibleLM(**lm_kwargs, cache=own) as cached, OpenAICompatibleLM(**lm_kwargs) as bare:
        async with run_storage(None, False, {}, [cached, bare]):
            assert cached.cache is own
            assert bare.cache is not None and bare.cache is not own
        assert (cached.cache, bare.cache) == (own, None)


async def test_an_optimize_run_without_run_dir_sends_no_identical_request_twice() -> None:
    _, requests = await optimize_in_world()
    bodies = Counter(json.dumps(request.body, sort_keys=True) for request in requests)
    assert len(bodies) > 100
    assert [body for body, count in bodies.items() if count > 1] == []
