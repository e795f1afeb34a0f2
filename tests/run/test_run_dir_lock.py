"""One optimization per ``run_dir``: a second one, in another process or in this one, is refused at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import aprompt
from aprompt._optimize.events import Event, RunPlanned
from aprompt.run.journal import RunJournal
from aprompt.run.lock import LOCK_FILE, RunDirLock
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import World
from tests.run._optimize_worker import KEY_ENV_VAR, run_world

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-world-lock-test"

# Holds the lock of argv[1] until killed, saying so once it does.
HOLDER = """
import sys, time
from aprompt.run.lock import RunDirLock
lock = RunDirLock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def child_env() -> dict[str, str]:
    return {**os.environ, KEY_ENV_VAR: API_KEY, "PYTHONPATH": str(ROOT)}


async def run_paused_at_plan(
    server: FakeOpenAIServer, run_dir: Path, while_running: Any
) -> aprompt.OptimizeResult:
    """A world run in ``run_dir`` that, once it holds the run_dir, awaits ``while_running()`` first."""

    async def on_event(event: Event) -> None:
        if isinstance(event, RunPlanned):
            await while_running()

    return await run_world(server.base_url, run_dir, API_KEY, on_event=on_event)


async def test_a_second_process_on_a_running_run_dir_is_refused_at_once(tmp_path: Path) -> None:
    outcome: list[subprocess.CompletedProcess[str]] = []

    async def second_process() -> None:
        before = len(server.chat_requests)
        done = await anyio.run_process(
            [sys.executable, "-m", "tests.run._optimize_worker", server.base_url, str(tmp_path), "out.json"],
            cwd=tmp_path,
            env=child_env(),
            check=False,
        )
        outcome.append(subprocess.CompletedProcess(done.args, done.returncode, "", done.stderr.decode()))
        assert len(server.chat_requests) == before  # the child made no chat request

    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
        result = await run_paused_at_plan(server, tmp_path, second_process)
    [child] = outcome
    assert child.returncode != 0
    assert "RunDirLockedError" in child.stderr and "in use by another optimization" in child.stderr
    assert not (tmp_path / "out.json").exists()
    with RunJournal.open(tmp_path) as journal:  # one run's records, not two interleaved
        assert len(journal.records("config")) == 1 and len(journal.records("result")) == 1
    assert result.score > 0


async def test_a_second_concurrent_call_in_one_process_is_refused_at_once(tmp_path: Path) -> None:
    refused: list[Exception] = []

    async def second_call() -> None:
        before = len(server.chat_requests)
        with pytest.raises(aprompt.RunDirLockedError, match="in use by another optimization") as info:
            await run_world(server.base_url, tmp_path, API_KEY)
        assert len(server.chat_requests) == before
        refused.append(info.value)

    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
        await run_paused_at_plan(server, tmp_path, second_call)
        assert isinstance(refused[0], aprompt.ConfigError)
        server.reset_records()
        await run_world(server.base_url, tmp_path, API_KEY)  # the lock went with the first run
        assert server.chat_requests == []  # ... which had finished: read back, no call repeated


def test_the_lock_dies_with_the_process_holding_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], env=child_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(aprompt.RunDirLockedError, match=f"process {holder.pid}") as info:
            RunDirLock.acquire(tmp_path)
        assert info.value.path == str(tmp_path / LOCK_FILE)
    finally:
        holder.kill()  # SIGKILL: the process gets no chance to clean up
        holder.wait()
    with RunDirLock.acquire(tmp_path):  # no stale lock left behind by a killed run
        pass


async def test_a_run_dir_is_free_again_after_a_refused_resume(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
        await run_world(server.base_url, tmp_path, API_KEY)
        with pytest.raises(aprompt.ConfigError, match="different config"):
            await run_world(server.base_url, tmp_path, API_KEY, bootstrap_threshold=0.5)
    with RunDirLock.acquire(tmp_path):
        pass


def test_a_file_in_place_of_the_run_dir_is_a_journal_error(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(aprompt.JournalError, match="cannot open run_dir"):
        RunDirLock.acquire(tmp_path / "run")
