"""The run journal: every durable fact of an optimization, appended as it happens, so a run resumes.

A journal is one SQLite file (``run_dir/journal.sqlite3``) with one append-only table. Each record is
written in its own transaction with ``synchronous=FULL``: after ``append`` returns the record survives a
crash or power loss, and a record torn by a crash mid-write is rolled back by SQLite on the next open — it
is never half there. Records are JSON payloads under a ``kind`` (``config``, ``demo_sets``,
``instructions``, ``trials``, ``full_eval``, ...) and an optional ``key``.

Example::

    with RunJournal.open("runs/qa") as journal:
        journal.append("trials", payload, key="0")
        journal.records("trials")
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aprompt._errors import JournalError

JOURNAL_FILE = "journal.sqlite3"
APPLICATION_ID = 0x4A524E4C  # "JRNL": tells our journal from any other SQLite file
SCHEMA_VERSION = 1


class RunJournal:
    """An append-only record of one run in ``run_dir``; see the module docstring."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = connection

    @classmethod
    def open(cls, run_dir: str | os.PathLike[str]) -> RunJournal:
        """Open (creating if needed) the journal of ``run_dir``.

        Raises:
            JournalError: the file exists but is not an aprompt journal (or is damaged beyond SQLite's
                own recovery).
        """
        folder = Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / JOURNAL_FILE
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 30000")
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
            if app_id == 0 and not tables:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute(
                    "CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                    "key TEXT NOT NULL DEFAULT '', payload TEXT NOT NULL, created REAL NOT NULL)"
                )
                db.execute("CREATE INDEX records_kind ON records (kind, key)")
            elif app_id != APPLICATION_ID:
                raise JournalError(f"{path} is not an aprompt run journal", path=str(path))
            else:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version != SCHEMA_VERSION:
                    raise JournalError(
                        f"{path} has journal schema {version}; this aprompt reads {SCHEMA_VERSION}",
                        path=str(path),
                    )
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot open run journal {path}: {exc}", path=str(path)) from None
        return cls(path, db)

    @property
    def path(self) -> Path:
        return self._path

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"run journal {self._path} is closed", path=str(self._path))
        return self._db

    def append(self, kind: str, payload: Any, key: str = "") -> None:
        """Durably append one record (one transaction)."""
        text = json.dumps(payload, ensure_ascii=False, default=_jsonable)  # key order matters (demos)
        try:
            self._conn().execute(
                "INSERT INTO records (kind, key, payload, created) VALUES (?, ?, ?, ?)",
                (kind, key, text, time.time()),
            )
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"cannot write to run journal {self._path}: {exc}", path=str(self._path)
            ) from None

    def records(self, kind: str, key: str | None = None) -> list[Any]:
        """Payloads of ``kind`` (and ``key``) in append order."""
        return [payload for _, payload in self.entries(kind, key)]

    def entries(self, kind: str, key: str | None = None) -> Iterator[tuple[str, Any]]:
        query = "SELECT key, payload FROM records WHERE kind = ?"
        args: tuple[str, ...] = (kind,)
        if key is not None:
            query += " AND key = ?"
            args = (kind, key)
        try:
            rows = self._conn().execute(query + " ORDER BY seq", args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot read run journal {self._path}: {exc}", path=str(self._path)) from None
        for row_key, text in rows:
            try:
                yield row_key, json.loads(text)
            except ValueError:
                raise JournalError(
                    f"run journal {self._path} holds an unreadable {kind} record", path=str(self._path)
                ) from None

    def latest(self, kind: str, key: str | None = None) -> Any | None:
        """The last payload of ``kind`` (and ``key``), or ``None``."""
        found = self.records(kind, key)
        return found[-1] if found else None

    def kinds(self) -> dict[str, int]:
        """Record counts by kind (for reports and ``aprompt show``)."""
        rows = self._conn().execute("SELECT kind, count(*) FROM records GROUP BY kind").fetchall()
        return {kind: count for kind, count in rows}

    def clear(self) -> None:
        """Forget every record (``optimize(..., resume=False)`` starts over)."""
        self._conn().execute("DELETE FROM records")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> RunJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunJournal({str(self._path)!r})"


def _jsonable(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)
