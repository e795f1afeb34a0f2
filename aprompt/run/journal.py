"""The run journal: every durable fact of an optimization, appended as it happens, so a run resumes.

A journal is one SQLite file (``run_dir/journal.sqlite3``) with one append-only table. Each record is
written in its own transaction with ``synchronous=FULL``: after ``append`` returns the record survives a
crash or power loss, and a record torn by a crash mid-write is rolled back by SQLite on the next open — it
is never half there. Records are JSON payloads under a ``kind`` (``config``, ``demo_sets``,
``instructions``, ``trials``, ``full_eval``, ...) and an optional ``key``.

Every record carries a SHA-256 checksum of its kind, key and payload, checked on every read: a record
damaged on disk (or edited by hand) raises :class:`~aprompt.JournalError` naming it, never a changed score.
Journals of schema 1 (aprompt before checksums) are upgraded in place on open; their records, which have no
checksum, are refused when read (``resume=False`` clears them and starts over).

Example::

    with RunJournal.open("runs/qa") as journal:
        journal.append("trials", payload, key="0")
        journal.records("trials")
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aprompt._errors import JournalError
from aprompt.run.identity import stable_order

JOURNAL_FILE = "journal.sqlite3"
APPLICATION_ID = 0x4A524E4C  # "JRNL": tells our journal from any other SQLite file
SCHEMA_VERSION = 2  # 2: records carry a checksum
_START_OVER = "use resume=False to start over"


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
        path = folder / JOURNAL_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open run journal {path}: {exc}", path=str(path)) from None
        return cls._checked(db, path, _prepare_with_retries)

    @classmethod
    def open_read_only(cls, run_dir: str | os.PathLike[str]) -> RunJournal:
        """Open the existing journal of ``run_dir`` to read it, creating and changing nothing: a run on
        read-only media, or another user's, reads back (``append`` raises :class:`JournalError`).

        Raises:
            JournalError: there is no journal, or the file is not an aprompt journal this aprompt reads.
        """
        path = Path(run_dir) / JOURNAL_FILE
        try:
            db = _connect_read_only(path)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open run journal {path}: {exc}", path=str(path)) from None
        return cls._checked(db, path, _check_read_only)

    @classmethod
    def _checked(
        cls, db: sqlite3.Connection, path: Path, check: Callable[[sqlite3.Connection, Path], None]
    ) -> RunJournal:
        """The journal on ``db`` once ``check`` passed; else ``db`` closed and a :class:`JournalError`."""
        try:
            check(db, path)
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # a damaged file may also decode badly
            db.close()
            raise JournalError(f"cannot open run journal {path}: {exc}", path=str(path)) from None
        except BaseException:
            db.close()
            raise
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
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate (in an input, say): escaped, read back as it was
                text = json.dumps(payload, ensure_ascii=True, default=_jsonable)
        self._execute(
            "write to",
            "INSERT INTO records (kind, key, payload, created, checksum) VALUES (?, ?, ?, ?, ?)",
            (kind, key, text, time.time(), record_checksum(kind, key, text)),
        )

    def records(self, kind: str, key: str | None = None) -> list[Any]:
        """Payloads of ``kind`` (and ``key``) in append order."""
        return [payload for _, payload in self.entries(kind, key)]

    def entries(
        self, kind: str, key: str | None = None, *, unreadable: list[str] | None = None
    ) -> Iterator[tuple[str, Any]]:
        """``(key, payload)`` of ``kind`` (and ``key``) in append order, each checked against its checksum.

        Args:
            unreadable: given, a record that fails its check is left out and described here instead
                (a reader that shows what it can, never a run that resumes from it).

        Raises:
            JournalError: without ``unreadable``, a record is damaged (its checksum does not match),
                unreadable, or was written by an aprompt before checksums.
        """
        return self._read(kind, key, " ORDER BY seq", unreadable)

    def _read(
        self, kind: str, key: str | None, order: str, unreadable: list[str] | None
    ) -> Iterator[tuple[str, Any]]:
        """:meth:`entries` of the rows ``order`` (an ``ORDER BY`` clause, with a ``LIMIT``) selects."""
        query = "SELECT seq, key, payload, checksum FROM records WHERE kind = ?"
        args: tuple[str, ...] = (kind,)
        if key is not None:
            query += " AND key = ?"
            args = (kind, key)
        rows = self._execute("read", query + order, args)
        for seq, row_key, text, checksum in rows:
            problem, payload = _check_record(kind, row_key, text, checksum)
            if problem is None:
                yield row_key, payload
                continue
            where = f"{kind} record {row_key!r} (#{seq}) {problem}"
            if unreadable is None:
                raise JournalError(f"run journal {self._path}: {where}; {_START_OVER}", path=str(self._path))
            unreadable.append(where)

    def latest(self, kind: str, key: str | None = None, *, unreadable: list[str] | None = None) -> Any | None:
        """The last payload of ``kind`` (and ``key``), or ``None`` (also when, with ``unreadable``, it
        fails its check: see :meth:`entries`)."""
        # Only the last row is read: a kind appended on every call of a run (its per-example table, its
        # spending) would otherwise be read, parsed and held whole, every copy, by each resume.
        rows = self._read(kind, key, " ORDER BY seq DESC LIMIT 1", unreadable)
        return next((payload for _, payload in rows), None)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read inside one transaction: every read sees the journal as it stood at the first, whatever
        another process appends meanwhile (a run in progress: under WAL it is not held up)."""
        self._execute("read", "BEGIN")
        try:
            yield
        finally:
            if self._db is not None and self._db.in_transaction:
                self._execute("read", "ROLLBACK")  # it wrote nothing: ending it is all

    def last_kind(self) -> str | None:
        """The kind of the last record appended (``None``: the journal is empty). A call of a run that
        finished wrote its ``result`` last."""
        rows = self._execute("read", "SELECT kind FROM records ORDER BY seq DESC LIMIT 1")
        return str(rows[0][0]) if rows else None

    def kinds(self) -> dict[str, int]:
        """Record counts by kind (for reports and ``aprompt show``)."""
        rows = self._execute("read", "SELECT kind, count(*) FROM records GROUP BY kind")
        return {str(kind): int(count) for kind, count in rows}

    def clear(self) -> None:
        """Forget every record (``optimize(..., resume=False)`` starts over)."""
        self._execute("write to", "DELETE FROM records")

    def _execute(self, doing: str, query: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement; any SQLite failure (a damaged file included) is a JournalError."""
        try:
            return self._conn().execute(query, args).fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # damaged text decodes badly
            raise JournalError(
                f"cannot {doing} run journal {self._path}: {exc}", path=str(self._path)
            ) from None

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


def _check_record(kind: str, key: object, text: object, checksum: object) -> tuple[str | None, Any]:
    """``(None, payload)`` of a sound record, else ``(what is wrong with it, None)``."""
    if checksum is None:
        return "was written by an older aprompt, without a checksum", None
    if not isinstance(key, str) or not isinstance(text, str):
        return "is unreadable", None
    if checksum != record_checksum(kind, key, text):
        return "is damaged (its checksum does not match)", None
    try:
        return None, json.loads(text)
    except (TypeError, ValueError, RecursionError):  # not JSON, or nested too deep
        return "is unreadable", None


def _schema_error(path: Path, version: int) -> JournalError:
    """The error for a journal of another schema: a newer aprompt's run wants that aprompt."""
    if version > SCHEMA_VERSION:
        what = "a newer aprompt wrote it: upgrade aprompt to read or resume this run"
    else:
        what = "an aprompt this one cannot read wrote it: start a fresh run (resume=False, or --fresh)"
    return JournalError(
        f"{path} has journal schema {version}; this aprompt reads {SCHEMA_VERSION} ({what})", path=str(path)
    )


def _check_read_only(db: sqlite3.Connection, path: Path) -> None:
    """Check, changing nothing, that ``db`` is an aprompt journal of the schema this aprompt reads."""
    db.execute("PRAGMA busy_timeout = 30000")
    if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise JournalError(f"{path} is not an aprompt run journal", path=str(path))
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise _schema_error(path, version)


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the journal at ``path``, which must exist."""
    if not path.is_file():
        raise OSError(f"no such file: {path}")
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA application_id").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
        # A WAL reader needs the shared-memory file beside the journal, which read-only media cannot hold.
        # Without a -wal file every record is in the journal itself, and nothing can write it meanwhile:
        # it is read as it stands. With one, its records would be missed: the error stands.
        if Path(f"{path}-wal").exists():
            raise
    return sqlite3.connect(
        f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
    )


def _prepare_with_retries(db: sqlite3.Connection, path: Path, attempts: int = 6) -> None:
    """:func:`_prepare`, retried when another process holds the lock while switching to WAL (SQLite does
    not always wait on its busy timeout for a journal-mode change)."""
    for attempt in range(attempts):
        try:
            _prepare(db, path)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """Create the schema of a new journal, or check that an existing file is a journal we read."""
    db.execute("PRAGMA busy_timeout = 30000")
    if _is_blank(db):
        db.execute("PRAGMA journal_mode = WAL")  # not allowed inside a transaction
        # One transaction: a crash leaves all of the schema or none of it, never a journal without
        # its table; and of two processes creating the same journal, the second finds it made.
        with _immediate(db):
            if _is_blank(db):
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute(
                    "CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                    "key TEXT NOT NULL DEFAULT '', payload TEXT NOT NULL, created REAL NOT NULL, "
                    "checksum TEXT)"
                )
                db.execute("CREATE INDEX records_kind ON records (kind, key)")
    if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise JournalError(f"{path} is not an aprompt run journal", path=str(path))
    if db.execute("PRAGMA user_version").fetchone()[0] == 1:
        with _immediate(db):  # schema 1 lacks checksums: add the column; its records stay unchecked
            if db.execute("PRAGMA user_version").fetchone()[0] == 1:
                db.execute("ALTER TABLE records ADD COLUMN checksum TEXT")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise _schema_error(path, version)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken before reading (so two processes preparing a journal take turns)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


def record_checksum(kind: str, key: str, payload: str) -> str:
    """The SHA-256 a record is stored with: over its kind, key and JSON text."""
    return hashlib.sha256(json.dumps([kind, key, payload], ensure_ascii=False).encode()).hexdigest()


def _is_blank(db: sqlite3.Connection) -> bool:
    """A new (empty) SQLite file: no application id and no table."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    return app_id == 0 and not db.execute("SELECT 1 FROM sqlite_master WHERE type='table'").fetchall()


def journaled_text(value: Any) -> str:
    """``str(value)`` as ``value`` reads back from a journal (a tuple as a list, a set as a list in
    :func:`~aprompt.run.identity.stable_order`, an object by its ``to_dict``): text a prompt shows of a
    value (a demo's input) is the same in every process and after a resume reads it back."""
    if isinstance(value, str | int | float | type(None)):
        return str(value)
    return str(json.loads(json.dumps(value, ensure_ascii=False, default=_jsonable)))


def _jsonable(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(value, set | frozenset):  # as a prompt shows it, not in the hash seed's order
        return stable_order(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value)
