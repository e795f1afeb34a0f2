"""Pooling evidence across trials to pick the next full evaluation."""

from __future__ import annotations

import random

from aprompt._optimize.pooling import best_combination, fit_additive


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
