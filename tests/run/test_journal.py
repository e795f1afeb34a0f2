"""The run journal: append-only records in one SQLite file that survive a crash whole or not at all."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from aprompt._errors import JournalError
from aprompt.run.journal import JOURNAL_FILE, RunJournal, record_checksum

# Appends big records as fast as it can, printing the number of each once ``append`` has returned.
WRITER = """
import sys
from aprompt.run.journal import RunJournal
journal = RunJournal.open(sys.argv[1])
for number in range(100_000):
    journal.append("trial", {"number": number, "blob": "x" * 200_000}, key=str(number))
    print(number, flush=True)
"""


def test_records_read_back_in_append_order_by_kind_and_key(tmp_path: Path) -> None:
    with RunJournal.open(tmp_path) as journal:
        journal.append("trial", {"number": 0}, key="0")
        journal.append("full_eval", {"score": 0.5}, key="[]")
        journal.append("trial", {"number": 1, "z": 1, "a": 2}, key="1")
        journal.append("trial", {"number": 0, "again": True}, key="0")
    with RunJournal.open(tmp_path) as journal:
        assert journal.records("trial") == [
            {"number": 0},
            {"number": 1, "z": 1, "a": 2},
            {"number": 0, "again": True},
        ]
        assert list(journal.records("trial", key="1")[0]) == ["number", "z", "a"]
        assert journal.latest("trial", key="0") == {"number": 0, "again": True}
        assert journal.latest("proposals") is None
        assert journal.kinds() == {"trial": 3, "full_eval": 1}
        journal.clear()
        assert journal.kinds() == {}


def test_a_record_torn_by_a_kill_is_never_half_there(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    assert writer.stdout is not None
    confirmed = -1
    for line in writer.stdout:
        confirmed = int(line)
        if confirmed >= 15:
            writer.send_signal(signal.SIGKILL)
            break
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    with RunJournal.open(tmp_path) as journal:
        records = journal.records("trial")
        # Every confirmed append is there, and nothing half there: the one in flight when the kill came
        # is whole or absent. (The writer may have appended more between the line read and the kill.)
        assert len(records) >= confirmed + 1
        assert [r["number"] for r in records] == list(range(len(records)))
        assert all(len(r["blob"]) == 200_000 for r in records)
        journal.append("trial", {"number": len(records)})
        assert journal.kinds() == {"trial": len(records) + 1}


def test_processes_opening_a_new_journal_at_once_all_find_it_made(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def open_and_write(number: int) -> None:
        start.wait()
        try:
            with RunJournal.open(tmp_path) as journal:
                journal.append("trial", {"number": number})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with RunJournal.open(tmp_path) as journal:
        assert sorted(r["number"] for r in journal.records("trial")) == list(range(8))


def test_another_programs_sqlite_file_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / JOURNAL_FILE) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    with pytest.raises(JournalError, match="not an aprompt run journal"):
        RunJournal.open(tmp_path)


def test_a_journal_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    RunJournal.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / JOURNAL_FILE)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(JournalError, match=r"schema 99.*a newer aprompt wrote it: upgrade aprompt"):
        RunJournal.open(tmp_path)


def test_a_file_where_the_run_dir_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(JournalError, match="cannot open run journal"):
        RunJournal.open(tmp_path / "run")


def test_an_unreadable_record_is_a_journal_error(tmp_path: Path) -> None:
    RunJournal.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / JOURNAL_FILE)
    torn = '{"torn'  # checksummed as it is: the checksum passes, the JSON does not parse
    db.execute(
        "INSERT INTO records (kind, key, payload, created, checksum) VALUES ('trial', '0', ?, 0, ?)",
        (torn, record_checksum("trial", "0", torn)),
    )
    db.commit()
    db.close()
    with (
        RunJournal.open(tmp_path) as journal,
        pytest.raises(JournalError, match=r"trial record '0' \(#1\) is unreadable"),
    ):
        journal.records("trial")


def test_a_closed_journal_refuses_reads_and_writes(tmp_path: Path) -> None:
    journal = RunJournal.open(tmp_path)
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.append("trial", {})
    with pytest.raises(JournalError, match="closed"):
        journal.kinds()


def test_latest_reads_only_the_last_record_of_its_kind(tmp_path: Path) -> None:
    # A run journals its per-example table (every validation input, whole) on every call: a resume
    # read, parsed and held every copy at once to take the last one.
    with RunJournal.open(tmp_path) as journal:
        for call in range(20):
            journal.append("examples", {"call": call, "rows": "x" * 1_000_000})
    with RunJournal.open(tmp_path) as journal:
        tracemalloc.start()
        try:
            latest = journal.latest("examples")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert latest["call"] == 19
    assert peak < 5_000_000  # one record (its text and its value), not twenty
