"""Journal records of the steps a run's limit refused, so that a resumed run refuses the same ones.

Steps overlap, so whether a step is affordable depends on how far the steps beside it had got; a resumed
run under the same limit must nevertheless stop at the same step and send nothing more. Each refusal is
journaled with the limit's value then, and stands while the limit is not raised.
"""

from __future__ import annotations

from collections.abc import Sequence

from aprompt.run._limits import RunLimits
from aprompt.run.journal import RunJournal

#: Journal kind of a step a limit refused (see :func:`journal_refusal`).
REFUSAL_KIND = "refused"


def limit_value(limits: RunLimits, name: str) -> float | None:
    """The value of the limit ``name`` (``"max_lm_calls"``, ``"max_tokens"`` or ``"max_cost"``), or
    ``None`` when it is not set (or is another limit)."""
    return {
        "max_lm_calls": limits.max_lm_calls,
        "max_tokens": limits.max_tokens,
        "max_cost": limits.max_cost,
    }.get(name)


def journal_refusal(
    journal: RunJournal | None,
    limits: RunLimits,
    parts: Sequence[tuple[str, str, int]],
    limit: str,
    *,
    kept: bool = False,
) -> None:
    """Journal that ``limit`` refused the step of ``parts`` (``(journal kind, key, size)``, keyed by the
    first); ``kept``: the refusal kept the budget for a later step (``BudgetKept``)."""
    value = limit_value(limits, limit)
    if journal is None or value is None:
        return
    kind, key, _ = parts[0]
    record = {"limit": limit, "value": value, **({"kept": True} if kept else {})}
    journal.append(REFUSAL_KIND, record, key=f"{kind}:{key}")


def refused_before(
    journal: RunJournal | None, limits: RunLimits, parts: Sequence[tuple[str, str, int]]
) -> tuple[str | None, bool]:
    """The limit that refused the step of ``parts`` when the run was stopped, if it is not higher now,
    and whether the refusal kept the budget for a later step (``BudgetKept``)."""
    if journal is None:
        return None, False
    kind, key, _ = parts[0]
    found = journal.latest(REFUSAL_KIND, f"{kind}:{key}")
    if not isinstance(found, dict):
        return None, False
    limit, value = found.get("limit"), found.get("value")
    now = limit_value(limits, str(limit))
    if now is None or not isinstance(value, int | float) or now > value:
        return None, False
    return str(limit), found.get("kept") is True
