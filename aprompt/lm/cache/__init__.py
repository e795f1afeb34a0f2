"""The LM response cache: keys, an in-memory LRU, a SQLite file, and the single-flight front.

An LM client builds a key with :func:`request_key` and asks :class:`ResponseCache` for it::

    key = request_key(model=model, messages=messages, params=params, rollout=rollout)
    completion, hit = await cache.get_or_compute(key, send_request)
"""

from aprompt.lm.cache._key import request_key
from aprompt.lm.cache._memory import MemoryCache
from aprompt.lm.cache._response import (
    CACHE_FILE_NAME,
    CacheStats,
    ResponseCache,
    default_cache_dir,
)
from aprompt.lm.cache._sqlite import SCHEMA_VERSION, SQLiteCache

__all__ = [
    "CACHE_FILE_NAME",
    "SCHEMA_VERSION",
    "CacheStats",
    "MemoryCache",
    "ResponseCache",
    "SQLiteCache",
    "default_cache_dir",
    "request_key",
]
