"""Shared fixtures: the anyio backend and a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aprompt.testing.fake_openai import FakeOpenAIServer

TEST_API_KEY = "sk-test-DO-NOT-LEAK-5f2b9c1e7a"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeOpenAIServer]:
    """A fake server answering "Answer: ok"; tests set ``responder``, faults, latency on it."""
    async with FakeOpenAIServer(api_key=TEST_API_KEY) as server:
        yield server


@pytest.fixture
def lm_kwargs(fake_server: FakeOpenAIServer) -> dict[str, Any]:
    """Keyword arguments for ``OpenAICompatibleLM`` pointing at ``fake_server``."""
    return {"model": "fake-model", "base_url": fake_server.base_url, "api_key": TEST_API_KEY}
