"""The response caches an optimization lends the LM clients it uses, in its own context.

An optimization gives each client that has no cache of its own one for the run (its ``run_dir``'s, or
one in memory). Set on the client, a cache would be one run's for every run that shares the client: two
optimizations at once on one client would write into the first's cache, and lose all caching when the
first ended and took it back. Lent through a context variable instead, each run's calls — made in its
tasks, which inherit its context — find its own cache, and another run's find theirs.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

from aprompt.lm.cache._response import ResponseCache

_LENT: contextvars.ContextVar[Mapping[int, ResponseCache]] = contextvars.ContextVar(
    "aprompt_run_caches", default=MappingProxyType({})
)


def lent_cache(client: object) -> ResponseCache | None:
    """The cache the run this call belongs to lent ``client``, or None."""
    return _LENT.get().get(id(client))


def cache_in_use(client: object) -> ResponseCache | None:
    """The cache ``client``'s calls in this context consult: its own (its ``cache`` attribute), else the
    one lent to it."""
    own = getattr(client, "cache", None)
    return own if isinstance(own, ResponseCache) else lent_cache(client)


@contextmanager
def lending(caches: Mapping[object, ResponseCache]) -> Iterator[None]:
    """Lend each client its cache (``{client: cache}``) for the calls made in this context and the tasks
    started in it, until the block ends."""
    token = _LENT.set(MappingProxyType({**_LENT.get(), **{id(c): cache for c, cache in caches.items()}}))
    try:
        yield
    finally:
        _LENT.reset(token)
