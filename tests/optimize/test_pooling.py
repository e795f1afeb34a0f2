"""Pooling evidence across trials to pick the next full evaluation."""

from __future__ import annotations

import random

import numpy as np

from aprompt._optimize import pooling
from aprompt._optimize.final_pick import key_of
from aprompt._optimize.observations import ObservationRows, Observations
from aprompt._optimize.pooling import (
    RIDGE,
    _design,
    _features,
    _gram,
    additive_fit,
    best_combination,
    effect_covariance,
    fit_additive,
    pooled_estimates,
    ranked_combinations,
    score_variance,
    thompson_choice,
)


def _additive_trials(n: int, seed: int) -> list[tuple[dict[str, int], float, int]]:
    rng = random.Random(seed)
    effects = {"a": [0.0, 0.1, 0.3], "b": [0.0, 0.25, 0.05]}
    trials = []
    for _ in range(n):
        choice = {"a": rng.randrange(3), "b": rng.randrange(3)}
        mean = 0.2 + effects["a"][choice["a"]] + effects["b"][choice["b"]] + rng.gauss(0, 0.03)
        trials.append((choice, mean, 30))
    return trials


def test_the_additive_model_recovers_the_effects_of_each_choice() -> None:
    columns, coef = fit_additive(_additive_trials(60, seed=1), ridge=1.0)
    a_effects = [coef[columns[("a", v)]] for v in range(3)]
    b_effects = [coef[columns[("b", v)]] for v in range(3)]
    assert max(range(3), key=lambda v: a_effects[v]) == 2
    assert max(range(3), key=lambda v: b_effects[v]) == 1


def test_the_model_is_fitted_on_each_observations_row_of_features() -> None:
    # One matrix set at once, row for row the features of each choice, whatever parameters it names.
    trials = [*_additive_trials(40, seed=3), ({"a": 1}, 0.5, 10), ({"b": 2, "c": 7}, 0.2, 5)]
    columns, _ = fit_additive(trials[:40])
    expected = np.array([_features(choice, columns) for choice, _, _ in trials])
    found = _design(trials, columns)
    assert found.dtype == expected.dtype and found.shape == expected.shape
    assert (found == expected).all()


def test_a_fit_is_reused_on_the_same_observations_and_refitted_when_they_change() -> None:
    trials = [*_additive_trials(50, seed=4), ({"b": 1, "a": 2}, 0.7, 12), ({"a": 0}, 0.1, 3)]
    fit = additive_fit(trials)
    # The same observations in new objects (a search rebuilds its list at each decision): the same fit.
    assert additive_fit([(dict(c), m, n) for c, m, n in trials]) is fit
    changed = [*trials[:-1], ({"a": 0}, 0.2, 3)]
    refit = additive_fit(changed)
    assert refit is not fit and not np.array_equal(refit.coef, fit.coef)
    # Every fit is the one of each observation's row of features, to the last bit.
    for observations, each in ((trials, fit), (changed, refit), (trials, additive_fit(trials))):
        x = np.array([_features(choice, each.columns) for choice, _, _ in observations])
        w = np.array([float(n) for _, _, n in observations])
        y = np.array([m for _, m, _ in observations])
        assert np.array_equal(each.coef, np.linalg.solve(_gram(x, w, RIDGE), (x * w[:, None]).T @ y))
        gram = _gram(x, w, RIDGE)
        assert np.array_equal(each.covariance(), score_variance(observations) * np.linalg.inv(gram))
        assert fit_additive(observations)[0] == each.columns


def test_each_estimate_is_its_own_row_of_features_times_the_coefficients_to_the_last_bit() -> None:
    # The rows are set at once; each estimate is still its row's own dot product (the estimates rank
    # combinations and break the pick's ties, so a sum in another order must not move them).
    trials = [*_additive_trials(80, seed=6), ({"a": 1, "c": 4}, 0.4, 7)]
    choices = {key_of(c): c for c in ({"a": a, "b": b} for a in range(4) for b in range(4))}
    choices[key_of({"c": 4})] = {"c": 4}
    own = {key_of({"a": 1, "b": 2}): (0.6, 12), key_of({"c": 4}): (0.3, 2)}
    fit = additive_fit(trials)
    estimates = pooled_estimates(trials, own, choices)
    for key, choice in choices.items():
        model = float(_features(choice, fit.columns) @ fit.coef)
        mean, n = own.get(key, (None, 0))
        assert estimates[key] == (model if mean is None else (mean * n + model * 30.0) / (n + 30.0))
    assert pooled_estimates(trials, own, {}) == {}
    assert pooled_estimates([], own, choices) == {key: own[key][0] if key in own else 0.0 for key in choices}


def test_an_untried_combination_of_the_best_parts_is_proposed() -> None:
    trials = [
        ({"a": 2, "b": 0}, 0.50, 30),
        ({"a": 0, "b": 1}, 0.45, 30),
        ({"a": 0, "b": 0}, 0.20, 30),
        ({"a": 1, "b": 2}, 0.35, 30),
    ]
    own = {tuple(sorted(c.items())): (m, n) for c, m, n in trials}
    chosen = best_combination(trials, own, {"a": 3, "b": 3}, exclude=set())
    assert chosen == {"a": 2, "b": 1}


def test_fully_evaluated_combinations_are_skipped() -> None:
    trials = [({"a": 1}, 0.9, 30), ({"a": 0}, 0.1, 30)]
    own = {(("a", 1),): (0.9, 30), (("a", 0),): (0.1, 30)}
    assert best_combination(trials, own, {"a": 2}, exclude={(("a", 1),)}) == {"a": 0}
    assert best_combination([], {}, {"a": 2}, exclude=set()) is None


def _well_sampled_and_one_seen_once(seen_once: float) -> list[tuple[dict[str, int], float, int]]:
    """Four mini-batches of each of six combinations over ``a`` = 0, 1, 3; ``a`` = 2 on one only."""
    trials = []
    for choice, mean in [
        ({"a": 0, "b": 0}, 0.30),
        ({"a": 1, "b": 0}, 0.50),
        ({"a": 0, "b": 1}, 0.45),
        ({"a": 1, "b": 1}, 0.62),
        ({"a": 3, "b": 1}, 0.64),
        ({"a": 3, "b": 0}, 0.52),
    ]:
        trials += [(choice, mean, 30)] * 4
    return [*trials, ({"a": 2, "b": 0}, seen_once, 30)]


def _own(
    trials: list[tuple[dict[str, int], float, int]],
) -> dict[tuple[tuple[str, int], ...], tuple[float, int]]:
    own: dict[tuple[tuple[str, int], ...], tuple[float, int]] = {}
    for choice, mean, n in trials:
        key = tuple(sorted(choice.items()))
        total, seen = own.get(key, (0.0, 0))
        own[key] = ((total * seen + mean * n) / (seen + n), seen + n)
    return own


def test_an_effect_seen_on_fewer_examples_has_a_wider_posterior() -> None:
    trials = _well_sampled_and_one_seen_once(0.5)
    columns, _ = fit_additive(trials)
    covariance = effect_covariance(trials, columns)
    variance = {value: covariance[columns[("a", value)], columns[("a", value)]] for value in (1, 2, 3)}
    assert variance[2] > 1.5 * max(variance[1], variance[3])


def test_with_optimism_a_choice_seen_once_races_right_after_the_best_estimate() -> None:
    trials = _well_sampled_and_one_seen_once(0.45)
    space = {"a": 4, "b": 2}
    plain = ranked_combinations(trials, _own(trials), space, set(), 3)
    optimistic = ranked_combinations(trials, _own(trials), space, set(), 3, optimism=2.0)
    # By the estimate alone, the well-sampled runner-up goes before the choice seen on one mini-batch.
    assert plain == [{"a": 3, "b": 1}, {"a": 1, "b": 1}, {"a": 2, "b": 1}]
    # Optimism keeps the best estimate first and lets the under-sampled choice race beside it.
    assert optimistic == [{"a": 3, "b": 1}, {"a": 2, "b": 1}, {"a": 1, "b": 1}]


def test_a_thompson_draw_takes_the_clearly_best_choice_of_each_parameter() -> None:
    trials = _additive_trials(60, seed=1)  # a = 2 and b = 1 best, each by 0.2 over 900 examples and more
    draws = [thompson_choice(trials, {"a": 3, "b": 3}, (seed,), set()) for seed in range(20)]
    assert draws == [{"a": 2, "b": 1}] * 20


def test_thompson_draws_give_a_choice_seen_once_trials_and_a_clearly_worse_one_none() -> None:
    # a = 2 seen on one mini-batch as about as good as the best; a = 0 on 240 examples 0.17 behind.
    trials = _well_sampled_and_one_seen_once(0.5)
    space = {"a": 4, "b": 2}
    drawn = [thompson_choice(trials, space, (seed,), set()) for seed in range(200)]
    counts = {value: sum(d is not None and d["a"] == value for d in drawn) for value in range(4)}
    assert counts[2] >= 20
    assert counts[0] == 0


def test_a_choice_no_observation_has_is_drawn_from_the_prior() -> None:
    trials = _well_sampled_and_one_seen_once(0.5)
    drawn = [thompson_choice(trials, {"a": 5, "b": 2}, (seed,), set()) for seed in range(200)]
    assert any(d is not None and d["a"] == 4 for d in drawn)


def test_thompson_draws_pass_over_combinations_to_avoid() -> None:
    trials = _well_sampled_and_one_seen_once(0.5)
    best = (("a", 3), ("b", 1))
    plain = [thompson_choice(trials, {"a": 4, "b": 2}, (seed,), set()) for seed in range(20)]
    avoiding = [thompson_choice(trials, {"a": 4, "b": 2}, (seed,), {best}) for seed in range(20)]
    assert any(d is not None and tuple(sorted(d.items())) == best for d in plain)
    assert all(d is not None and tuple(sorted(d.items())) != best for d in avoiding)


def test_when_every_draw_is_avoided_the_first_is_taken() -> None:
    trials = _additive_trials(60, seed=1)  # every draw is a = 2, b = 1
    best = (("a", 2), ("b", 1))
    assert thompson_choice(trials, {"a": 3, "b": 3}, (0,), {best}) == {"a": 2, "b": 1}


def test_thompson_choice_is_a_function_of_its_seed() -> None:
    trials = _well_sampled_and_one_seen_once(0.5)
    space = {"a": 4, "b": 2}
    first = [thompson_choice(trials, space, (7, n), set()) for n in range(30)]
    again = [thompson_choice(trials, space, (7, n), set()) for n in range(30)]
    assert first == again
    assert len({tuple(sorted(d.items())) for d in first if d is not None}) > 1
    assert thompson_choice([], space, (7, 0), set()) is None


def test_observations_kept_as_added_fit_as_the_same_list_does() -> None:
    rng = random.Random(3)
    parts = [ObservationRows(), ObservationRows()]
    for step in range(300):
        part = parts[0] if rng.random() < 0.7 else parts[1]
        choice = {"b": rng.randrange(3), "a": rng.randrange(4)}
        part.add(choice, rng.random(), rng.randrange(1, 9))
        kept = Observations(parts)
        if step % 7:
            continue
        parts[1].add({"a": 9, "b": 9}, 0.5, 3)  # after the snapshot: not in it
        plain = [*parts[0].observations, *parts[1].observations[:-1]]
        assert list(kept) == plain
        pooling._LAST.clear()  # each fitted anew, not the last fit again
        ours = additive_fit(kept)
        pooling._LAST.clear()
        theirs = additive_fit(list(plain))
        assert ours.columns == theirs.columns
        assert ours.coef.tobytes() == theirs.coef.tobytes()
        assert ours.gram.tobytes() == theirs.gram.tobytes()
        assert ours.sigma2 == theirs.sigma2
