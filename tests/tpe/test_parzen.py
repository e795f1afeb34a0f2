"""Parzen estimators: proper densities, kernels where the observations are, bounds respected."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]
from scipy.special import logsumexp  # type: ignore[import-untyped]

from aprompt.tpe import Categorical, FloatRange, IntRange
from aprompt.tpe._parzen import (
    bandwidth,
    fit_parzen,
    joint_log_pdf,
    log_normal_mass,
    marginal_log_pdf,
    sample,
    sample_truncated_normal,
)
from aprompt.tpe._space import encode_space

CATS = encode_space({"a": Categorical(3), "b": Categorical(4)})


def _fit_cats(observed: list[list[int]], prior_weight: float = 1.0):  # type: ignore[no-untyped-def]
    cats = np.asarray(observed, dtype=np.int64).reshape(-1, 2)
    return fit_parzen(CATS, cats, np.empty((len(cats), 0)), np.ones(len(cats)), prior_weight=prior_weight)


def _all_cat_points() -> tuple[np.ndarray, np.ndarray]:
    grid = np.array(list(itertools.product(range(3), range(4))), dtype=np.int64)
    return grid, np.empty((len(grid), 0))


def test_categorical_joint_probabilities_sum_to_one() -> None:
    est = _fit_cats([[0, 1], [2, 3], [0, 3]])
    cats, nums = _all_cat_points()
    assert logsumexp(joint_log_pdf(est, cats, nums)) == pytest.approx(0.0, abs=1e-12)


def test_categorical_mass_concentrates_on_observed_choices() -> None:
    est = _fit_cats([[1, 2]] * 5)
    cats, nums = _all_cat_points()
    lp = joint_log_pdf(est, cats, nums)
    assert np.argmax(lp) == 1 * 4 + 2


def test_without_observations_the_estimator_is_the_uniform_prior() -> None:
    est = _fit_cats([])
    cats, nums = _all_cat_points()
    assert np.allclose(joint_log_pdf(est, cats, nums), -np.log(12))


def test_marginals_of_a_categorical_estimator_sum_to_one_per_dimension() -> None:
    est = _fit_cats([[0, 1], [2, 3]])
    a = np.array([[0, 0], [1, 0], [2, 0]])
    b = np.array([[0, 0], [0, 1], [0, 2], [0, 3]])
    assert logsumexp(marginal_log_pdf(est, a, np.empty((3, 0)))[:, 0]) == pytest.approx(0.0)
    assert logsumexp(marginal_log_pdf(est, b, np.empty((4, 0)))[:, 1]) == pytest.approx(0.0)


def test_categorical_samples_follow_the_estimated_probabilities() -> None:
    est = _fit_cats([[0, 1], [0, 1], [2, 3]], prior_weight=0.5)
    drawn, _ = sample(est, np.random.default_rng(1), 60_000)
    freq = np.bincount(drawn[:, 0] * 4 + drawn[:, 1], minlength=12) / 60_000
    cats, nums = _all_cat_points()
    assert np.allclose(freq, np.exp(joint_log_pdf(est, cats, nums)), atol=0.006)


def test_integer_probabilities_are_bin_masses_that_sum_to_one() -> None:
    space = encode_space({"k": IntRange(1, 6)})
    est = fit_parzen(
        space,
        np.empty((2, 0), dtype=np.int64),
        np.array([[2.0], [5.0]]),
        np.ones(2),
        prior_weight=1.0,
    )
    ks = np.arange(1, 7, dtype=np.float64)[:, None]
    lp = joint_log_pdf(est, np.empty((6, 0), dtype=np.int64), ks)
    assert logsumexp(lp) == pytest.approx(0.0, abs=1e-12)


def test_float_density_integrates_to_one_within_the_bounds() -> None:
    space = encode_space({"x": FloatRange(-1.0, 2.0)})
    est = fit_parzen(
        space,
        np.empty((3, 0), dtype=np.int64),
        np.array([[-0.9], [0.0], [1.9]]),
        np.ones(3),
        prior_weight=1.0,
    )
    xs = np.linspace(-1.0, 2.0, 20_001)
    density = np.exp(joint_log_pdf(est, np.empty((len(xs), 0), dtype=np.int64), xs[:, None]))
    assert np.trapezoid(density, xs) == pytest.approx(1.0, abs=1e-4)


def test_numeric_samples_stay_in_bounds_and_integers_are_whole() -> None:
    space = encode_space({"k": IntRange(0, 3), "x": FloatRange(1e-3, 1.0, log=True)})
    est = fit_parzen(
        space,
        np.empty((2, 0), dtype=np.int64),
        np.array([[0.0, np.log(1e-3)], [3.0, 0.0]]),
        np.ones(2),
        prior_weight=1.0,
    )
    _, nums = sample(est, np.random.default_rng(0), 5_000, per_dimension=True)
    assert np.all((nums[:, 0] >= 0) & (nums[:, 0] <= 3) & (nums[:, 0] == np.round(nums[:, 0])))
    assert np.all((nums[:, 1] >= np.log(1e-3)) & (nums[:, 1] <= 0.0))


def test_bandwidth_shrinks_with_observations_within_its_clips() -> None:
    span = np.array([10.0])
    widths = [bandwidth(span, n, 2, np.array([False]))[0] for n in (1, 10, 100, 10_000)]
    assert widths == sorted(widths, reverse=True)
    assert widths[0] <= 10.0 and widths[-1] >= 10.0 / 100
    assert bandwidth(np.array([3.0]), 10_000, 1, np.array([True]))[0] == 0.5


def _reference_log_mass(a: float, b: float) -> float:
    if a > 0:  # the mirror image has the same mass and keeps scipy's logcdf exact
        a, b = -b, -a
    log_b, log_a = stats.norm.logcdf(b), stats.norm.logcdf(a)
    return float(log_b + np.log1p(-np.exp(log_a - log_b)))


def test_log_normal_mass_matches_scipy_including_far_tails() -> None:
    a = np.array([-1.0, 0.5, 8.0, -40.0, 30.0])
    b = np.array([1.0, 2.0, 9.0, -39.0, 31.0])
    expected = [_reference_log_mass(x, y) for x, y in zip(a, b, strict=True)]
    got = log_normal_mass(a, b)
    assert np.all(np.isfinite(got))
    assert np.allclose(got, expected, rtol=1e-9)
    assert got[0] == pytest.approx(np.log(stats.norm.cdf(1) - stats.norm.cdf(-1)))


@pytest.mark.parametrize(
    ("a", "width"), [(-1.0, 1e-7), (0.3, 1e-9), (5.0, 1e-12), (0.0, 1e-16), (-8.0, 1e-10)]
)
def test_log_normal_mass_of_a_narrow_interval_is_its_width_times_the_density(a: float, width: float) -> None:
    # The CDFs at the two ends agree to all but a few bits (or all): their difference is no answer. The
    # midpoint rule is exact to width² here.
    b = a + width
    expected = np.log(b - a) + stats.norm.logpdf((a + b) / 2)  # b - a: the width as the floats hold it
    got = log_normal_mass(np.array([a]), np.array([b]))
    assert got[0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("high", [10**15, 2**52])
def test_integers_of_a_huge_range_have_finite_probabilities_peaked_at_the_observation(high: int) -> None:
    space = encode_space({"k": IntRange(-high, high)})
    est = fit_parzen(
        space, np.empty((1, 0), dtype=np.int64), np.array([[high / 2]]), np.ones(1), prior_weight=1.0
    )
    ks = np.array([[high / 2], [high / 2 + 1], [0.0], [-high]])
    lp = joint_log_pdf(est, np.empty((4, 0), dtype=np.int64), ks)
    assert np.all(np.isfinite(lp))
    assert lp[0] == pytest.approx(lp[1], abs=1e-6) and lp[0] > lp[2] > lp[3]


def test_truncated_normal_samples_match_scipy() -> None:
    rng = np.random.default_rng(3)
    x = sample_truncated_normal(rng, np.full(50_000, 0.8), np.full(50_000, 0.3), np.array(0.0), np.array(1.0))
    dist = stats.truncnorm((0.0 - 0.8) / 0.3, (1.0 - 0.8) / 0.3, loc=0.8, scale=0.3)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert stats.kstest(x, dist.cdf).pvalue > 0.01


def test_truncated_normal_far_outside_the_kernel_still_lands_in_bounds() -> None:
    rng = np.random.default_rng(4)
    x = sample_truncated_normal(rng, np.full(1_000, -50.0), np.full(1_000, 1.0), np.array(0.0), np.array(1.0))
    assert np.all((x >= 0.0) & (x <= 1.0))
