"""Paired evidence between two combinations: how the final pick (:mod:`aprompt._optimize.final_pick`),
the races and the confirmation decide that one program is better than another.

Every combination the search scored has per-example scores (its mini-batch trials, race rungs and full
evaluations, merged by example id; see :mod:`aprompt._optimize.racing`). Two combinations are compared on the
examples *both* were scored on: the paired differences ``a − b`` per shared example, their mean, and a paired
t-interval. A combination is **better** than another when the interval's lower end — a one-sided lower
confidence bound — is above 0 on at least ``min_shared`` shared examples. The bound's level is 95 %,
Bonferroni-adjusted for the ``k`` fully evaluated combinations the pick weighs (``1 − 0.05 / k``; the
hand-written references get their own share, below): the pick is the best of several, so without the
adjustment the chance that one of them wins by luck alone would grow with ``k``. The reported interval is
the two-sided one with those bounds as its ends (90 % when ``k`` is 1). The
t-interval overstates the evidence when few examples differ (3 wins and no loss on 30 examples put its 95 %
bound above 0), so "better" also needs the exact sign test over the examples that differ at the same level.

Fewer than ``MIN_SHARED`` (10) shared examples are never evidence that a combination is better (3 of 5
against 5 of 5 is not evidence at 95 %, and a higher mean on 2 or 3 examples is a coin flip: such picks
returned a truly worse program in most runs of a world where nothing helps). On a validation set that small
the pick keeps the incumbent, and a combination that leads it is its challenger: the confirmation on
training examples (:mod:`aprompt._optimize.confirmation`) runs enough of them to bring the pair to
``MIN_SHARED`` shared examples, and the pick is decided on those. The reason says that the evidence is thin.

The references are fixed before the search sees any score, so they need no share of the adjustment for
the search's many combinations: the pick spends three quarters of the 5 % on them (each of ``m``
references tested against the baseline at ``1 − 0.0375 / m``) and a quarter on the rest
(``1 − 0.0125 / (k + m)`` each, for the ``k`` searched combinations and the references again, against a
searched incumbent). A reference that is found better passes its share on to the rest
(``1 − 0.05 / (k + 1)`` when the only reference was accepted, the level without this split), as in the
fallback procedure of multiple testing (Wiens, 2003): a false replacement still happens in at most 5 % of runs
for combinations chosen without their validation scores. The search's are chosen by them; where all are as
good as the baseline the whole search replaced it in 0.75 % of light runs, 3.0 % without a reference
(``bench.regret --world equal``; measured, not proved), while a bare top-k choice by mini-batch means exceeds
the bound (6–13 %, ``bench/pick_selection.py``). Yet the hand-written prompt replaces a program as written
that scores 0 on a lead of 5 wins and no loss, which a bound adjusted ten ways would not accept. The share is
weighted toward the reference because on small data it is the program likeliest to beat the program as written
(on the embedded model's benchmarks it is the returned program on most tasks, and on ``intent_goal`` it led
5–0 on 56 examples in two seeds, one win short of a half share); the searched combinations pay one win more
until it is found better. See :func:`pick_levels`. Without references the whole 5 % goes to the searched
combinations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import attrs
from scipy.special import bdtrc, stdtrit  # type: ignore[import-untyped]

#: Chance, over all the comparisons of one pick, that a combination is found better by luck alone.
ALPHA = 0.05
#: Share of ``ALPHA`` spent on the hand-written references, tested before the searched combinations.
REFERENCE_SHARE = 0.75
#: Fewest shared examples on which a combination can be found better (fewer when the valset is smaller).
MIN_SHARED = 10


@attrs.frozen
class PairedDifference:
    """``a − b`` on the examples both were scored on: ``n`` examples, the mean difference and its
    paired t-interval ``[low, high]``, each end a one-sided bound at ``level`` (clipped to [−1, 1], the
    range of a difference of scores; the whole range with fewer than 2 examples)."""

    n: int
    mean: float
    low: float
    high: float
    level: float = 0.95
    #: Shared examples on which ``a`` scored higher / lower than ``b``.
    wins: int = 0
    losses: int = 0

    def better(self, min_shared: int = MIN_SHARED) -> bool:
        """``a`` is better than ``b``: on at least ``min_shared`` examples, and never on fewer than
        :data:`MIN_SHARED` (a higher mean on a few examples is luck as often as not), the interval lies above
        0 and the sign test agrees.

        The t-interval alone overstates the evidence when few examples differ: 3 wins and no loss on 30
        examples put its 95 % bound above 0, yet 3 fair coin flips all land the same way one time in 8.
        So the wins must also be unlikely under a fair coin over the examples that differ (exact one-sided
        sign test at the same level)."""
        if self.n < max(min_shared, MIN_SHARED):
            return False
        return self.low > 0.0 and sign_test(self.wins, self.losses) <= 1.0 - self.level

    def worse(self) -> bool:
        """``a`` is clearly worse than ``b``: on at least :data:`MIN_SHARED` examples, the interval lies
        below 0. Used to drop a candidate early (a race's rung, a trial's first stage); never said on
        thinner evidence, where a candidate runs on instead."""
        return self.n >= MIN_SHARED and self.high < 0.0

    def describe(self) -> str:
        thin = f"; fewer than {MIN_SHARED} examples: no confidence bound" if self.n < MIN_SHARED else ""
        return (
            f"{self.mean:+.3f} on {self.n} shared examples "
            f"({2 * self.level - 1:.1%} interval [{self.low:+.3f}, {self.high:+.3f}], "
            f"higher on {self.wins}, lower on {self.losses}{thin})"
        )


def paired_difference(
    a: Mapping[str, float], b: Mapping[str, float], level: float = 0.95
) -> PairedDifference:
    """Compare two combinations' per-example scores (example id -> score) on their shared examples;
    ``level`` is the one-sided level of each end of the interval.

    Example::

        >>> paired_difference({"x": 1.0, "y": 1.0, "z": 0.0}, {"x": 0.0, "y": 1.0}).mean
        0.5
    """
    # Plain Python over a few hundred floats beats numpy's per-call overhead (a search makes hundreds of
    # these comparisons); ``math.fsum`` is exact, so the result does not depend on the examples' order.
    diffs = [a[i] - b[i] for i in a.keys() & b.keys()]
    n = len(diffs)
    if n == 0:
        return PairedDifference(0, 0.0, -1.0, 1.0, level)
    mean = math.fsum(diffs) / n
    wins = len([d for d in diffs if d > 0.0])
    losses = len([d for d in diffs if d < 0.0])
    if n < 2:
        return PairedDifference(n, mean, -1.0, 1.0, level, wins, losses)
    deviation = math.sqrt(math.fsum([(d - mean) ** 2 for d in diffs]) / (n - 1))
    half = t_quantile(level, n - 1) * deviation / math.sqrt(n)
    return PairedDifference(n, mean, max(-1.0, mean - half), min(1.0, mean + half), level, wins, losses)


def leads(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """``a`` scores above ``b`` on their shared examples (the mean of :func:`paired_difference` is above 0,
    without its interval).

    Example::

        >>> leads({"x": 1.0, "y": 0.0}, {"x": 0.0, "y": 0.0, "z": 1.0})
        True
    """
    return math.fsum([a[i] - b[i] for i in a.keys() & b.keys()]) > 0.0


def level_for(fully_evaluated: int) -> float:
    """The one-sided level of each comparison of a pick that weighs ``fully_evaluated`` combinations
    besides the baseline and no reference (Bonferroni-adjusted; see the module docstring)."""
    return 1.0 - ALPHA / max(1, fully_evaluated)


@attrs.frozen
class Levels:
    """The one-sided levels of a pick's comparisons: ``reference`` for each hand-written reference
    against the incumbent before it, ``search`` for each searched combination."""

    reference: float
    search: float


def pick_levels(references: int, searched: int, accepted: int = 0) -> Levels:
    """The levels of a pick that weighs ``references`` fully evaluated references and ``searched`` other
    fully evaluated combinations (the baseline aside), once ``accepted`` references have replaced the
    incumbent (see the module docstring).

    Each reference is first tested at ``REFERENCE_SHARE · ALPHA / references``. The second family is every
    searched combination against the incumbent, and every reference again against a searched incumbent
    (``searched + references`` tests), at ``(1 − REFERENCE_SHARE) · ALPHA`` plus the share of every
    accepted reference, divided among them: the fallback procedure, so a false replacement anywhere stays
    at most ``ALPHA``. Once every reference is accepted the second family is tested at
    :func:`level_for` of all the fully evaluated combinations, as without the references' share. Without
    searched combinations the references have the whole ``ALPHA``.

    Example::

        >>> pick_levels(1, 9)
        Levels(reference=0.9625, search=0.99875)
        >>> pick_levels(1, 9, accepted=1).search == level_for(10)
        True
    """
    if references == 0:
        return Levels(level_for(searched), level_for(searched))
    if searched == 0:
        return Levels(1.0 - ALPHA / references, 1.0 - ALPHA / references)
    per_reference = REFERENCE_SHARE * ALPHA / references
    search_alpha = (1.0 - REFERENCE_SHARE) * ALPHA + min(accepted, references) * per_reference
    return Levels(1.0 - per_reference, 1.0 - search_alpha / (searched + references))


def loosest_level(references: int, searched: int) -> float:
    """The lowest level any comparison of such a pick can be made at (every reference accepted): a
    contender that cannot be found better even at this level cannot be found better at all."""
    levels = (pick_levels(references, searched, references), pick_levels(references, searched))
    return min(min(each.reference, each.search) for each in levels)


def could_become_better(
    a: Mapping[str, float], b: Mapping[str, float], more: int, level: float, min_shared: int = MIN_SHARED
) -> bool:
    """Whether ``a`` would be better than ``b`` (at ``level``) if it won ``more`` further shared examples
    outright (1 against 0): when not, running them cannot make it better.

    Example::

        >>> could_become_better({"x": 1.0}, {"x": 1.0}, 9, 0.95)
        True
        >>> could_become_better({"x": 1.0}, {"x": 1.0}, 2, 0.95, min_shared=1)  # 3 examples: never evidence
        False
    """
    won = {f"\0more:{i}": 1.0 for i in range(more)}
    lost = dict.fromkeys(won, 0.0)
    return paired_difference({**a, **won}, {**b, **lost}, level).better(min_shared)


def sign_test(wins: int, losses: int) -> float:
    """One-sided p-value of ``wins`` or more wins among ``wins + losses`` fair coin flips.

    Example::

        >>> sign_test(3, 0)
        0.125
    """
    if wins == 0:
        return 1.0
    return float(bdtrc(wins - 1, wins + losses, 0.5))


# A search asks for the same few (level, degrees of freedom) pairs again and again (one level per pick,
# dof below the validation set's size): a bounded memo. ``scipy.special.stdtrit`` gives the same values as
# ``scipy.stats.t.ppf`` without importing ``scipy.stats``, which would double the objects the process
# holds (~45k), and every full garbage collection during a run walks them all.
@functools.lru_cache(maxsize=1024)
def t_quantile(level: float, dof: int) -> float:
    """The ``level`` quantile of Student's t distribution with ``dof`` degrees of freedom.

    Example::

        >>> round(t_quantile(0.95, 9), 4)
        1.8331
    """
    return float(stdtrit(dof, level))
