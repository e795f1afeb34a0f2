"""Fixtures of the LM client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aprompt.lm._http import HTTPChatLM
from aprompt.lm.anthropic import AnthropicLM
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.testing.fake_anthropic import FakeAnthropicServer
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.lm.providers import QUICK, Provider


@pytest.fixture(params=["openai", "anthropic"])
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[Provider]:
    if request.param == "openai":
        async with FakeOpenAIServer(api_key=TEST_API_KEY) as openai:

            def make_openai(**options: Any) -> HTTPChatLM:
                options = {"retry": QUICK, **options}
                return OpenAICompatibleLM("fake", openai.base_url, api_key=TEST_API_KEY, **options)

            yield Provider("openai", openai, make_openai)
    else:
        async with FakeAnthropicServer(api_key=TEST_API_KEY) as anthropic:

            def make_anthropic(**options: Any) -> HTTPChatLM:
                options = {"retry": QUICK, **options}
                return AnthropicLM("fake", anthropic.base_url, api_key=TEST_API_KEY, **options)

            yield Provider("anthropic", anthropic, make_anthropic)
