"""What the answers in settle: whether one combination is clearly worse than another on their shared
examples, whether answers still out could still make it so, and the range of a mean those answers leave
open (see :mod:`aprompt._optimize.racing`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from aprompt._optimize.paired_evidence import ALPHA, MIN_SHARED, paired_difference, t_quantile


def clearly_worse(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """``a`` is clearly worse than ``b`` on their shared examples (one-sided 95 % bound below 0)."""
    return paired_difference(a, b, 1.0 - ALPHA).worse()


def cannot_be_clearly_worse(
    known: Mapping[str, float], outstanding: Iterable[str], other: Mapping[str, float]
) -> bool:
    """Whether ``known`` scores (example id -> score) stay not :func:`clearly_worse` than ``other``
    however the ``outstanding`` examples end: each scored anything in [0, 1] (the metric's range,
    :func:`~aprompt._optimize.evaluate.metric_score`), or left unscored. ``False`` when unsure.

    Why it suffices. Let ``K`` be the known examples shared with ``other``: ``k`` paired differences
    ``d_i = known_i − other_i`` with mean ``m_K`` and sum of squared deviations ``SS``. A completion
    scores ``u`` of the outstanding examples shared with ``other`` (the set ``U``), so ``n = k + u``
    differences with mean ``m``. ``clearly_worse`` needs ``n >= MIN_SHARED`` and ``high < 0``, where
    ``high = min(1, m + q·√TSS)``: ``TSS`` is the sum of squared deviations of all ``n`` from ``m``, and
    ``q = t / √(n·(n − 1)) > 0`` (``t``: the one-sided 95 % quantile, ``n − 1`` degrees of freedom).

    - Each new difference is at least ``−other_i``, so ``m >= m_lo = (k·m_K − the u largest other_i) / n``.
    - ``TSS`` splits into the spreads of ``K`` and ``U`` about their own means plus ``k·(m_K − m)²``
      and ``u·(m_U − m)²``; with ``u·m_U = n·m − k·m_K``, that is ``TSS >= SS + A·(m_K − m)²``,
      ``A = k·n / u`` (``TSS = SS`` and ``m = m_K`` when ``u = 0``).

    So ``high >= min(1, g(m))`` with ``g(m) = m + q·√(SS + A·(m_K − m)²)``, convex in ``m``: its least
    value on ``m >= m_lo`` is at ``m_lo`` when ``q²·A <= 1`` (``g`` never decreases), else at the larger
    of ``m_lo`` and its minimum ``m_K − √(SS / (A·(q²·A − 1)))``. When that least value is above 0 (by a
    margin that covers rounding) for every ``u`` with ``n >= MIN_SHARED``, ``high >= 0`` in every
    completion, and the paired difference is never clearly negative.
    """
    diffs = [known[i] - other[i] for i in known if i in other]
    k = len(diffs)
    mean_k = math.fsum(diffs) / k if k else 0.0
    spread = math.fsum((d - mean_k) ** 2 for d in diffs)
    worst = sorted((other[i] for i in outstanding if i in other and i not in known), reverse=True)
    lost = 0.0  # the sum of the u largest scores of ``other`` on the outstanding examples
    for u in range(len(worst) + 1):
        if u:
            lost += worst[u - 1]
        n = k + u
        if n < MIN_SHARED:
            continue
        q = t_quantile(1.0 - ALPHA, n - 1) / math.sqrt(n * (n - 1))
        if u == 0:
            least = mean_k + q * math.sqrt(spread)
        else:
            a = k * n / u
            low = (k * mean_k - lost) / n
            m = low
            if q * q * a > 1.0:
                m = max(low, mean_k - math.sqrt(spread / (a * (q * q * a - 1.0))))
            least = m + q * math.sqrt(spread + a * (mean_k - m) ** 2)
        if least <= ROUNDING_MARGIN:
            return False
    return True


#: What :func:`cannot_be_clearly_worse`'s bound must clear: far above the rounding of sums of at most a
#: few thousand differences in [−1, 1], far below any difference a score can make.
ROUNDING_MARGIN = 1e-9


def mean_range(total: float, count: int, out: int) -> tuple[float, float]:
    """The least and greatest mean (as :func:`~aprompt._optimize.final_pick.mean_of` takes it, 0 for no
    scores) of ``count`` scores summing to ``total`` and ``out`` more answers, each scored anything in
    [0, 1] or left unscored: all ``out`` scored 0, and all scored 1 (a mean of scores in [0, 1] is at
    most 1, so each answer scored 1 can only raise it, and each scored 0 only lower it)."""
    n = count + out
    if n == 0:
        return 0.0, 0.0
    return total / n, (total + out) / n
