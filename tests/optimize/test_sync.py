"""optimize_sync runs from plain code and refuses inside a running loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import aprompt
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import TwoStageProgram, World, examples, metric

BUDGET = {"n_candidates": 3, "val_size": 20, "n_trials": 3, "minibatch_size": 10}


def test_optimize_sync_refuses_inside_a_running_loop() -> None:
    async def inside() -> None:
        with pytest.raises(aprompt.ConfigError, match="running event loop"):
            aprompt.optimize_sync(TwoStageProgram(), examples(0, 10), metric)

    import anyio

    anyio.run(inside)


def test_optimize_sync_runs_a_whole_optimization_from_plain_code() -> None:
    import anyio

    ready = threading.Event()
    stop = threading.Event()
    url: dict[str, Any] = {}

    async def serve() -> None:
        async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
            url["base"] = server.base_url
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(serve,))
    thread.start()
    try:
        assert ready.wait(10)
        lm = aprompt.OpenAICompatibleLM("world", url["base"], api_key="sk-world")
        result = aprompt.optimize_sync(
            TwoStageProgram(), examples(0, 40), metric, valset=examples(200, 220), lm=lm, budget=BUDGET
        )
    finally:
        stop.set()
        thread.join()
    assert len(result.trials) == 3
    assert result.score >= result.baseline_score
