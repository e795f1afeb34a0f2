"""The TPE finds better points than random search on noisy synthetic prompt-search problems.

Each problem has 4 parameters of 12 choices (a MIPRO-sized joint choice of instructions and demo sets)
and a known true score per point in [0.2, 0.8]. A trial observes the true score plus Gaussian noise of
sd 0.08, about the standard error of a 35-example mini-batch, clipped to [0, 1]. Regret after ``n``
trials is the best true score in the space minus the best true score among the points evaluated: it
measures what the search found, apart from how a caller later picks among them (the search loop picks
by full evaluations, which this test does not model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from aprompt.tpe import Categorical, Suggestion, TPESampler

N_PARAMS, N_CHOICES, NOISE_SD = 4, 12, 0.08
SEEDS = range(20)
N_TRIALS = 60
# The TPE's mean regret must be below this fraction of random search's.
MARGIN = 0.7


def true_scores(kind: str, seed: int) -> npt.NDArray[np.float64]:
    """The true score of every point, as an array indexed by the 4 choices.

    ``additive``: a random effect per choice of each parameter, summed. ``pairwise``: the same plus a
    random effect per pair of choices of parameters (0, 1) and (2, 3), so the best choice of one depends
    on the other (as the best instruction depends on the demos).
    """
    rng = np.random.default_rng([2024, seed, kind == "pairwise"])
    axes = np.meshgrid(*[np.arange(N_CHOICES)] * N_PARAMS, indexing="ij")
    total = np.zeros((N_CHOICES,) * N_PARAMS)
    for d in range(N_PARAMS):
        total += rng.random(N_CHOICES)[axes[d]]
    if kind == "pairwise":
        for a, b in [(0, 1), (2, 3)]:
            total += rng.random((N_CHOICES, N_CHOICES))[axes[a], axes[b]]
    scaled: npt.NDArray[np.float64] = 0.2 + 0.6 * (total - total.min()) / (total.max() - total.min())
    return scaled


class Sampler(Protocol):
    def ask(self) -> Suggestion: ...
    def tell(self, trial: Suggestion, value: float) -> None: ...


SamplerFactory = Callable[[dict[str, Categorical], int, int], Sampler]


class RandomSearch:
    """Uniform random choices behind the sampler's ask/tell interface."""

    def __init__(self, space: dict[str, Categorical], seed: int) -> None:
        self._space, self._rng, self._number = space, np.random.default_rng(seed), 0

    def ask(self) -> Suggestion:
        params = {k: int(self._rng.integers(d.n_choices)) for k, d in self._space.items()}
        self._number += 1
        return Suggestion(self._number - 1, dict(params))

    def tell(self, trial: Suggestion, value: float) -> None:
        pass


def regret(make: SamplerFactory, kind: str, seed: int) -> float:
    scores = true_scores(kind, seed)
    space = {f"p{d}": Categorical(N_CHOICES) for d in range(N_PARAMS)}
    sampler = make(space, seed, N_TRIALS)
    noise = np.random.default_rng([7, seed])
    best = 0.0
    for _ in range(N_TRIALS):
        suggestion = sampler.ask()
        true = float(scores[tuple(int(suggestion.params[f"p{d}"]) for d in range(N_PARAMS))])
        best = max(best, true)
        sampler.tell(suggestion, float(np.clip(true + noise.normal(0.0, NOISE_SD), 0.0, 1.0)))
    return float(scores.max() - best)


def mean_regret(make: SamplerFactory, kind: str) -> float:
    return float(np.mean([regret(make, kind, seed) for seed in SEEDS]))


def tpe(space: dict[str, Categorical], seed: int, n_trials: int) -> Sampler:
    return TPESampler(space, seed=seed, n_trials_hint=n_trials)


def random_search(space: dict[str, Categorical], seed: int, n_trials: int) -> Sampler:
    return RandomSearch(space, seed)


def another_random_search(space: dict[str, Categorical], seed: int, n_trials: int) -> Sampler:
    return RandomSearch(space, 10_000 + seed)


def beats_random_search(make: SamplerFactory, kind: str) -> bool:
    return mean_regret(make, kind) < MARGIN * mean_regret(random_search, kind)


def test_tpe_beats_random_search_on_an_additive_problem() -> None:
    assert beats_random_search(tpe, "additive")


def test_tpe_beats_random_search_on_a_problem_with_pairwise_interactions() -> None:
    assert beats_random_search(tpe, "pairwise")


def test_the_comparison_rejects_a_sampler_that_is_random_search() -> None:
    assert not beats_random_search(another_random_search, "additive")
    assert not beats_random_search(another_random_search, "pairwise")


class InBatches:
    """Asks ``size`` suggestions at a time and tells them only once the whole batch has been asked."""

    def __init__(self, sampler: TPESampler, size: int) -> None:
        self._sampler, self._size = sampler, size
        self._queue: list[Suggestion] = []

    def ask(self) -> Suggestion:
        if not self._queue:
            self._queue = self._sampler.ask_batch(self._size)
        return self._queue.pop(0)

    def tell(self, trial: Suggestion, value: float) -> None:
        self._sampler.tell(trial, value)


def tpe_in_batches_of_4(space: dict[str, Categorical], seed: int, n_trials: int) -> Sampler:
    return InBatches(TPESampler(space, seed=seed, n_trials_hint=n_trials), 4)


def test_tpe_asked_in_batches_still_beats_random_search() -> None:
    assert beats_random_search(tpe_in_batches_of_4, "pairwise")
