"""A run without ``run_dir`` answers identical requests from an in-memory cache held for the run only."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

import aprompt
from aprompt.lm.cache import ResponseCache
from aprompt.lm.cache._run_caches import lent_cache
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import Message
from aprompt.run._storage import run_storage
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import optimize_in_world
from tests.optimize.world import TwoStageProgram, World, examples, metric

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
                lent = lent_cache(lm)
                assert isinstance(lent, ResponseCache) and lent.disk is None and lm.cache is None
                raise RuntimeError("stop")
        assert lm.cache is None and lent_cache(lm) is None


async def test_only_lms_without_a_cache_get_the_memory_cache(lm_kwargs: dict[str, Any]) -> None:
    own = ResponseCache.memory_only()
    async with OpenAICompatibleLM(**lm_kwargs, cache=own) as cached, OpenAICompatibleLM(**lm_kwargs) as bare:
        async with run_storage(None, False, {}, [cached, bare]):
            assert cached.cache is own and lent_cache(cached) is None
            assert lent_cache(bare) is not None and lent_cache(bare) is not own
        assert (cached.cache, bare.cache) == (own, None) and lent_cache(bare) is None


async def test_an_optimize_run_without_run_dir_sends_no_identical_request_twice() -> None:
    _, requests = await optimize_in_world()
    bodies = Counter(json.dumps(request.body, sort_keys=True) for request in requests)
    assert len(bodies) > 100
    assert [body for body, count in bodies.items() if count > 1] == []


async def test_a_predictors_own_lm_gets_the_run_cache_too(tmp_path: Path) -> None:
    """A predictor's own ``lm=`` without a cache was given none by the run: it was sent (and billed for)
    the same request again and again, and a resumed run could not get its answers back."""
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as own_server,
        OpenAICompatibleLM("fake-model", server.base_url, api_key=TEST_API_KEY) as lm,
        OpenAICompatibleLM("own-model", own_server.base_url, api_key=TEST_API_KEY) as own,
    ):
        program = TwoStageProgram()
        program.answer.lm = own
        await aprompt.optimize(
            program,
            examples(0, 40),
            metric,
            lm=lm,
            run_dir=tmp_path / "run",
            budget={"n_candidates": 3, "val_size": 20, "n_trials": 4, "minibatch_size": 10},
        )
        assert own.cache is None and lent_cache(own) is None  # lent for the run only
    bodies = Counter(json.dumps(request.body, sort_keys=True) for request in own_server.chat_requests)
    assert len(bodies) > 20
    assert [body for body, count in bodies.items() if count > 1] == []


async def test_two_runs_sharing_a_client_each_keep_their_own_cache(
    lm_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """One client, two optimizations at once: each run's calls find its own cache (its run_dir's for the
    one that has one), and the run that ends first takes nothing from the other."""
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        first_done = anyio.Event()
        seen: dict[str, Any] = {}

        async def first() -> None:
            async with run_storage(None, False, {}, [lm]):
                seen["first"] = lent_cache(lm)
                await lm.chat(HELLO)
            first_done.set()

        async def second() -> None:
            async with run_storage(tmp_path, False, {}, [lm]):
                seen["second"] = lent_cache(lm)
                await first_done.wait()
                await lm.chat(HELLO)  # not the first run's answer: its own cache is empty
                await lm.chat(HELLO)  # its own cache answers, after the first run ended
                seen["second after"] = lent_cache(lm)

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            group.start_soon(second)
    assert seen["second"] is seen["second after"] and seen["second"].disk is not None
    assert seen["first"] is not seen["second"] and seen["first"].disk is None
    assert lm.usage.requests == 2 and lm.usage.cache_hits == 1 and lm.cache is None


async def test_a_run_dir_whose_cache_cannot_be_made_is_a_cache_error_before_any_call(
    fake_server: FakeOpenAIServer, lm_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "cache").write_text("not a directory")
    async with OpenAICompatibleLM(**lm_kwargs) as lm:
        with pytest.raises(aprompt.CacheError, match="cannot make the LM cache directory") as caught:
            await aprompt.optimize(TwoStageProgram(), examples(0, 20), metric, lm=lm, run_dir=tmp_path)
    assert caught.value.path == str(tmp_path / "cache" / "lm-cache.sqlite3")
    assert fake_server.chat_requests == []
