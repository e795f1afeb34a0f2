"""A run's storage in ``run_dir``: the journal (checked against the run's config) and the LM cache."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.lm.cache import ResponseCache
from aprompt.run.journal import RunJournal

CACHE_DIR = "cache"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_fingerprint(
    strategy: str,
    budget: Any,
    seed: int,
    grounding: Any,
    bootstrap_threshold: float,
    predictors: Sequence[tuple[str, Any]],
    trainset: Sequence[Any],
    valset: Sequence[Any],
) -> dict[str, Any]:
    """What makes two runs the same run: a resumed run must match it exactly."""
    return {
        "strategy": strategy,
        "seed": seed,
        "budget": attrs.asdict(budget),
        "grounding": attrs.asdict(grounding),
        "bootstrap_threshold": bootstrap_threshold,
        "program": {name: _digest(p.get_state()) for name, p in predictors},
        "trainset": _digest([e.id for e in trainset]),
        "valset": _digest([e.id for e in valset]),
    }


def check_fingerprint(journal: RunJournal, fingerprint: Mapping[str, Any], resume: bool) -> None:
    """Record the config of a new run, or refuse to resume a different one."""
    stored = journal.latest("config")
    if stored is not None and not resume:
        journal.clear()
        stored = None
    if stored is None:
        journal.append("config", dict(fingerprint))
        return
    if stored != dict(fingerprint):
        differs = sorted(k for k in {*stored, *fingerprint} if stored.get(k) != fingerprint.get(k))
        raise ConfigError(
            f"run_dir {journal.path.parent} holds a run with a different config (differs in: "
            f"{', '.join(differs)}); use another run_dir, or resume=False to start over"
        )


@asynccontextmanager
async def run_storage(
    run_dir: str | os.PathLike[str] | None,
    resume: bool,
    fingerprint: Mapping[str, Any],
    lms: Sequence[Any],
) -> AsyncIterator[RunJournal | None]:
    """Open the journal of ``run_dir`` and attach its response cache to LMs that have none.

    The cache is detached and both are closed when the run ends, whatever way it ends.
    """
    if run_dir is None:
        yield None
        return
    journal = RunJournal.open(run_dir)
    attached: list[Any] = []
    cache: ResponseCache | None = None
    try:
        check_fingerprint(journal, fingerprint, resume)
        for lm in {id(lm): lm for lm in lms if lm is not None}.values():
            if hasattr(type(lm), "cache") and getattr(lm, "cache", False) is None:
                if cache is None:
                    cache = ResponseCache.in_directory(Path(run_dir) / CACHE_DIR)
                lm.cache = cache
                attached.append(lm)
        yield journal
    finally:
        for lm in attached:
            lm.cache = None
        if cache is not None:
            cache.close()
        journal.close()
