"""The embedded local model as the real-model benchmarks start it: served, then warmed with one call.

The first request to a fresh llama.cpp server pays for loading the weights into the caches; sent
before any timed or counted work, it keeps that cost out of the first method's seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aprompt
from aprompt.lm._replies import accepting_cut_replies


@asynccontextmanager
async def warm_local_lm(
    *, parallel: int, threads: int, ctx_per_slot: int = 4096
) -> AsyncIterator[tuple[aprompt.OpenAICompatibleLM, str]]:
    """Start the embedded model (``parallel`` slots of ``ctx_per_slot`` tokens, ``threads`` threads),
    send it one one-token call, and yield its client and its server's ``/v1`` URL while it runs."""
    local = aprompt.local_lm(n_parallel=parallel, n_threads=threads, ctx_per_slot=ctx_per_slot)
    async with local as lm:
        with accepting_cut_replies(lambda text: True):  # one token is the whole warm-up
            await lm.chat([{"role": "user", "content": "Hi"}], max_tokens=1)
        assert local.base_url is not None
        yield lm, local.base_url
