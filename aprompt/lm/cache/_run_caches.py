"""The response caches an optimization lends the LM clients it uses, in its own context.

An optimization gives each client that has no cache of its own one for the run (its ``run_dir``'s, or
one in memory). Set on the client, a cache would be one run's for every run that shares the client: two
optimizations at once on one client would write into the first's cache, and lose all caching when the
first ended and took it back. Lent through a context variable instead, each run's calls — made in its
tasks, which inherit its context — find its own cache, and another run's find theirs.

A client the run was never given (a metric's judge) gets the run's cache for replay only
(:func:`replay_key`): inside a step, the n-th identical request of that step is keyed apart from every
other, so the run still asks the judge each time it asks, as without a cache, and a step run again after a
stop (a resumed run) takes the answers the stopped run paid for instead of paying for them again.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType

from aprompt.lm.cache._response import ResponseCache

_LENT: contextvars.ContextVar[Mapping[int, ResponseCache]] = contextvars.ContextVar(
    "aprompt_run_caches", default=MappingProxyType({})
)


# The run's cache for the clients it was not given, and the step a call belongs to with the requests
# it has keyed so far (see replay_key()).
_REPLAY_CACHE: contextvars.ContextVar[Callable[[], ResponseCache] | None] = contextvars.ContextVar(
    "aprompt_replay_cache", default=None
)
_STEP: contextvars.ContextVar[tuple[str, Counter[str]] | None] = contextvars.ContextVar(
    "aprompt_replay_step", default=None
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
def lending(
    caches: Mapping[object, ResponseCache], *, replay: Callable[[], ResponseCache] | None = None
) -> Iterator[None]:
    """Lend each client its cache (``{client: cache}``) for the calls made in this context and the tasks
    started in it, until the block ends; ``replay()`` is the cache the other clients replay a step's
    answers from (see :func:`replay_key`), made when first needed."""
    token = _LENT.set(MappingProxyType({**_LENT.get(), **{id(c): cache for c, cache in caches.items()}}))
    replay_token = _REPLAY_CACHE.set(replay) if replay is not None else None
    try:
        yield
    finally:
        if replay_token is not None:
            _REPLAY_CACHE.reset(replay_token)
        _LENT.reset(token)


@contextmanager
def replay_step(step: str) -> Iterator[None]:
    """Key the requests of clients the run was not given, made in this block, as requests of ``step``
    (an identity the same step has again in a resumed run)."""
    token = _STEP.set((step, Counter()))
    try:
        yield
    finally:
        _STEP.reset(token)


def replaying() -> bool:
    """Whether a call made here by a client the run was not given is keyed for replay (in a step of a
    run, see :func:`replay_key`)."""
    return _REPLAY_CACHE.get() is not None and _STEP.get() is not None


def replay_key(key: str, endpoints: Sequence[str]) -> tuple[ResponseCache, str]:
    """For a client the run was not given, while :func:`replaying`: the run's cache and the key of this
    request (``key``, sent to ``endpoints``) as the n-th identical request of its step.

    The n-th is keyed apart from the others: each is sent once, as without a cache (a judge that samples
    answers each time anew), and only a step run again replays them. The endpoints are part of the key:
    a judge on another server never replays another's answers."""
    replay, step = _REPLAY_CACHE.get(), _STEP.get()
    assert replay is not None and step is not None, "replay_key() outside a step of a run"
    name, seen = step
    seen[key] += 1
    where = hashlib.sha256(json.dumps(list(endpoints)).encode()).hexdigest()
    replayed = json.dumps(["aprompt-replay/1", name, key, seen[key], where])
    return replay(), hashlib.sha256(replayed.encode("utf-8", "surrogatepass")).hexdigest()
