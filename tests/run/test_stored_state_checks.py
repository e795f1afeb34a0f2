"""Stored state is checked: a damaged journal record is a JournalError naming it and the remedy, never a
raw KeyError nor a silently changed score; a journal written before checksums is refused clearly.

The records are damaged in a real journal file, with SQLite, the way a bad disk or a hand edit would.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aprompt._errors import JournalError
from aprompt.run.journal import APPLICATION_ID, JOURNAL_FILE, RunJournal
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import World
from tests.run._optimize_worker import run_world

API_KEY = "sk-world-stored-state"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as served:
        yield served


def edit(run_dir: Path, statement: str, *args: object) -> int:
    """Run one UPDATE on the journal of ``run_dir``, as a hand edit would; the rows it changed."""
    db = sqlite3.connect(run_dir / JOURNAL_FILE)
    try:
        changed = db.execute(statement, args).rowcount
        db.commit()
    finally:
        db.close()
    assert changed > 0
    return changed


def test_an_edited_score_in_a_record_is_a_journal_error_naming_it(tmp_path: Path) -> None:
    with RunJournal.open(tmp_path) as journal:
        journal.append("trial", {"number": 3, "score": 0.25}, key="3")
    edit(tmp_path, "UPDATE records SET payload = replace(payload, '0.25', '0.75')")
    with RunJournal.open(tmp_path) as journal, pytest.raises(JournalError) as info:
        journal.records("trial")
    message = str(info.value)
    assert "trial record '3'" in message and "damaged" in message and "resume=False" in message
    assert info.value.path == str(tmp_path / JOURNAL_FILE)


def test_a_record_moved_under_another_key_is_a_journal_error(tmp_path: Path) -> None:
    with RunJournal.open(tmp_path) as journal:
        journal.append("full_eval", {"score": 0.5}, key="a")
        journal.append("full_eval", {"score": 0.9}, key="b")
    edit(tmp_path, "UPDATE records SET key = 'c' WHERE key = 'b'")
    with RunJournal.open(tmp_path) as journal, pytest.raises(JournalError, match="full_eval record 'c'"):
        journal.latest("full_eval", "c")


def test_a_journal_of_schema_1_opens_and_refuses_its_unchecksummed_records(tmp_path: Path) -> None:
    make_schema_1_journal(tmp_path, [("trial", "0", {"number": 0, "score": 0.5})])
    with (
        RunJournal.open(tmp_path) as journal,
        pytest.raises(JournalError, match=r"older aprompt.*resume=False"),
    ):
        journal.records("trial")


def make_schema_1_journal(run_dir: Path, records: list[tuple[str, str, object]]) -> None:
    """A journal as aprompt wrote it before records carried checksums."""
    run_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(run_dir / JOURNAL_FILE)
    try:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
            "key TEXT NOT NULL DEFAULT '', payload TEXT NOT NULL, created REAL NOT NULL)"
        )
        db.execute("CREATE INDEX records_kind ON records (kind, key)")
        db.executemany(
            "INSERT INTO records (kind, key, payload, created) VALUES (?, ?, ?, 0)",
            [(kind, key, json.dumps(payload)) for kind, key, payload in records],
        )
        db.commit()
    finally:
        db.close()


@pytest.mark.anyio
async def test_an_emptied_demo_sets_record_is_a_journal_error_not_a_key_error(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run_world(server.base_url, tmp_path, API_KEY)
    edit(tmp_path, "UPDATE records SET payload = '{}' WHERE kind = 'demo_sets'")
    server.reset_records()
    with pytest.raises(JournalError, match=r"demo_sets record 'all' .*damaged.*resume=False"):
        await run_world(server.base_url, tmp_path, API_KEY)
    assert server.chat_requests == []


@pytest.mark.anyio
async def test_an_edited_full_evaluation_score_never_changes_a_resumed_result(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run_world(server.base_url, tmp_path, API_KEY)
    edit(tmp_path, "UPDATE records SET payload = json_set(payload, '$.score', 0.99) WHERE kind = 'full_eval'")
    with pytest.raises(JournalError, match=r"full_eval record .*damaged"):
        await run_world(server.base_url, tmp_path, API_KEY)


@pytest.mark.anyio
async def test_a_run_journaled_before_checksums_is_refused_and_resume_false_starts_over(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = {"strategy": "mipro", "seed": 3, "trainset": "0" * 16, "valset": "1" * 16}
    make_schema_1_journal(tmp_path, [("config", "", config), ("full_eval", "[]", {"score": 1.0})])
    with pytest.raises(JournalError, match=r"older aprompt.*resume=False"):
        await run_world(server.base_url, tmp_path, API_KEY)
    assert server.chat_requests == []
    reference = await run_world(server.base_url, tmp_path / "reference", API_KEY)
    restarted = await run_world(server.base_url, tmp_path, API_KEY, resume=False)
    assert restarted.score == reference.score and restarted.best_choice == reference.best_choice
    with RunJournal.open(tmp_path) as journal:  # every record now checksummed and readable
        record = journal.latest("result")
        assert record is not None
        assert (record["score"], record["best_choice"]) == (restarted.score, restarted.best_choice)
