"""A completion store in one SQLite file, shared safely by tasks, threads and processes.

Threading: reads run inline on the event loop, writes run in a worker thread.

- A read is one primary-key lookup in WAL mode, where readers never wait for writers (their own
  or another process's): tens of microseconds, less than a hop to a worker thread and back. Warm
  caches are read-heavy, so the hot path stays on the loop and needs no thread-pool token.
- A write only follows an LM call (milliseconds to minutes), so the thread hop is noise next to
  it, and the thread absorbs what can stall a write: waiting up to ``busy_timeout`` for another
  process's write lock, and the fsync of an automatic WAL checkpoint.

Each direction owns one connection guarded by its own lock (sqlite3 connections must not be
shared across threads unguarded), so a read never queues behind a write stuck on the file lock.

Every entry carries a SHA-256 checksum over its key and completion. An entry that fails it — damaged on
disk, edited by hand, or written by an aprompt before checksums — is a miss, logged at WARNING, and is
replaced by the next answer computed for its key: a cache only saves calls, so asking the endpoint again
is always correct, where raising would stop a run over a file the user need not care about. So is a
lookup SQLite cannot finish (a damaged page of the file): logged at WARNING the first time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from types import TracebackType
from typing import Any, TypeVar

import anyio.to_thread

from aprompt._errors import CacheError, ConfigError
from aprompt.lm.types import Completion, TokenUsage

# Written into the file header, so a foreign SQLite database is told apart from ours.
_APPLICATION_ID = 0x61707263  # "aprc"
SCHEMA_VERSION = 1

_T = TypeVar("_T")

# SQLite takes its busy timeout in milliseconds as a C int: a longer one (inf included) would overflow into
# "never wait", as NaN and negative values are.
_MAX_BUSY_TIMEOUT = (2**31 - 1) / 1000

logger = logging.getLogger(__name__)

# A rowid table: its leaves hold a row of up to ~4 KB in place, where a WITHOUT ROWID table (an index)
# spills any row over ~1 KB into an overflow page of its own, 4.7 KB on disk for a 1 KB reply. Files made
# as WITHOUT ROWID read and write the same.
_CREATE = (
    "CREATE TABLE completions (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL, created REAL NOT NULL)"
)
_SELECT = "SELECT value FROM completions WHERE key = ?"
# First writer wins: two processes that computed the same key keep one stable answer on disk.
_INSERT = "INSERT INTO completions (key, value, created) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING"
# A rejected entry is replaced only while it is still the one rejected (another process may have
# replaced it first: then its answer stands).
_REPLACE = "UPDATE completions SET value = ?, created = ? WHERE key = ? AND value = ?"


class SQLiteCache:
    """Completions in one SQLite file (WAL mode), keyed by :func:`request_key`.

    Rows hold only the key, the completion (text, token usage, model, finish reason) and its checksum as
    JSON, and a creation timestamp: never the prompt, the parameters or any credential. An entry that
    fails its checksum is a miss (see the module docstring). The schema is
    versioned in the file header (``PRAGMA application_id`` and ``user_version``).

    Any number of tasks (asyncio or trio), threads and processes may share the file at once; a
    process that finds the file locked waits up to ``busy_timeout`` seconds. Keep the file on a
    local disk: WAL needs shared memory, which network file systems do not provide.

    Raises:
        ConfigError: ``busy_timeout`` is not a number of seconds >= 0 (``math.inf``: as long as SQLite can).
        CacheError: the file is not a SQLite database, is another program's database, was
            written by a newer aprompt, or cannot be opened.

    Example:
        >>> with SQLiteCache(tmp_path / "lm-cache.sqlite3") as disk:  # doctest: +SKIP
        ...     disk.get("0" * 64) is None
        True
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        number = isinstance(busy_timeout, int | float) and not isinstance(busy_timeout, bool)
        if not number or not busy_timeout >= 0:
            raise ConfigError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        busy_timeout = min(busy_timeout, _MAX_BUSY_TIMEOUT)
        self._path = os.fspath(path)
        self._writer = _connect(self._path, busy_timeout, prepare=True)
        try:
            self._reader = _connect(self._path, busy_timeout, prepare=False)
            self._reader.execute("PRAGMA query_only = ON")
        except BaseException:
            self._writer.close()
            raise
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        # key -> the stored value rejected as damaged or unchecksummed, replaced by the next put.
        self._rejected: dict[str, str] = {}
        self._warned_old = False
        self._warned_unreadable = False  # only the first failed read is a warning

    @property
    def path(self) -> str:
        return self._path

    def get(self, key: str) -> Completion | None:
        """Return the completion stored under ``key``, marked ``cached=True``, or ``None``.

        ``None`` also for an entry that fails its checksum (logged at WARNING); the next :meth:`put`
        of ``key`` replaces it. ``None`` too when the file cannot be read there (a damaged page): logged,
        the first time at WARNING. Runs inline: one indexed read that never waits for writers.

        Raises:
            CacheError: the cache is closed.
        """
        with self._read_lock:
            self._check_open()
            try:
                row = self._reader.execute(_SELECT, (key,)).fetchone()
            except sqlite3.Error as exc:
                # A damaged page of the file (a bad disk, a torn copy) fails the lookups that cross it:
                # those entries are lost like a damaged entry, a miss, not a stopped or misscored run.
                self._note_unreadable(exc)
                return None
            if row is None:
                return None
            try:
                return _decode(row[0], key)
            except _Unchecked:
                if not self._warned_old:
                    self._warned_old = True
                    logger.warning(
                        "LM cache %s holds entries written by an older aprompt, without a checksum: "
                        "they are treated as misses and replaced",
                        self._path,
                    )
            except _Damaged as exc:
                logger.warning(
                    "LM cache %s: entry %s is damaged (%s); treated as a miss and replaced",
                    self._path,
                    key,
                    exc,
                )
            self._rejected[key] = row[0]
            return None

    def _note_unreadable(self, exc: sqlite3.Error) -> None:
        first = not self._warned_unreadable
        self._warned_unreadable = True
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "LM cache %s cannot be read (%s); the call is made again%s",
            self._path,
            exc,
            "; if it persists, delete the file (it holds only cached LM replies; further read failures are "
            "logged at DEBUG)"
            if first
            else "",
        )

    async def put(self, key: str, completion: Completion) -> None:
        """Store ``completion`` under ``key`` in a worker thread; a key already stored is kept.

        The ``cached`` flag is not stored: what :meth:`get` returns is always ``cached=True``.
        """
        value = _encode(key, completion)
        await anyio.to_thread.run_sync(self._write, key, value)

    def clear(self) -> None:
        """Delete every entry (blocking; entries other processes write afterwards remain)."""
        with self._write_lock:
            self._check_open()
            try:
                self._writer.execute("DELETE FROM completions")
            except sqlite3.Error as exc:
                raise CacheError(f"cannot clear the LM cache: {exc}", path=self._path) from exc

    def close(self) -> None:
        """Close the connections; idempotent. Later reads and writes raise :class:`CacheError`."""
        with self._write_lock, self._read_lock:
            if not self._closed:
                self._closed = True
                self._reader.close()
                self._writer.close()

    def __len__(self) -> int:
        """Number of entries in the file (a table scan: fine for reports, not for hot loops)."""
        with self._read_lock:
            self._check_open()
            try:
                (count,) = self._reader.execute("SELECT count(*) FROM completions").fetchone()
            except sqlite3.Error as exc:
                raise CacheError(f"cannot read the LM cache: {exc}", path=self._path) from exc
        return int(count)

    def __enter__(self) -> SQLiteCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteCache({self._path!r})"

    def _write(self, key: str, value: str) -> None:
        with self._read_lock:
            rejected = self._rejected.pop(key, None)
        with self._write_lock:
            self._check_open()
            try:
                if rejected is not None:
                    self._writer.execute(_REPLACE, (value, time.time(), key, rejected))
                self._writer.execute(_INSERT, (key, value, time.time()))
            except sqlite3.Error as exc:
                raise CacheError(f"cannot write to the LM cache: {exc}", path=self._path) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError("the LM cache is closed", path=self._path)


def _connect(path: str, busy_timeout: float, *, prepare: bool) -> sqlite3.Connection:
    """Open one autocommit connection; with ``prepare``, validate (or create) the schema first."""
    try:
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise CacheError(_unopenable(path, exc) or f"cannot open the LM cache: {exc}", path=path) from exc
    try:
        if prepare:
            _prepare(conn, path)
        conn.execute("PRAGMA synchronous = NORMAL")  # safe in WAL: a crash loses no committed row
    except CacheError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise CacheError(
            _unopenable(path, exc)
            or f"not a usable aprompt LM cache ({exc}); it holds only cached LM replies, so deleting the "
            "file is safe (those calls are then paid again)",
            path=path,
        ) from exc
    return conn


def _unopenable(path: str, exc: sqlite3.Error) -> str | None:
    """What keeps SQLite from opening ``path`` other than the file's content, and what to do; None when
    nothing around the file explains ``exc`` (then the file itself is at fault, and may be deleted)."""
    folder = os.path.dirname(os.path.abspath(path))
    fix = "fix the permissions or point the cache elsewhere"
    if _is_busy(exc):
        # A sound file another connection holds: it must not be called damaged, nor safe to delete.
        problem = "another process holds the file locked for longer than the busy timeout"
        fix = "wait for it to finish or pass a longer busy_timeout; keep the file (it holds answers paid for)"
    elif os.path.isdir(path):
        problem, fix = "the path is a directory, not a file", "point the cache elsewhere"
    elif not os.path.isdir(folder):
        problem, fix = f"its folder {folder} does not exist", "create it or point the cache elsewhere"
    elif os.path.exists(path) and not os.access(path, os.R_OK):
        problem = "this user may not read the file"
    elif not os.access(folder, os.W_OK | os.X_OK):
        # WAL keeps its -wal and -shm files beside the database: even a reader must create them.
        problem = (
            f"this user may not write its folder {folder}, where SQLite must create the cache's -wal and "
            "-shm files (even to read it)"
        )
    else:
        return None
    return f"cannot open the LM cache ({exc}): {problem}; {fix}"


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (another connection's lock), not the file's fault."""
    # The primary code: an extended one (SQLITE_BUSY_RECOVERY, ...) carries it in its low byte.
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _prepare(conn: sqlite3.Connection, path: str) -> None:
    """Check that the file is ours at a version we read, creating the schema in an empty file."""
    # The first read of the header is what fails on a file that is not a SQLite database at all.
    if _pragma(conn, "application_id") == 0:
        _create_schema_if_empty(conn, path)
    if _pragma(conn, "application_id") != _APPLICATION_ID:
        raise CacheError(
            "the file is a SQLite database of another program, not an aprompt LM cache; "
            "point the cache elsewhere",
            path=path,
        )
    version = _pragma(conn, "user_version")
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"the LM cache has schema version {version}, this aprompt reads version "
            f"{SCHEMA_VERSION}; use a matching aprompt or another cache directory",
            path=path,
        )
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise CacheError(f"cannot put the LM cache in WAL mode (got {mode!r})", path=path)


def _create_schema_if_empty(conn: sqlite3.Connection, path: str) -> None:
    # IMMEDIATE takes the write lock first, so two processes creating one file take turns.
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _pragma(conn, "application_id") == 0:
            (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if tables:
                raise CacheError(
                    "the file is a SQLite database of another program, not an aprompt LM cache; "
                    "point the cache elsewhere",
                    path=path,
                )
            conn.execute(_CREATE)
            conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _pragma(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


class _Damaged(Exception):
    """A stored entry that fails its checksum or does not decode."""


class _Unchecked(_Damaged):
    """A stored entry without a checksum (written by an aprompt before checksums)."""


def _fields(completion: Completion) -> dict[str, Any]:
    return {
        "text": completion.text,
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "model": completion.model,
        "finish_reason": completion.finish_reason,
    }


def _checksum(key: str, fields: dict[str, Any]) -> str:
    """SHA-256 over the key and the fields: an entry moved under another key fails it too."""
    text = json.dumps([key, fields], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # "surrogatepass": a lone surrogate (see _encode) is hashed as itself; other text's bytes are unchanged.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _encode(key: str, completion: Completion) -> str:
    fields = _fields(completion)
    entry = {**fields, "checksum": _checksum(key, fields)}
    value = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON lets a server send one, in its model's name) has no UTF-8 form for SQLite to
        # store; JSON's escapes keep it, and it reads back as it was.
        value = json.dumps(entry, separators=(",", ":"))
    return value


def _decode(value: str, key: str) -> Completion:
    """The completion of a stored entry; raises :class:`_Damaged` (or :class:`_Unchecked`)."""
    try:
        data = json.loads(value)
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        if "checksum" not in data:
            raise _Unchecked("no checksum")
        checksum = data.pop("checksum")
        finish_reason = data["finish_reason"]
        completion = Completion(
            text=_typed(data["text"], str),
            usage=TokenUsage(_typed(data["prompt_tokens"], int), _typed(data["completion_tokens"], int)),
            model=_typed(data["model"], str),
            finish_reason=None if finish_reason is None else _typed(finish_reason, str),
            cached=True,
        )
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise _Damaged(f"malformed: {exc!r}") from None
    if checksum != _checksum(key, data):
        raise _Damaged("its checksum does not match")
    return completion


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value
