"""The final pick: which program a search returns, decided on paired evidence.

Two combinations are compared on the examples both were scored on, and one is *better* than another
only on paired evidence at a Bonferroni-adjusted level, never on fewer than ``MIN_SHARED`` shared
examples; the references (the prompt a user would write by hand) get their own share of the level
(:mod:`aprompt._optimize.paired_evidence` says how, and why).

The pick starts from the unoptimized program (the baseline) as the incumbent; the ``references`` (the
prompt a user would write by hand) come first and replace it when better, and then the pick walks the fully
evaluated combinations from the highest mean score down — equal means ranked first by how few
instructions they take from the proposals (:func:`proposed_instructions`: a user's own instruction is
kept unless a proposal scores higher), then by the pooled estimate of
:mod:`aprompt._optimize.pooling` (the additive model over all trials blended with each combination's own
mean), then by the choice itself, never by the order they were evaluated in — and each one that is
better than the incumbent replaces it. So the baseline is replaced only on paired evidence
that the new program is better, a tie is never broken by evaluation order, and a combination with few
lucky examples never wins: only a fully evaluated combination can be returned, and it must beat the
incumbent on the examples they share.

Combinations that score above the pick on their shared examples without the evidence to replace it are
the pick's *challengers*, ranked by the pooled estimate (a mini-batch mean alone is too noisy to rank
by): evaluating them fully (while the run's budget allows) is what can change the
decision (see :meth:`aprompt._optimize.search.SearchLoop.run_outcome`), and so is running the pick and its
fully evaluated challengers on training examples they do not show as demos
(:mod:`aprompt._optimize.confirmation`): their scores join the evidence like any other, by example id.

"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import attrs

from aprompt._optimize.paired_evidence import (
    MIN_SHARED,
    PairedDifference,
    leads,
    paired_difference,
    pick_levels,
)

Key = tuple[tuple[str, int], ...]

#: ``FinalPick.stopped`` when the baseline and every trial scored 0 (see :mod:`aprompt._optimize.search`).
NOTHING_SCORES = "nothing_scores"


def key_of(choice: Mapping[str, int]) -> Key:
    """A choice as a hashable, canonically ordered key."""
    return tuple(sorted([(name, int(value)) for name, value in choice.items()]))


#: How a choice names a predictor's instruction parameter (``Candidates.parameters``); its index 0 is the
#: instruction as written, the others proposals.
INSTRUCTION_PARAMETER = ".instruction"


def proposed_instructions(choice: Mapping[str, int]) -> int:
    """How many predictors' instructions ``choice`` takes from the proposals (not as written)."""
    return sum(1 for name, value in choice.items() if name.endswith(INSTRUCTION_PARAMETER) and value != 0)


@attrs.frozen
class Evidence:
    """What the search knows of one combination.

    Attributes:
        choice: candidate index per parameter.
        scores: example id -> score, from every trial and full evaluation of it.
        estimate: its pooled estimate (the additive model blended with its own mean): the prior that
            ranks combinations and breaks ties.
        full: it has a full evaluation (only such a combination can be returned).
        key: ``key_of(choice)``, when the caller has it at hand (a pick compares keys many times).
        stamp: names these ``scores`` among the scores of :class:`StampedEvidence` (other scores, another
            stamp); ``None`` when not stamped.
    """

    choice: Mapping[str, int]
    scores: Mapping[str, float]
    estimate: float
    full: bool
    key: Key = attrs.field(
        default=attrs.Factory(lambda self: key_of(self.choice), takes_self=True), kw_only=True, repr=False
    )
    stamp: int | None = attrs.field(default=None, kw_only=True, repr=False, eq=False)


class StampedEvidence(tuple[Evidence, ...]):
    """Evidence whose scores are stamped (:attr:`Evidence.stamp`) and never changed, as an evidence book
    gives it: ``leads`` keeps whether one combination leads another (:func:`leads`) by their stamps,
    across the decisions of a search. A combination's stamp changes with its scores, so a kept answer is
    the one its scores give (the pick weighs every combination against its incumbent at every decision).
    ``picks`` keeps the picks decided on this evidence: a book whose records have not changed gives the
    same object again (a search decides before each trial, and in a row without a record between)."""

    leads: dict[tuple[int, int], bool]
    picks: dict[tuple[Key, int, tuple[Key, ...]], FinalPick]

    def __new__(cls, evidence: Iterable[Evidence], leads: dict[tuple[int, int], bool]) -> StampedEvidence:
        made = super().__new__(cls, evidence)
        made.leads = leads
        made.picks = {}
        return made


@attrs.frozen
class FinalPick:
    """The returned combination and why.

    Attributes:
        choice: the returned combination.
        kept_baseline: the unoptimized program is returned.
        reason: one readable sentence with the evidence.
        evidence: the returned program − the baseline on shared examples; when the baseline is kept,
            its strongest challenger − the baseline (``None`` when nothing else was scored).
        challenger: that strongest challenger, when the baseline is kept.
        challengers: combinations that scored above the returned program on shared examples but lack
            the evidence to replace it (not better at the interval's level, or not fully evaluated), most
            promising first.
        stopped: why the search stopped before its planned end, if it did on its own (not by a run
            limit): ``"nothing_scores"`` when the baseline and every trial scored 0.
    """

    choice: Mapping[str, int]
    kept_baseline: bool
    reason: str
    evidence: PairedDifference | None = None
    challenger: Mapping[str, int] | None = None
    challengers: tuple[Mapping[str, int], ...] = ()
    stopped: str | None = None


def rank(evidence: Sequence[Evidence]) -> list[Evidence]:
    """Most promising first: by pooled estimate, then by examples scored, then by the choice itself (a
    fixed order that has nothing to do with when a combination was evaluated). Estimates are compared to
    12 decimals: the model's fit sums in the order the evidence came, so two combinations of the same
    evidence may differ in the last bit, and that order must not decide."""
    return sorted(evidence, key=lambda e: (-round(e.estimate, 12), -len(e.scores), e.key))


def by_mean(evidence: Sequence[Evidence]) -> list[Evidence]:
    """Highest mean score over its own examples first; equal means with fewer proposed instructions first
    (a user's own instruction is kept unless a proposal scores higher), then by :func:`rank`'s order."""
    # A stable sort keeps rank's order.
    return sorted(rank(evidence), key=lambda e: (-mean_of(e.scores), proposed_instructions(e.choice)))


def mean_of(scores: Mapping[str, float]) -> float:
    """The mean score, summed exactly (``math.fsum``): the same scores give the same mean in any order,
    so equal means are equal and fall to the tie rules, not to the order examples were scored in."""
    return math.fsum(scores.values()) / len(scores) if scores else 0.0


def describe_choice(choice: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{name}={value}" for name, value in sorted(choice.items())) + "}"


def pick(
    evidence: Sequence[Evidence],
    baseline: Mapping[str, int],
    *,
    min_shared: int = MIN_SHARED,
    references: Sequence[Mapping[str, int]] = (),
) -> FinalPick:
    """Decide the returned combination (see the module docstring).

    Args:
        evidence: every scored combination, the baseline among them (fully evaluated).
        baseline: the unoptimized combination.
        min_shared: fewest shared examples on which one combination can be found better than another.
        references: fully evaluated combinations weighed before all others (the prompt a user would
            write by hand), fixed before the search: one that beats the baseline becomes the program to
            beat, so a search result replaces it only on paired evidence, never on a lead within the
            noise. They are tested at their own share of the level (:func:`pick_levels`).
    """
    if not isinstance(evidence, StampedEvidence):
        return _pick(evidence, baseline, min_shared, references)
    asked = (key_of(baseline), min_shared, tuple(key_of(r) for r in references))
    decided = evidence.picks.get(asked)
    if decided is None:
        decided = evidence.picks[asked] = _pick(evidence, baseline, min_shared, references)
    return decided


def _pick(
    evidence: Sequence[Evidence],
    baseline: Mapping[str, int],
    min_shared: int,
    references: Sequence[Mapping[str, int]],
) -> FinalPick:
    base_key = key_of(baseline)
    by_key = {e.key: e for e in evidence}
    if base_key not in by_key:
        raise ValueError(f"no evidence on the baseline {describe_choice(baseline)}")
    base = by_key[base_key]
    others = rank([e for key, e in by_key.items() if key != base_key])
    reference_keys = [key_of(r) for r in references]
    hand = [
        by_key[key]
        for key in dict.fromkeys(reference_keys)
        if key != base_key and key in by_key and by_key[key].full
    ]
    tested = {e.key for e in hand}
    searched = [e for e in others if e.full and e.key not in tested]

    incumbent = base
    accepted = 0
    reference_level = pick_levels(len(hand), len(searched)).reference
    for reference in hand:
        if paired_difference(reference.scores, incumbent.scores, reference_level).better(min_shared):
            incumbent = reference
            accepted += 1
    search_level = pick_levels(len(hand), len(searched), accepted).search

    def versus(a: Evidence, b: Evidence) -> PairedDifference:
        """``a − b`` at the level the pick tests ``a`` against ``b`` at: a reference against the baseline
        or another reference at its own share, everything else at the searched combinations' level."""
        first = a.key in tested and (b is base or b.key in tested)
        return paired_difference(a.scores, b.scores, reference_level if first else search_level)

    for candidate in by_mean(searched):
        if versus(candidate, incumbent).better(min_shared):
            incumbent = candidate
    # A reference may still beat a searched pick (the second family counts that test).
    if incumbent is not base and incumbent.key not in tested:
        for reference in hand:
            if versus(reference, incumbent).better(min_shared):
                incumbent = reference
    kept = evidence.leads if isinstance(evidence, StampedEvidence) else None
    challengers = tuple(e.choice for e in others if e is not incumbent and _leads(e, incumbent, kept))
    if incumbent is not base:
        against = versus(incumbent, base)
        hand_written = (
            " (the instructions as written with labeled demos)" if incumbent.key in reference_keys else ""
        )
        # How a searched pick stands against the hand-written prompt: what a user compares it with.
        versus_hand = (
            ""
            if hand_written
            else "".join(
                f"; against the instructions as written with labeled demos {describe_choice(r.choice)}: "
                f"{versus(incumbent, r).describe()}"
                for r in hand
            )
        )
        return FinalPick(
            incumbent.choice,
            False,
            f"{describe_choice(incumbent.choice)}{hand_written} beat the unoptimized program by "
            f"{against.describe()}{versus_hand}",
            against,
            challengers=challengers,
        )
    scored = [e for e in others if not e.scores.keys().isdisjoint(base.scores.keys())]
    if not scored:
        return FinalPick(baseline, True, "kept the unoptimized program: no other combination was scored")
    strongest = challengers[0] if challengers else scored[0].choice
    against = versus(by_key[key_of(strongest)], base)
    if not challengers:
        why = f"no combination scored above it on shared examples (most promising: {against.describe()})"
    elif not by_key[key_of(strongest)].full and against.better(min_shared):
        why = f"the most promising combination has no full evaluation ({against.describe()})"
    else:
        why = f"the evidence does not say any combination is better (most promising: {against.describe()})"
    return FinalPick(
        baseline,
        True,
        f"kept the unoptimized program: {why}; most promising {describe_choice(strongest)}",
        against,
        strongest,
        challengers,
    )


def _leads(a: Evidence, b: Evidence, kept: dict[tuple[int, int], bool] | None) -> bool:
    """:func:`leads` of ``a``'s scores over ``b``'s, from ``kept`` when both are stamped."""
    if kept is None or a.stamp is None or b.stamp is None:
        return leads(a.scores, b.scores)
    pair = (a.stamp, b.stamp)
    found = kept.get(pair)
    if found is None:
        found = kept[pair] = leads(a.scores, b.scores)
    return found


def nothing_scores(baseline_scores: Mapping[str, float], trial_scores: Sequence[Mapping[str, float]]) -> bool:
    """The baseline and every trial scored 0 on every example (and some trial scored an example)."""
    scored = [s for s in trial_scores if s]
    return bool(scored) and not any(v > 0 for s in (baseline_scores, *scored) for v in s.values())
