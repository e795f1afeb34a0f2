"""A run's identity: everything that decides its result, as plain JSON a resumed run must match.

:func:`run_fingerprint` describes a run by human-readable keys (``"trainset content"``,
``"lm (model)"``, ``"metric"``, ...) whose values are short digests or plain settings. Every value is a
pure function of the run's inputs: no ``id()``, no memory address, no set order, so the same call in a
new process gives the same fingerprint. API keys and request headers are never part of it.
The digests of values, callables and programs come from :mod:`aprompt.run._value_identity`, whose
names this module exports too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from aprompt.run._metric_judges import is_predictor, metric_judges
from aprompt.run._value_identity import (
    callable_identity,
    digest,
    note_program_run,
    plain_settings,
    program_identity,
    program_settings,
    qualified_name,
    stable_form,
    stable_order,
)

__all__ = [
    "IDENTITY_VERSION",
    "JOURNAL_FORMAT_KEY",
    "VERSION_KEY",
    "callable_identity",
    "differences",
    "digest",
    "judge_identity",
    "lm_identity",
    "note_program_run",
    "plain_settings",
    "predictor_identity",
    "program_identity",
    "program_settings",
    "run_fingerprint",
    "stable_form",
    "stable_order",
]

#: Bumped when what the fingerprint covers changes: a journal of another version is refused.
#: 3: the program's code, and the plain values a metric closes over or reads as globals.
#: 4: the functions a metric reads as globals, a predictor's parse retries, and values without a JSON
#: form by their content (an array's bytes, an object's attributes) rather than their text.
#: 5: the plain values a program object holds (``self.k = 3``), and the class of a method run as the
#: program (its ``forward``, or a bound method).
#: 6: an attrs class's or a dataclass's value by its class too, not its fields alone, and a set as one,
#: not as a list of its items' texts; a metric as a program's code is (a bound method's class, a
#: callable object's ``__call__``), and a function a partial binds by its identity.
#: The metric's judges (``metric judge``) need no bump: the key is None for a metric that asks none, so a
#: journal of such a run, which lacks it, still matches.
IDENTITY_VERSION = 6
VERSION_KEY = "identity"
#: The strategy's journal format (``Strategy.journal_format``); a journal without it was written in 1.
JOURNAL_FORMAT_KEY = "journal format"


def _endpoint_identity(url: str) -> str:
    """The URL without credentials, its query as a digest (it may hold a key), and without the port of
    a loopback host: a local server (``LocalLM``, llama.cpp) takes a free port each time it starts, and a
    resumed run must still find itself."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None and not loopback:
        netloc += f":{parts.port}"
    query = f"sha256={digest(parts.query)}" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _default_params(lm: Any) -> Any:
    params = getattr(lm, "default_params", None)
    if params is None:
        # aprompt's HTTP clients keep them privately; a foreign LM without either has none to tell.
        params = getattr(lm, "_default_params", None)
    return dict(params) if isinstance(params, Mapping) else params


def lm_identity(role: str, lm: Any) -> dict[str, Any]:
    """The keys telling ``lm`` in ``role`` apart: its type, model, endpoint URLs (when it has
    ``endpoints``), a digest of its default sampling parameters (when it has them) and the server
    settings that change its replies (when it states some: ``server_settings``). Works for any
    object with the :class:`~aprompt.lm.types.LM` protocol; never reads a key or a header."""
    if lm is None:
        return {role: None}
    endpoints = getattr(lm, "endpoints", None)
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    params = _default_params(lm)
    found = {
        f"{role} (type)": qualified_name(type(lm)),
        f"{role} (model)": str(getattr(lm, "model", "")),
        f"{role} (endpoints)": (
            sorted({_endpoint_identity(str(url)) for url in endpoints}) if endpoints is not None else None
        ),
        f"{role} (default params)": None if params is None else digest(params),
    }
    # Only where a server's settings change its replies (a local server's slot context): a key absent
    # from a journal reads as None, so the journals of every other LM still resume.
    settings = getattr(lm, "server_settings", None)
    if isinstance(settings, str):
        found[f"{role} (server settings)"] = settings
    return found


def predictor_identity(predictor: Any) -> dict[str, Any]:
    """A predictor's kind, full signature (fields, types, descriptions, labels), prompt state and
    sampling parameters."""
    signature = getattr(predictor, "signature", None)
    fields = getattr(signature, "fields", ())
    return {
        "type": qualified_name(type(predictor)),
        "instruction": getattr(signature, "instruction", None),
        "fields": [
            [f.name, str(f.annotation), f.description, f.label, f.name in signature.input_names]
            for f in fields
        ]
        if signature is not None
        else None,
        "state": predictor.get_state(),
        "lm_params": dict(getattr(predictor, "lm_params", {}) or {}),
        # Whether an unreadable reply gets a corrective call or fails its example changes scores.
        "max_parse_retries": getattr(predictor, "max_parse_retries", None),
    }


def judge_identity(metric: Any) -> dict[str, Any] | None:
    """The LMs and predictors ``metric`` asks (:func:`~aprompt.run._metric_judges.metric_judges`), by
    where it finds them: an LM by :func:`lm_identity`, a predictor by a digest of its
    :func:`predictor_identity` and its own LM's identity. ``None`` when it asks none."""
    found: dict[str, Any] = {}
    for where, judge in metric_judges(metric):
        if is_predictor(judge):
            found[where] = digest(predictor_identity(judge))
            found.update(lm_identity(f"{where}.lm", getattr(judge, "lm", None)))
        else:
            found.update(lm_identity(where, judge))
    return found or None


def run_fingerprint(
    strategy: str,
    budget: Any,
    seed: int,
    grounding: Any,
    bootstrap_threshold: float,
    predictors: Sequence[tuple[str, Any]],
    trainset: Sequence[Any],
    valset: Sequence[Any],
    *,
    lm: Any,
    proposer_lm: Any,
    teacher_lm: Any,
    metric: Any,
    metric_settings: str | None = None,
    program: Any = None,
    journal_format: int = 1,
) -> dict[str, Any]:
    """What makes two runs the same run: a resumed run must match it exactly, key by key.

    ``program``'s code (its class's source, or its function's) is part of it: code that changes what
    the program returns from the same predictors changes every score. ``metric_settings`` is the metric
    object's :func:`program_settings` as the call began (before any check called it).

    Example::

        run_fingerprint("mipro", plan, 0, Grounding(), 1.0, predictors, train, val,
                        lm=lm, proposer_lm=lm, teacher_lm=None, metric=exact_match)["lm (model)"]
    """
    fingerprint: dict[str, Any] = {
        VERSION_KEY: IDENTITY_VERSION,
        "strategy": strategy,
        JOURNAL_FORMAT_KEY: journal_format,
        "seed": seed,
        "budget": attrs.asdict(budget),
        "grounding": attrs.asdict(grounding),
        "bootstrap_threshold": bootstrap_threshold,
        "program": {name: digest(predictor_identity(p)) for name, p in predictors},
        "trainset": digest([e.id for e in trainset]),
        "trainset content": digest([[e.inputs, e.labels] for e in trainset]),
        "valset": digest([e.id for e in valset]),
        "valset content": digest([[e.inputs, e.labels] for e in valset]),
        # What runs when the metric is called, as for the program: a bound method through the rest of its
        # class (``self.normalize(...)``), a callable object through its ``__call__``'s helpers and globals.
        "metric": program_identity(metric),
        # A callable object's (or a bound method's object's) plain values: ``Judge(threshold=0.9)`` scores
        # otherwise than ``Judge(threshold=0.5)``. None for a function, so journals without it still match.
        "metric settings": metric_settings,
        # The LM clients and predictors the metric asks: another judge model scores otherwise. None when
        # it asks none, so journals without it still match.
        "metric judge": judge_identity(metric),
        "program code": None if program is None else program_identity(program),
        "program settings": None if program is None else program_settings(program),
    }
    fingerprint.update(lm_identity("lm", lm))
    fingerprint.update(lm_identity("proposer_lm", proposer_lm))
    fingerprint.update(lm_identity("teacher_lm", teacher_lm))
    for name, predictor in predictors:
        fingerprint.update(lm_identity(f"{name}.lm", getattr(predictor, "lm", None)))
    return fingerprint


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ, sorted; a mapping value names its differing parts,
    e.g. ``"program (answer)"`` or ``"budget (n_trials)"``."""
    found = []
    for key in sorted({*stored, *current}):
        old, new = stored.get(key), current.get(key)
        if old == new:
            # The same predictors in another order (attributes set in a set's order, which follows the
            # hash seed) are another search: the order decides how the run samples its choices.
            if (
                key == "program"
                and isinstance(old, Mapping)
                and isinstance(new, Mapping)
                and list(old) != list(new)
            ):
                found.append(f"{key} (the order of its predictors: {list(old)} then, {list(new)} now)")
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            parts = sorted(str(k) for k in {*old, *new} if old.get(k) != new.get(k))
            found.append(f"{key} ({', '.join(parts)})")
        else:
            found.append(key)
    return found
