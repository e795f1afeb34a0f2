"""Good/bad split, gamma and observation weights."""

from __future__ import annotations

import numpy as np

from aprompt.tpe import default_gamma, flat_weights, recency_weights
from aprompt.tpe._split import split_good_bad


def test_gamma_takes_a_quarter_rounded_up_capped_at_25() -> None:
    assert [default_gamma(n) for n in (0, 1, 2, 4, 5, 10, 40, 100, 5_000)] == [
        0,
        1,
        1,
        1,
        2,
        3,
        10,
        25,
        25,
    ]


def test_split_puts_the_highest_values_in_the_good_group() -> None:
    values = np.array([0.2, 0.9, 0.5, 0.7])
    good, bad = split_good_bad(values, np.arange(4), 2)
    assert good.tolist() == [1, 3] and bad.tolist() == [0, 2]


def test_split_breaks_ties_in_favour_of_the_earlier_trial() -> None:
    values = np.array([0.5, 0.5, 0.5])
    good, _ = split_good_bad(values, np.array([7, 3, 5]), 1)
    assert good.tolist() == [1]


def test_flat_weights_are_equal() -> None:
    assert flat_weights(3).tolist() == [1.0, 1.0, 1.0]


def test_recency_weights_favour_recent_trials_only_past_the_recent_window() -> None:
    assert recency_weights(10, n_recent=25).tolist() == [1.0] * 10
    w = recency_weights(100, n_recent=25)
    assert w[0] == 1 / 100 and np.all(np.diff(w) >= 0) and np.all(w[-25:] == 1.0)
