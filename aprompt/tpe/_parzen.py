"""Parzen estimators: a weighted mixture of one kernel per observation plus one prior kernel.

A kernel is a product over dimensions:

- categorical: the observation's choice plus a pseudo-count ``a = prior_weight / n_kernels`` on every
  choice, normalised: ``p(x) = (1[x == c] + a) / (1 + n_choices * a)``. The smoothing shrinks as
  observations accumulate, like a bandwidth. The prior kernel is uniform.
- numeric: a Gaussian centred on the observation, truncated to the bounds. Its bandwidth follows Scott's
  rule for ``d`` dimensions, ``0.2 * n ** (-1 / (d + 4)) * range``, clipped to
  ``[range / min(100, n + 1), range]`` and, for integers, to at least half a step. The prior kernel is
  centred on the middle of the range with bandwidth ``range``. An integer's probability is its bin's mass.

The mixture weights are the observations' weights and ``prior_weight`` for the prior, normalised. Every
function takes and returns numpy arrays; nothing loops over observations in Python.
"""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt
from scipy.special import log_ndtr, logsumexp, ndtr, ndtri  # type: ignore[import-untyped]

from aprompt.tpe._space import EncodedSpace, FloatArray, IntArray

_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)

# Intervals (in standard deviations) below this width take log_normal_mass's midpoint rule.
_NARROW = 1e-6

# The prior kernel's categorical "centre": matches no choice, so the kernel is uniform.
_NO_CENTRE = -1


@attrs.frozen
class ParzenEstimator:
    """A fitted mixture; ``K`` kernels (the last is the prior), ``Dc`` categorical and ``Dn`` numeric dims."""

    log_weights: FloatArray  # (K,), log of the normalised mixture weights
    centres: IntArray  # (K, Dc), observed choices; _NO_CENTRE for the prior kernel
    keep: FloatArray  # (K, Dc), probability that a draw keeps the kernel's centre
    log_hit: FloatArray  # (K, Dc), log probability of the centre
    log_miss: FloatArray  # (K, Dc), log probability of any other choice
    n_choices: IntArray  # (Dc,)
    mu: FloatArray  # (K, Dn)
    sigma: FloatArray  # (K, Dn)
    log_norm: FloatArray  # (K, Dn), log normaliser: in-bounds mass (and sigma sqrt(2 pi) for floats)
    low: FloatArray  # (Dn,)
    high: FloatArray  # (Dn,)
    is_int: npt.NDArray[np.bool_]  # (Dn,)

    @property
    def n_kernels(self) -> int:
        return int(self.log_weights.shape[0])


def fit_parzen(
    space: EncodedSpace,
    cats: IntArray,
    nums: FloatArray,
    weights: FloatArray,
    *,
    prior_weight: float,
) -> ParzenEstimator:
    """Fit the estimator to ``n`` observations (``cats`` is ``(n, Dc)``, ``nums`` ``(n, Dn)``)."""
    n = cats.shape[0]
    mix = np.append(np.asarray(weights, dtype=np.float64), prior_weight)

    # Categorical: observed kernels (1[x == c] + a) / (1 + C a); the prior row is uniform.
    a = prior_weight / (n + 1)
    centres = np.vstack([cats, np.full((1, cats.shape[1]), _NO_CENTRE, dtype=np.int64)])
    n_choices = space.n_choices.astype(np.float64)
    is_prior = centres == _NO_CENTRE
    log_denominator = np.log1p(n_choices * a)
    log_hit = np.where(is_prior, -np.log(n_choices), np.log1p(a) - log_denominator)
    log_miss = np.where(is_prior, -np.log(n_choices), np.log(a) - log_denominator)
    keep = np.where(is_prior, 0.0, 1.0 / (1.0 + n_choices * a))

    span = space.high - space.low
    mu = np.vstack([nums, ((space.low + space.high) / 2)[None, :]])
    sigma = np.broadcast_to(bandwidth(span, n, space.n_dims, space.is_int), (n, span.shape[0]))
    sigma = np.vstack([sigma, span[None, :]])
    log_mass = log_normal_mass((space.low - mu) / sigma, (space.high - mu) / sigma)
    log_norm = np.where(space.is_int, log_mass, log_mass + np.log(sigma) + _LOG_SQRT_2PI)
    # Weights each finite may sum beyond the largest float (inf, then NaN probabilities): such weights
    # are scaled by the largest first; those of a finite sum are used as given, bit for bit.
    with np.errstate(over="ignore"):
        total = mix.sum()
    if not np.isfinite(total):
        mix = mix / mix.max()
        total = mix.sum()
    with np.errstate(divide="ignore"):  # an observation of weight 0 is left out: its log weight is -inf
        log_weights = np.log(mix) - np.log(total)
    return ParzenEstimator(
        log_weights=log_weights,
        centres=centres,
        keep=keep,
        log_hit=log_hit,
        log_miss=log_miss,
        n_choices=space.n_choices,
        mu=mu,
        sigma=sigma,
        log_norm=log_norm,
        low=space.low,
        high=space.high,
        is_int=space.is_int,
    )


def bandwidth(span: FloatArray, n: int, n_dims: int, is_int: np.ndarray) -> FloatArray:
    """The observation kernels' bandwidth per numeric dimension (see the module docstring)."""
    scott = 0.2 * max(n, 1) ** (-1.0 / (n_dims + 4)) * span
    floor = span / min(100, n + 1)
    floor = np.where(is_int, np.maximum(floor, 0.5), floor)
    return np.asarray(np.clip(scott, floor, span), dtype=np.float64)


def sample(
    est: ParzenEstimator, rng: np.random.Generator, n: int, *, per_dimension: bool = False
) -> tuple[IntArray, FloatArray]:
    """Draw ``n`` points. Each point takes all its dimensions from one kernel (a joint draw), or, with
    ``per_dimension``, each dimension from an independently drawn kernel (a draw from the marginals)."""
    n_cat, n_num = est.centres.shape[1], est.mu.shape[1]
    p = np.exp(est.log_weights)
    p /= p.sum()
    shape = (n, n_cat + n_num) if per_dimension else (n, 1)
    kernels = rng.choice(est.n_kernels, size=shape, p=p)
    cat_k = kernels[:, :n_cat] if per_dimension else np.broadcast_to(kernels, (n, n_cat))
    num_k = kernels[:, n_cat:] if per_dimension else np.broadcast_to(kernels, (n, n_num))

    centres = np.take_along_axis(est.centres, cat_k, axis=0) if n_cat else cat_k.astype(np.int64)
    keep = rng.random((n, n_cat)) < np.take_along_axis(est.keep, cat_k, axis=0)
    uniform = rng.integers(0, est.n_choices, size=(n, n_cat), dtype=np.int64)
    cats = np.where(keep, centres, uniform)

    cols = np.arange(n_num)[None, :]
    nums = sample_truncated_normal(rng, est.mu[num_k, cols], est.sigma[num_k, cols], est.low, est.high)
    nums = np.where(est.is_int, np.clip(np.round(nums), est.low + 0.5, est.high - 0.5), nums)
    return cats.astype(np.int64), nums


def log_pdf_per_kernel(est: ParzenEstimator, cats: IntArray, nums: FloatArray) -> FloatArray:
    """``(n, K, D)``: the log probability (or density) of each point's value in each dimension under each
    kernel, categorical dimensions first."""
    n_cat = est.centres.shape[1]
    out = np.empty((cats.shape[0], est.n_kernels, n_cat + est.mu.shape[1]))
    match = cats[:, None, :] == est.centres[None, :, :]
    out[:, :, :n_cat] = np.where(match, est.log_hit, est.log_miss)
    for cols, is_int in ((np.flatnonzero(~est.is_int), False), (np.flatnonzero(est.is_int), True)):
        if cols.size == 0:
            continue
        x, mu, sigma = nums[:, None, cols], est.mu[:, cols], est.sigma[:, cols]
        if is_int:
            lp = log_normal_mass((x - 0.5 - mu) / sigma, (x + 0.5 - mu) / sigma)
        else:
            lp = -0.5 * ((x - mu) / sigma) ** 2
        out[:, :, n_cat + cols] = lp - est.log_norm[:, cols]
    return out


def joint_log_pdf(est: ParzenEstimator, cats: IntArray, nums: FloatArray) -> FloatArray:
    """``(n,)``: the log of the mixture's joint probability of each point."""
    per_kernel = log_pdf_per_kernel(est, cats, nums).sum(axis=2)
    return np.asarray(logsumexp(per_kernel + est.log_weights, axis=1), dtype=np.float64)


def marginal_log_pdf(est: ParzenEstimator, cats: IntArray, nums: FloatArray) -> FloatArray:
    """``(n, D)``: the log of the mixture's marginal probability of each point's value per dimension."""
    per_kernel = log_pdf_per_kernel(est, cats, nums)
    return np.asarray(logsumexp(per_kernel + est.log_weights[None, :, None], axis=1), dtype=np.float64)


def log_normal_mass(a: FloatArray, b: FloatArray) -> FloatArray:
    """``log(Phi(b) - Phi(a))`` for ``a < b``, accurate in both tails and for the narrowest intervals."""
    # Above the mean, mirror the interval so both ends sit in the lower tail where log_ndtr is exact.
    flip = a > 0
    lo = np.where(flip, -b, a)
    hi = np.where(flip, -a, b)
    log_hi = log_ndtr(hi)
    log_lo = log_ndtr(lo)
    width = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        difference = log_hi + np.log1p(-np.exp(log_lo - log_hi))
        # Narrower than the CDFs can tell their ends apart (an integer's bin in a range of ~1e15, where
        # the difference was -inf or NaN): the density at the middle times the width, exact to ~width².
        middle = np.log(width) - 0.5 * ((lo + hi) / 2) ** 2 - _LOG_SQRT_2PI
    return np.asarray(np.where(width < _NARROW, middle, difference), dtype=np.float64)


def sample_truncated_normal(
    rng: np.random.Generator, mu: FloatArray, sigma: FloatArray, low: FloatArray, high: FloatArray
) -> FloatArray:
    """Inverse-CDF draws from ``N(mu, sigma)`` truncated to ``[low, high]`` (arrays broadcast)."""
    a = (low - mu) / sigma
    b = (high - mu) / sigma
    flip = a > 0
    lo = np.where(flip, -b, a)
    hi = np.where(flip, -a, b)
    p_lo, p_hi = ndtr(lo), ndtr(hi)
    u = rng.random(np.broadcast(mu, sigma, low, high).shape)
    z = ndtri(np.clip(p_lo + u * (p_hi - p_lo), np.finfo(np.float64).tiny, 1.0))
    x = mu + sigma * np.where(flip, -z, z)
    return np.asarray(np.clip(x, low, high), dtype=np.float64)
