"""The cache an LM client consults: memory, then disk, then the endpoint, with single-flight."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import anyio
import attrs

from aprompt._errors import CacheError
from aprompt.lm.cache._memory import MemoryCache
from aprompt.lm.cache._sqlite import SQLiteCache
from aprompt.lm.types import Completion

CACHE_FILE_NAME = "lm-cache.sqlite3"

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """The directory :meth:`ResponseCache.in_directory` is usually given.

    ``$APROMPT_CACHE_DIR`` when set (``~`` expanded), else ``~/.cache/aprompt``.
    """
    configured = os.environ.get("APROMPT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "aprompt"


@attrs.frozen
class CacheStats:
    """What a :class:`ResponseCache` has answered since it was created.

    Attributes:
        memory_hits: calls answered from the in-memory LRU.
        disk_hits: calls answered from the SQLite file.
        coalesced: calls that awaited an identical call already computing (single-flight).
        misses: calls that ran ``compute`` (including those whose compute then failed).
    """

    memory_hits: int = 0
    disk_hits: int = 0
    coalesced: int = 0
    misses: int = 0

    @property
    def hits(self) -> int:
        """Calls answered without running ``compute``: the calls that returned ``hit=True``."""
        return self.memory_hits + self.disk_hits + self.coalesced

    @property
    def calls(self) -> int:
        return self.hits + self.misses


@attrs.define
class _Counts:
    memory_hits: int = 0
    disk_hits: int = 0
    coalesced: int = 0
    misses: int = 0


class _Flight:
    """One compute in progress; identical calls wait for it to finish and take its outcome."""

    __slots__ = ("_done", "error", "finished", "owner", "result")

    def __init__(self, owner: object) -> None:
        self.owner = owner  # whose compute this is: only its own calls share its error
        # The completion marked cached=True, as every coalesced caller receives it.
        self.result: Completion | None = None
        self.error: Exception | None = None
        self.finished = False
        # Made by the first waiter: most computes have none, and an event costs a backend lookup.
        self._done: anyio.Event | None = None

    async def wait(self) -> None:
        """Until :meth:`finish` (at once when it was called)."""
        if self.finished:
            return
        if self._done is None:
            self._done = anyio.Event()
        await self._done.wait()

    def finish(self) -> None:
        self.finished = True
        if self._done is not None:
            self._done.set()


class ResponseCache:
    """Answers chat requests from memory, then disk, then by computing; identical calls share one.

    :meth:`get_or_compute` looks a key up in the in-memory LRU, then in the SQLite file (promoting
    a disk hit to memory), and only then awaits ``compute``. Concurrent calls with a key that is
    being computed wait for that result instead of computing again (single-flight). Errors are
    never cached: if the compute raises, every waiting call of the same ``owner`` raises the same
    exception and nothing is stored; a waiting call of another owner (another client sharing the
    cache, on other endpoints, whose request may well succeed) computes instead, as does one of the
    waiting calls when the computing call is cancelled.

    With neither store (:meth:`disabled`), every call computes and nothing is coalesced.

    One ``ResponseCache`` serves one event loop at a time (asyncio or trio); the SQLite file
    behind it can be shared with other caches, threads and processes.

    Example:
        >>> async def main() -> None:  # doctest: +SKIP
        ...     with ResponseCache.in_directory(default_cache_dir()) as cache:
        ...         key = request_key(model="m", messages=messages, params={"temperature": 0})
        ...         completion, hit = await cache.get_or_compute(key, lambda: lm_call(messages))
    """

    def __init__(self, memory: MemoryCache | None, disk: SQLiteCache | None) -> None:
        self._memory = memory
        self._disk = disk
        self._enabled = memory is not None or disk is not None
        self._flights: dict[str, _Flight] = {}
        self._counts = _Counts()
        self._closed = False
        self._write_failed = False  # only the first failed disk write is a warning

    @classmethod
    def in_directory(
        cls,
        path: str | os.PathLike[str],
        *,
        max_entries: int = 10_000,
        busy_timeout: float = 30.0,
    ) -> ResponseCache:
        """A disk cache in ``path/lm-cache.sqlite3`` (the directory is created) behind an LRU.

        Raises:
            ConfigError: ``busy_timeout`` is not a number of seconds >= 0.
            CacheError: the directory cannot be made (a file in its place, a read-only path), or the
                file exists but is not a usable aprompt cache.
        """
        directory = Path(path).expanduser()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot make the LM cache directory {directory}: {exc.strerror or exc}; point the cache "
                "elsewhere",
                path=str(directory / CACHE_FILE_NAME),
            ) from None
        memory = MemoryCache(max_entries)
        return cls(memory, SQLiteCache(directory / CACHE_FILE_NAME, busy_timeout=busy_timeout))

    @classmethod
    def memory_only(cls, max_entries: int = 10_000) -> ResponseCache:
        """An in-process LRU only: nothing outlives the process."""
        return cls(MemoryCache(max_entries), None)

    @classmethod
    def disabled(cls) -> ResponseCache:
        """No cache: every call computes, and identical concurrent calls are not coalesced."""
        return cls(None, None)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def memory(self) -> MemoryCache | None:
        return self._memory

    @property
    def disk(self) -> SQLiteCache | None:
        return self._disk

    @property
    def stats(self) -> CacheStats:
        """Counters since creation (see :class:`CacheStats`)."""
        return CacheStats(**attrs.asdict(self._counts))

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[Completion]], *, owner: object = None
    ) -> tuple[Completion, bool]:
        """Return ``(completion, hit)`` for ``key``, awaiting ``compute()`` only on a miss.

        ``owner`` (an LM client passes itself) is who ``compute`` asks: a call waiting for another
        owner's identical call takes its completion, not its error.

        ``hit`` is True when the completion came from memory, disk or an identical call in
        flight; such completions have ``cached=True``. A computed completion is stored and
        returned with ``cached=False``.

        Raises:
            CacheError: the cache is closed. A file that cannot be read (a damaged page) is a miss,
                and a computed completion the file cannot store is returned all the same (both logged).
            Exception: whatever ``compute`` raised, in this call or in the identical call of the same
                owner it waited for.
        """
        if self._closed:
            path = self._disk.path if self._disk is not None else None
            raise CacheError("the LM cache is closed", path=path)
        if not self._enabled:
            self._counts.misses += 1
            return _fresh(await compute()), False
        while True:
            if self._memory is not None:
                found = self._memory.get(key)
                if found is not None:
                    self._counts.memory_hits += 1
                    return (found if found.cached else attrs.evolve(found, cached=True)), True
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, compute, owner)
            await flight.wait()
            if flight.result is not None:
                self._counts.coalesced += 1
                return flight.result, True
            if flight.error is not None and flight.owner is owner:
                raise flight.error
            # The computing call was cancelled before it had a result, or failed asking another owner's
            # endpoints: the first waiter to get here finds no flight and computes; the others wait for it.

    async def _lead(
        self, key: str, compute: Callable[[], Awaitable[Completion]], owner: object
    ) -> tuple[Completion, bool]:
        flight = _Flight(owner)
        self._flights[key] = flight
        try:
            if self._disk is not None:
                found = self._disk.get(key)
                if found is not None:
                    self._counts.disk_hits += 1
                    self._remember(key, found)
                    flight.result = found
                    return found, True
            self._counts.misses += 1
            fresh = _fresh(await compute())
            flight.result = attrs.evolve(fresh, cached=True)
            self._remember(key, flight.result)
            flight.finish()  # waiters need not wait for the disk write
            if self._disk is not None:
                # Shielded: a cancellation landing now would lose an answer already paid for, and a
                # resumed run would pay for it again.
                with anyio.CancelScope(shield=True):
                    await self._store(key, fresh)
            return fresh, False
        except Exception as exc:
            if flight.result is None:
                flight.error = exc
            raise
        finally:
            # Waiters wake with a result, an error, or neither (cancelled): then one takes over.
            del self._flights[key]
            flight.finish()

    async def _store(self, key: str, completion: Completion) -> None:
        """Write a computed completion to disk; a file that cannot take it (locked past the busy
        timeout, full, closed meanwhile) is logged, not raised: the answer is already paid for, and
        the memory LRU still holds it."""
        assert self._disk is not None
        try:
            await self._disk.put(key, completion)
        except CacheError as exc:
            first = not self._write_failed
            self._write_failed = True
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "%s; the answer is returned but not stored%s",
                exc,
                " (further write failures are logged at DEBUG)" if first else "",
            )

    def _remember(self, key: str, completion: Completion) -> None:
        if self._memory is not None:
            self._memory.put(key, completion)

    def clear(self) -> None:
        """Forget every entry, in memory and on disk (calls in flight still store theirs)."""
        if self._memory is not None:
            self._memory.clear()
        if self._disk is not None:
            self._disk.clear()

    def close(self) -> None:
        """Close the disk file; idempotent. Later calls raise :class:`CacheError`."""
        self._closed = True
        if self._disk is not None:
            self._disk.close()

    def __len__(self) -> int:
        """Entries stored: on disk if there is a disk (a table scan), else in memory."""
        if self._disk is not None:
            return len(self._disk)
        return len(self._memory) if self._memory is not None else 0

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache(memory={self._memory!r}, disk={self._disk!r})"


def _fresh(completion: Completion) -> Completion:
    return attrs.evolve(completion, cached=False) if completion.cached else completion
