"""Splitting observations into good and bad, and weighting them.

The sampler maximises, so "good" means the highest values. Every function here is pure: arrays in,
arrays out.
"""

from __future__ import annotations

import math

import numpy as np

from aprompt.tpe._space import FloatArray, IntArray


def default_gamma(n: int) -> int:
    """How many of ``n`` observations are good: ``min(ceil(0.25 * n), 25)``, at least one.

    A quarter rather than Optuna's tenth because the values are noisy mini-batch estimates: with 10
    observations a tenth is the single best score, usually a lucky draw, while the top 3 average the
    noise out and still point the good density at the better region. The cap keeps the good density
    sharp on long runs.
    """
    return max(1, min(math.ceil(0.25 * n), 25)) if n > 0 else 0


def split_good_bad(values: FloatArray, numbers: IntArray, n_good: int) -> tuple[IntArray, IntArray]:
    """Indices (into ``values``) of the ``n_good`` best observations and of the rest, each in trial order.

    Ties in value rank the earlier trial first, so the split is a function of the data alone.
    """
    order = np.lexsort((numbers, -values))
    good = np.sort(order[:n_good])
    bad = np.sort(order[n_good:])
    return good.astype(np.int64), bad.astype(np.int64)


def flat_weights(n: int) -> FloatArray:
    """Equal weights: every observation counts the same (the default)."""
    return np.ones(n, dtype=np.float64)


def recency_weights(n: int, n_recent: int = 25) -> FloatArray:
    """Weights for ``n`` observations in trial order: the last ``n_recent`` weigh 1, older ones ramp
    linearly down to ``1 / n``. Use when the objective drifts; for a fixed objective measured with noise
    every observation is equally informative."""
    if n <= n_recent:
        return flat_weights(n)
    ramp = np.linspace(1.0 / n, 1.0, num=n - n_recent)
    return np.concatenate([ramp, np.ones(n_recent)])
