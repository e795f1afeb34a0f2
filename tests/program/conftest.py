"""Fixtures for program tests: a real OpenAI-compatible client on the loopback fake server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aprompt.lm.openai import OpenAICompatibleLM


@pytest.fixture
async def lm(lm_kwargs: dict[str, Any]) -> AsyncIterator[OpenAICompatibleLM]:
    async with OpenAICompatibleLM(**lm_kwargs) as client:
        yield client
