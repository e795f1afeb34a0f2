"""optimize_sync runs from plain code and refuses inside a running loop."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

import aprompt
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import TwoStageProgram, World, examples, metric

BUDGET = {"n_candidates": 3, "val_size": 20, "n_trials": 3, "minibatch_size": 10}


def test_optimize_sync_refuses_inside_a_running_loop() -> None:
    async def inside() -> None:
        with pytest.raises(aprompt.ConfigError, match="running event loop"):
            aprompt.optimize_sync(TwoStageProgram(), examples(0, 10), metric)

    anyio.run(inside)


@pytest.mark.parametrize("backend", ["Trio", "curio", None])
def test_optimize_sync_refuses_a_backend_it_cannot_start(backend: Any) -> None:
    with pytest.raises(aprompt.ConfigError, match="backend must be one of 'asyncio', 'trio'"):
        aprompt.optimize_sync(TwoStageProgram(), examples(0, 10), metric, backend=backend)


def test_optimize_sync_on_trio_without_trio_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trio", None)  # what importing it finds where it is not installed
    monkeypatch.delitem(sys.modules, "anyio._backends._trio", raising=False)
    with pytest.raises(aprompt.ConfigError, match="needs the trio package: `pip install trio`"):
        aprompt.optimize_sync(TwoStageProgram(), examples(0, 10), metric, backend="trio")


@contextmanager
def world_server() -> Iterator[str]:
    """The base URL of a fake server of the World, served by its own thread's event loop."""
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
        yield url["base"]
    finally:
        stop.set()
        thread.join()


def test_optimize_sync_runs_a_whole_optimization_from_plain_code() -> None:
    with world_server() as base_url:
        lm = aprompt.OpenAICompatibleLM("world", base_url, api_key="sk-world")
        result = aprompt.optimize_sync(
            TwoStageProgram(), examples(0, 40), metric, valset=examples(200, 220), lm=lm, budget=BUDGET
        )
    assert len(result.trials) == 3
    assert result.score >= result.baseline_score


def test_one_client_serves_optimize_sync_again_on_each_backend() -> None:
    with world_server() as base_url:
        lm = aprompt.OpenAICompatibleLM("world", base_url, api_key="sk-world")
        results = [
            aprompt.optimize_sync(
                TwoStageProgram(),
                examples(0, 40),
                metric,
                valset=examples(200, 220),
                lm=lm,
                budget=BUDGET,
                backend=backend,
            )
            for backend in ("asyncio", "asyncio", "trio", "asyncio")
        ]
    assert len({(r.score, tuple(t.score for t in r.trials)) for r in results}) == 1
