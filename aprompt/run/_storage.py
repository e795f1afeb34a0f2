"""A run's storage in ``run_dir``: its lock, the journal (checked against the run's identity, see
:mod:`aprompt.run.identity`) and the LM cache; without ``run_dir``, an LM cache in memory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aprompt._errors import ConfigError, JournalError
from aprompt.lm.cache import ResponseCache
from aprompt.lm.cache._run_caches import lending
from aprompt.run.identity import JOURNAL_FORMAT_KEY, VERSION_KEY, differences
from aprompt.run.identity import run_fingerprint as run_fingerprint
from aprompt.run.journal import RunJournal
from aprompt.run.lock import RunDirLock

CACHE_DIR = "cache"
#: Answers the in-memory cache of a run without ``run_dir`` keeps (least recently used dropped first):
#: enough for every request of a large run, at about a kilobyte each.
MEMORY_CACHE_ENTRIES = 200_000


def check_fingerprint(journal: RunJournal, fingerprint: Mapping[str, Any], resume: bool) -> bool:
    """Record the identity of a new run, or refuse to resume a different one.

    Returns:
        Whether the run starts over (``resume=False``) on other endpoints than the run it clears: the
        answers in the run_dir's cache came from those endpoints and must not stand in for the new
        ones' (the cache's keys hold the model and the request, not the endpoint).

    Raises:
        ConfigError: the journal holds a run whose identity differs (the message names the keys),
            or one written by an older aprompt that did not record it.
    """
    other_endpoints = False
    if not resume:
        try:
            cleared = journal.latest("config")
        except JournalError:  # damaged: what it was run on is unknown, the cache is kept
            cleared = None
        if isinstance(cleared, Mapping):
            other_endpoints = _other_endpoints(cleared, fingerprint)
        journal.clear()
    stored = journal.latest("config")
    if stored is None:
        journal.append("config", dict(fingerprint))
        return other_endpoints
    if not isinstance(stored, Mapping) or stored.get(VERSION_KEY) != fingerprint.get(VERSION_KEY):
        raise ConfigError(
            f"run_dir {journal.path.parent} holds a run journaled by another aprompt version, which did "
            "not record all that decides a run's result (examples' content, LMs, metric); "
            "use another run_dir, or resume=False to start over"
        )
    _check_journal_format(journal, stored, fingerprint)
    # The format is checked above (a journal written before it was recorded has none, and is format 1).
    differs = differences(
        {k: v for k, v in stored.items() if k != JOURNAL_FORMAT_KEY},
        {k: v for k, v in fingerprint.items() if k != JOURNAL_FORMAT_KEY},
    )
    if differs:
        raise ConfigError(
            f"run_dir {journal.path.parent} holds a run with a different config (differs in: "
            f"{'; '.join(differs)}); use another run_dir, or resume=False to start over"
            f"{_parallel_trials_hint(stored, fingerprint)}"
        )
    return False


def _check_journal_format(journal: RunJournal, stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse a journal its strategy wrote in another format than this aprompt's: its records would
    replay as another run's (a resume fails on them, or mixes them in), though the inputs are the same."""
    strategy = current.get("strategy")
    if stored.get("strategy") != strategy:
        return  # another strategy: a different run, told as such
    was, now = stored.get(JOURNAL_FORMAT_KEY, 1), current.get(JOURNAL_FORMAT_KEY, 1)
    if was != now:
        age = "an older" if isinstance(was, int) and isinstance(now, int) and was < now else "another"
        raise ConfigError(
            f"run_dir {journal.path.parent} holds a {strategy} run journaled in format {was} (by {age} "
            f"aprompt), this aprompt journals {strategy} in format {now} and cannot resume it; use "
            f"another run_dir, resume=False to start over in this one, or the aprompt that wrote it to "
            "resume it"
        )


def _parallel_trials_hint(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """What a changed ``parallel_trials`` means, which a budget that does not set it (a preset) takes from
    the LM's capacity: the user changed the LM, not the budget; empty when it is unchanged."""

    def window(fingerprint: Mapping[str, Any]) -> object:
        budget = fingerprint.get("budget")
        return budget.get("parallel_trials") if isinstance(budget, Mapping) else None

    was, now = window(stored), window(current)
    if was == now:
        return ""
    return (
        f"; the run kept {was} trials in flight, this call {now}: unless the budget sets parallel_trials, "
        "they follow the LM's capacity (its max_concurrency, or its configured requests_per_minute and "
        f"tokens_per_minute), so to resume give the LM the capacity of the journaled run, or set "
        f"parallel_trials={was} in the budget (e.g. {{'preset': 'light', 'parallel_trials': {was}}})"
    )


def _other_endpoints(cleared: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether an LM role of ``current`` sends its requests elsewhere than in ``cleared``: a role of
    both on other endpoints, or any endpoint ``cleared`` never used (a role added or moved)."""
    before = {key: value for key, value in cleared.items() if key.endswith("(endpoints)")}
    after = {key: value for key, value in current.items() if key.endswith("(endpoints)")}

    def urls(found: Mapping[str, Any]) -> set[str]:
        return {str(url) for value in found.values() if isinstance(value, list) for url in value}

    moved = any(key in before and before[key] != value for key, value in after.items())
    return moved or not urls(after) <= urls(before)


@asynccontextmanager
async def run_storage(
    run_dir: str | os.PathLike[str] | None,
    resume: bool,
    fingerprint: Mapping[str, Any],
    lms: Sequence[Any],
) -> AsyncIterator[RunJournal | None]:
    """Lock ``run_dir``, open its journal and attach its response cache to LMs that have none.

    Without ``run_dir``, LMs that have no cache get one in memory for the run, so that the run sends no
    identical request twice (identical requests in flight at once share one answer too) and the
    journal is None. With ``run_dir``, its cache also keeps the answers of the clients the run was not
    given (a metric's judge) for a resumed run to replay (:func:`~aprompt.lm.cache._run_caches.replay_key`);
    without one nothing runs a step again, and the memory is left to the run's own answers. The cache is
    detached, both are closed and the lock released when the run ends, whatever way it ends.

    Raises:
        RunDirLockedError: another optimization holds ``run_dir``.
        ConfigError: the journal holds a different run (see :func:`check_fingerprint`).
    """
    if run_dir is None:
        memory = ResponseCache.memory_only(MEMORY_CACHE_ENTRIES)
        given, lent = _attach(lms, lambda: memory)
        try:
            with lending(lent):
                yield None
        finally:
            for lm in given:
                lm.cache = None
            memory.close()
        return
    with RunDirLock.acquire(run_dir):
        journal = RunJournal.open(run_dir)
        attached: list[Any] = []
        cache: ResponseCache | None = None

        def disk_cache() -> ResponseCache:
            nonlocal cache
            if cache is None:
                cache = ResponseCache.in_directory(Path(run_dir) / CACHE_DIR)
            return cache

        try:
            if check_fingerprint(journal, fingerprint, resume):
                disk_cache().clear()
            attached, lent = _attach(lms, disk_cache)
            with lending(lent, replay=disk_cache):
                yield journal
        finally:
            for lm in attached:
                lm.cache = None
            if cache is not None:
                cache.close()
            journal.close()


def _attach(
    lms: Sequence[Any], cache: Callable[[], ResponseCache]
) -> tuple[list[Any], dict[object, ResponseCache]]:
    """Give ``cache()`` to each LM (once each) that has an assignable ``cache`` set to None: lent through
    the run's context to aprompt's clients (:mod:`aprompt.lm.cache._run_caches`: runs sharing a client
    keep their own), set on any other. Returns the LMs it was set on, and the loans."""
    attached: list[Any] = []
    lent: dict[object, ResponseCache] = {}
    for lm in {id(lm): lm for lm in lms if lm is not None}.values():
        if hasattr(type(lm), "cache") and getattr(lm, "cache", False) is None:
            if getattr(type(lm), "takes_lent_cache", False):
                lent[lm] = cache()
            else:
                lm.cache = cache()
                attached.append(lm)
    return attached, lent
