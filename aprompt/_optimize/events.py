"""Typed progress events emitted by an optimization run.

Every event is a frozen value; apps receive them through ``optimize(..., on_event=callback)`` or by
iterating ``optimize_events(...)``.

A resumed run (``run_dir``) emits the events of the whole run, the steps read back from its journal
included, with the usage of this call (nothing, for a step read back; a trial read back is
``TrialScored.replayed``). A ``choice`` maps each searched parameter (``"<predictor>.instruction"``,
``"<predictor>.demos"``, ...) to a candidate index, and names the parameters searched when it was made:
a strategy that adds a parameter during the search (``mipro_plus_plus``) names it in later events and in
the result, where an earlier choice took index 0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from aprompt.lm.usage import UsageSnapshot


def _own_copy(mapping: Mapping[str, int]) -> Mapping[str, int]:
    """The event's own copy of a mapping the run keeps (a trial's choice): a callback that changes the
    event's cannot change what the search records and picks."""
    return dict(mapping)


@attrs.frozen
class PhaseStarted:
    """A phase began: ``"baseline"``, ``"grounding"``, ``"bootstrap"``, ``"reference"``, ``"warmup"``,
    ``"propose"`` or ``"search"`` (those a strategy has; some run beside each other)."""

    phase: str
    detail: str = ""


@attrs.frozen
class PhaseFinished:
    """A phase ended, with the LM usage it cost and its wall time (as in ``OptimizeResult.phases``).

    Every ``PhaseStarted`` of a run that returns a result has its ``PhaseFinished``: a phase a limit cut
    short finishes when the run stops, before ``RunFinished``."""

    phase: str
    seconds: float
    usage: UsageSnapshot


@attrs.frozen
class RunPlanned:
    """The run's plan, before the search spends its calls.

    ``expected_lm_calls`` estimates the run's LM calls before any cache (``detail``: by phase). It is no
    bound: failing bootstrap runs are drawn again, and retries, re-sent cut replies and a confirmation of
    an undecided pick come on top; ``max_lm_calls`` is the bound."""

    strategy: str
    n_trials: int
    val_size: int
    expected_lm_calls: int
    detail: Mapping[str, int] = attrs.field(factory=dict, converter=_own_copy)


@attrs.frozen
class CandidateProposed:
    """A new instruction candidate (``kind="instruction"``) or demo set (``kind="demos"``)."""

    predictor: str
    kind: str
    index: int
    value: Any


@attrs.frozen
class CandidateDropped:
    """A proposal dropped before the search (unreadable, echoing the proposer's prompt, or failing the
    screen), with the reason; the run goes on without it. ``index`` -1 says a predictor lost every
    proposal and is searched on demos only."""

    predictor: str
    index: int
    reason: str


@attrs.frozen
class TrialScored:
    """A mini-batch trial finished: its ``number`` (from 0, as in ``OptimizeResult.trials``), its
    ``choice``, its mean ``score`` on its ``n_examples`` examples (``None`` when LM failures left every
    one unscored), and how many of them failed (``n_failed``). ``replayed``: read back from a resumed
    run's journal (an earlier call ran it), not run by this call."""

    number: int
    choice: Mapping[str, int] = attrs.field(converter=_own_copy)
    score: float | None
    n_examples: int
    n_failed: int
    replayed: bool = False


@attrs.frozen
class FullEvaluation:
    """A combination was scored on the whole validation set."""

    choice: Mapping[str, int] = attrs.field(converter=_own_copy)
    score: float
    n_examples: int
    n_failed: int
    is_baseline: bool = False


@attrs.frozen
class NewBest:
    """The pick changed: the fully evaluated combination the run would return now, with its
    full-validation ``score``. The last ``NewBest`` of a run names ``OptimizeResult.best_choice`` and
    ``score``. A pick named again by parameters the search added since it was told (an
    instruction proposed mid-run) is told again under that name."""

    choice: Mapping[str, int] = attrs.field(converter=_own_copy)
    score: float


@attrs.frozen
class RunFinished:
    """The run ended; ``best_score`` is the returned program's full-validation score, and
    ``stopped_by`` names the limit that cut the run short (as ``OptimizeResult.stopped_by``), or is
    ``None``."""

    best_score: float
    baseline_score: float
    seconds: float
    usage: UsageSnapshot
    stopped_by: str | None = None


Event = (
    PhaseStarted
    | PhaseFinished
    | RunPlanned
    | CandidateProposed
    | CandidateDropped
    | TrialScored
    | FullEvaluation
    | NewBest
    | RunFinished
)
EventCallback = Callable[[Event], Awaitable[None] | None]
