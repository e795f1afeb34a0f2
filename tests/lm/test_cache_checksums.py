"""Cache entries carry a checksum: a damaged entry, or one written before checksums, is a miss (logged at
WARNING) that the next answer replaces — never a silently changed reply, never a stopped run.

Entries are damaged in a real SQLite cache file, with SQLite, the way a bad disk or a hand edit would.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from aprompt.lm.cache import CACHE_FILE_NAME, ResponseCache
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.run._storage import CACHE_DIR
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.lm.test_cache import CountingCompute, key_of
from tests.optimize.world import World
from tests.run._optimize_worker import run_world, summary

pytestmark = pytest.mark.anyio

API_KEY = "sk-world-cache-checks"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def edit(directory: Path, statement: str, *args: object) -> None:
    """One UPDATE on the cache file in ``directory``, as a hand edit would."""
    db = sqlite3.connect(directory / CACHE_FILE_NAME)
    try:
        assert db.execute(statement, args).rowcount > 0
        db.commit()
    finally:
        db.close()


async def cached_once(directory: Path, name: str, text: str = "answer") -> None:
    with ResponseCache.in_directory(directory) as cache:
        await cache.get_or_compute(key_of(name), CountingCompute(text))


async def read_back(directory: Path, name: str) -> tuple[str, bool, int]:
    """``(text, hit, computes)`` of asking a fresh cache on ``directory`` for ``name``."""
    compute = CountingCompute("recomputed")
    with ResponseCache.in_directory(directory) as cache:
        completion, hit = await cache.get_or_compute(key_of(name), compute)
    return completion.text, hit, compute.calls


async def test_an_edited_reply_is_a_logged_miss_and_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await cached_once(tmp_path, "q")
    edit(tmp_path, "UPDATE completions SET value = replace(value, 'answer', 'ANSWER')")
    with caplog.at_level(logging.WARNING, logger="aprompt"):
        assert await read_back(tmp_path, "q") == ("recomputed", False, 1)
    assert f"entry {key_of('q')} is damaged" in caplog.text
    assert await read_back(tmp_path, "q") == ("recomputed", True, 0)  # the fresh answer took its place


async def test_edited_token_counts_are_a_miss(tmp_path: Path) -> None:
    await cached_once(tmp_path, "q")
    edit(tmp_path, "UPDATE completions SET value = json_set(value, '$.prompt_tokens', 1)")
    assert await read_back(tmp_path, "q") == ("recomputed", False, 1)


async def test_a_reply_moved_under_another_key_is_a_miss(tmp_path: Path) -> None:
    await cached_once(tmp_path, "a", "answer a")
    await cached_once(tmp_path, "b", "answer b")
    edit(
        tmp_path,
        "UPDATE completions SET value = (SELECT value FROM completions WHERE key = ?) WHERE key = ?",
        key_of("a"),
        key_of("b"),
    )
    assert await read_back(tmp_path, "b") == ("recomputed", False, 1)
    assert await read_back(tmp_path, "a") == ("answer a", True, 0)


async def test_an_unparsable_entry_is_a_miss_not_an_error(tmp_path: Path) -> None:
    await cached_once(tmp_path, "q")
    edit(tmp_path, 'UPDATE completions SET value = \'{"text": "torn\'')
    assert await read_back(tmp_path, "q") == ("recomputed", False, 1)


async def test_an_entry_written_before_checksums_is_a_miss_and_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await cached_once(tmp_path, "q")
    edit(tmp_path, "UPDATE completions SET value = json_remove(value, '$.checksum')")
    with caplog.at_level(logging.WARNING, logger="aprompt"):
        assert await read_back(tmp_path, "q") == ("recomputed", False, 1)
    assert "older aprompt" in caplog.text
    assert await read_back(tmp_path, "q") == ("recomputed", True, 0)


async def test_a_damaged_page_of_the_file_is_a_logged_miss_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"q{i}" for i in range(300)]
    with ResponseCache.in_directory(tmp_path) as cache:
        for name in names:
            await cache.get_or_compute(key_of(name), CountingCompute(f"answer {name} " + "x" * 200))
    path = tmp_path / CACHE_FILE_NAME
    pages = path.stat().st_size // 4096
    with path.open("r+b") as file:  # a bad disk: one page in the middle of the table overwritten
        file.seek(pages // 2 * 4096)
        file.write(b"\xff" * 4096)
    texts = []
    with caplog.at_level(logging.WARNING, logger="aprompt"), ResponseCache.in_directory(tmp_path) as cache:
        for name in names:
            completion, _ = await cache.get_or_compute(key_of(name), CountingCompute("recomputed"))
            texts.append(completion.text)
    assert set(texts) - {"recomputed"} <= {f"answer {name} " + "x" * 200 for name in names}
    assert texts.count("recomputed") >= 1  # the page held entries, asked again
    assert "cannot be read" in caplog.text and "delete the file" in caplog.text


async def test_a_damaged_run_cache_never_changes_the_result(tmp_path: Path) -> None:
    """Every cached reply of a finished run turned wrong: starting over asks the endpoint again and
    reaches the result of a clean run, where trusting the cache would have scored the wrong replies."""
    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
        reference = await run_world(server.base_url, tmp_path, API_KEY)
        calls = len(server.chat_requests)
        edit(
            tmp_path / CACHE_DIR,
            "UPDATE completions SET value = json_set(value, '$.text', 'Code: none\nAnswer: wrong')",
        )
        server.reset_records()
        again = await run_world(server.base_url, tmp_path, API_KEY, resume=False)
        assert len(server.chat_requests) == calls  # every damaged reply asked for again
    assert summary(again) == summary(reference)


async def test_a_reply_with_a_lone_surrogate_is_returned_stored_and_read_back_alike(tmp_path: Path) -> None:
    """``"\\ud83d"`` without its other half is valid JSON a server may send, but not text UTF-8 can hold:
    the reply is returned with U+FFFD in its place and stored as returned, not lost after it was paid."""
    async with FakeOpenAIServer(responder=lambda request: "Answer: smile \ud83d", api_key=API_KEY) as server:
        with ResponseCache.in_directory(tmp_path) as cache:
            async with OpenAICompatibleLM("m", server.base_url, api_key=API_KEY, cache=cache) as lm:
                first = await lm.chat([{"role": "user", "content": "hi"}])
        with ResponseCache.in_directory(tmp_path) as cache:
            async with OpenAICompatibleLM("m", server.base_url, api_key=API_KEY, cache=cache) as lm:
                again = await lm.chat([{"role": "user", "content": "hi"}])
        assert len(server.chat_requests) == 1
    assert first.text == again.text == "Answer: smile \ufffd" and again.cached


def test_a_record_with_a_lone_surrogate_reads_back_as_it_was(tmp_path: Path) -> None:
    payload = {"inputs": {"question": "why \udc00?"}, "output": "naïve"}
    with RunJournal.open(tmp_path) as journal:
        journal.append("trial", payload, key="0")
    with RunJournal.open(tmp_path) as journal:
        assert journal.records("trial") == [payload]
