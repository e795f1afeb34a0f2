"""Both HTTP clients against their fake servers (the ``provider`` fixture in ``conftest.py``): tests of
provider-independent behaviour run once per provider."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from aprompt.lm._http import HTTPChatLM
from aprompt.lm.retry import RetryPolicy
from aprompt.testing.fake_openai import FakeOpenAIServer

#: Quick back-offs and two retries.
QUICK = RetryPolicy(initial_backoff=0.005, max_backoff=0.02, max_retries=2)


@attrs.define
class Provider:
    """A fake server and a way to make a client of it."""

    name: str
    server: FakeOpenAIServer
    make: Callable[..., HTTPChatLM]

    def sent(self, index: int) -> dict[str, Any]:
        body = self.server.chat_requests[index].body
        assert body is not None
        return body
