"""An in-process LRU of completions."""

from __future__ import annotations

from collections import OrderedDict

from aprompt._errors import ConfigError
from aprompt.lm.types import Completion


class MemoryCache:
    """A least-recently-used map from cache key to :class:`Completion`, O(1) per operation.

    Holds at most ``max_entries`` completions; storing one more evicts the entry read or written
    longest ago. Not thread-safe: use it from one event loop (every method is synchronous, so
    tasks of that loop never interleave inside one).

    Example:
        >>> cache = MemoryCache(max_entries=2)
        >>> cache.put("a", Completion("A")); cache.put("b", Completion("B"))
        >>> _ = cache.get("a"); cache.put("c", Completion("C"))
        >>> "b" in cache
        False
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"max_entries must be an integer of at least 1, got {max_entries!r}")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, Completion] = OrderedDict()

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def get(self, key: str) -> Completion | None:
        """Return the completion under ``key`` (marking it most recently used), or ``None``."""
        completion = self._entries.get(key)
        if completion is not None:
            self._entries.move_to_end(key)
        return completion

    def put(self, key: str, completion: Completion) -> None:
        """Store ``completion`` under ``key``, evicting the least recently used entry if full."""
        self._entries[key] = completion
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Remove every entry."""
        self._entries.clear()

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored; unlike :meth:`get`, does not touch its recency."""
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"MemoryCache(entries={len(self._entries)}, max_entries={self._max_entries})"
