"""Cancelling a run mid-mini-batch leaves a consistent, resumable journal and nothing running behind it.

The fake server runs in its own thread (a blocking portal), so every task left in the test's event loop
after the cancellation would be the run's. Its responder holds every request after the first ``close_at``
until it is opened, so the cancellation lands while a mini-batch is certainly in flight.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio
import trio

import aprompt
from aprompt._optimize.search_records import trial_from_json
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.optimize.world import World
from tests.run._optimize_worker import BUDGET, optimize_world, summary, world_lm

pytestmark = pytest.mark.anyio

API_KEY = "sk-world-cancel"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Gate:
    """The World's responder that holds every request after the first ``close_at`` until ``opened``, and
    tells ``on_request`` the number of each request."""

    def __init__(self) -> None:
        self.world = World()
        self.count = 0
        self.close_at: int | None = None
        self.holding = threading.Event()
        self.opened = threading.Event()
        self.on_request: Callable[[int], object] = lambda count: None

    async def __call__(self, request: ChatRequest) -> str:
        self.count += 1
        self.on_request(self.count)
        if self.close_at is not None and self.count > self.close_at:
            self.holding.set()
            await anyio.to_thread.run_sync(self.opened.wait, abandon_on_cancel=True)
        return self.world(request)


@pytest.fixture
def gated_server() -> Iterator[tuple[FakeOpenAIServer, Gate]]:
    gate = Gate()
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(FakeOpenAIServer(responder=gate, api_key=API_KEY)) as server,
    ):
        try:
            yield server, gate
        finally:
            gate.opened.set()


def running_tasks() -> set[Any]:
    """Every task of this event loop (asyncio or trio)."""
    if sniffio.current_async_library() == "asyncio":
        return set(asyncio.all_tasks())
    root = trio.lowlevel.current_root_task()
    assert root is not None
    found: set[Any] = set()
    pending = [root]
    while pending:
        task = pending.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


def established_connections_to(port: int) -> int:
    """Open client-side TCP connections to ``127.0.0.1:port`` (read from Linux's /proc/net/tcp; 0
    elsewhere)."""
    count = 0
    if not Path("/proc/net/tcp").exists():
        return count
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in list(table)[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[3] == "01":  # 01: ESTABLISHED
                count += 1
    return count


async def test_cancelling_mid_minibatch_leaves_a_resumable_journal_and_no_task_or_connection(
    tmp_path: Path, gated_server: tuple[FakeOpenAIServer, Gate]
) -> None:
    server, gate = gated_server
    async with world_lm(server.base_url, API_KEY) as lm:
        reference = summary(await optimize_world(lm, tmp_path / "reference"))
    before = running_tasks()
    gate.close_at = gate.count + 300  # in the search (~235 requests come before it): a few trials in

    at_cancel: dict[str, int] = {}
    with anyio.fail_after(30), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:

            async def cancel_once_held() -> None:
                await anyio.to_thread.run_sync(gate.holding.wait, abandon_on_cancel=True)
                at_cancel.update(
                    tasks=len(running_tasks() - before), connections=established_connections_to(server.port)
                )
                scope.cancel()

            group.start_soon(cancel_once_held)
            async with world_lm(server.base_url, API_KEY) as lm:
                await optimize_world(lm, tmp_path / "run")
    assert scope.cancelled_caught
    assert at_cancel["tasks"] > 0, "the mini-batch was in flight"
    assert at_cancel["connections"] > 0 or sys.platform != "linux"

    await anyio.sleep(0.05)
    assert running_tasks() <= before, running_tasks() - before
    assert established_connections_to(server.port) == 0

    with RunJournal.open(tmp_path / "run") as journal:
        kinds = journal.kinds()
        trials = [trial_from_json(t) for t in journal.records("trial")]
    assert "result" not in kinds and kinds["full_eval"] >= 1
    assert 0 < len(trials) < BUDGET["n_trials"], "cancelled during the search"
    assert len({t.number for t in trials}) == len(trials)

    gate.opened.set()
    async with world_lm(server.base_url, API_KEY) as lm:
        resumed = await optimize_world(lm, tmp_path / "run")
    assert summary(resumed) == reference


async def test_a_run_cancelled_as_answers_arrive_resumes_under_its_limit_to_the_same_result(
    tmp_path: Path, gated_server: tuple[FakeOpenAIServer, Gate]
) -> None:
    server, gate = gated_server
    limits = aprompt.Limits(max_lm_calls=5_000)
    async with world_lm(server.base_url, API_KEY) as lm:
        reference = summary(await optimize_world(lm, tmp_path / "reference", limits=limits))
    arrived, cancel_at = threading.Event(), gate.count + 150  # in the bootstrap
    gate.on_request = lambda count: count == cancel_at and arrived.set()  # answers go on arriving

    with anyio.fail_after(30), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:

            async def cancel_on_arrival() -> None:
                await anyio.to_thread.run_sync(arrived.wait, abandon_on_cancel=True)
                scope.cancel()

            group.start_soon(cancel_on_arrival)
            async with world_lm(server.base_url, API_KEY) as lm:
                await optimize_world(lm, tmp_path / "run", limits=limits)
    assert scope.cancelled_caught

    with warnings.catch_warnings():
        warnings.simplefilter("error", aprompt.InexactResumeWarning)
        async with world_lm(server.base_url, API_KEY) as lm:
            resumed = await optimize_world(lm, tmp_path / "run", limits=limits)
    assert summary(resumed) == reference


@pytest.mark.local_model
async def test_cancelling_a_program_on_the_local_model_stops_its_server() -> None:
    examples = [aprompt.Example(inputs={"question": f"How many legs have {n} cats?"}) for n in range(1, 9)]
    program = aprompt.Predict("question -> answer: int", max_tokens=24)
    finished = False
    with anyio.fail_after(120), anyio.CancelScope() as scope:
        local = aprompt.local_lm(n_parallel=2, ctx_per_slot=512)
        async with local as lm:
            assert local.base_url is not None
            port = int(local.base_url.rsplit(":", 1)[1].split("/")[0])
            async with anyio.create_task_group() as group:

                async def cancel_soon() -> None:
                    await anyio.sleep(1.0)
                    scope.cancel()

                group.start_soon(cancel_soon)
                await aprompt.evaluate(program, examples, lambda example, prediction: 1.0, lm=lm)
                finished = True
    assert scope.cancelled_caught and not finished, "cancelled while the program ran"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
