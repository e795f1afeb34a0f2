"""Which combination deserves the next full evaluation: evidence pooled across trials.

A mini-batch score says something about every candidate in the combination, not only about the
combination: trials that share an instruction or a demo set inform each other. We estimate each
combination's mean with an additive model — intercept plus one effect per (parameter, choice), ridge-
regularised towards zero and fitted on every trial, weighted by its mini-batch size — and blend it with
the combination's own mean (shrinkage: the more examples a combination has, the more its own mean counts).

Besides the combinations already tried, the model's best guesses are considered too: its argmax and the
single-parameter changes of it. A combination never tried on a mini-batch can so be fully evaluated when
the evidence says it combines the best parts, which a run of a few dozen trials would rarely stumble on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Key = tuple[tuple[str, int], ...]


def _features(choice: Mapping[str, int], columns: Mapping[tuple[str, int], int]) -> np.ndarray:
    row = np.zeros(len(columns) + 1)
    row[0] = 1.0
    for name, value in choice.items():
        column = columns.get((name, int(value)))
        if column is not None:
            row[column] = 1.0
    return row


def fit_additive(
    observations: Sequence[tuple[Mapping[str, int], float, int]], ridge: float = 50.0
) -> tuple[dict[tuple[str, int], int], np.ndarray]:
    """Fit score ≈ intercept + Σ effect[(param, choice)] by weighted ridge regression.

    ``observations`` are (choice, mean score, number of examples). ``ridge`` is in examples: an effect
    needs about that many examples of evidence to move halfway from 0 to its data value.
    """
    columns: dict[tuple[str, int], int] = {}
    for choice, _, _ in observations:
        for name, value in sorted(choice.items()):
            columns.setdefault((name, int(value)), len(columns) + 1)
    x = np.array([_features(choice, columns) for choice, _, _ in observations])
    y = np.array([score for _, score, _ in observations])
    w = np.array([float(n) for _, _, n in observations])
    penalty = np.full(len(columns) + 1, ridge)
    penalty[0] = 1e-6  # the intercept is not shrunk
    gram = (x * w[:, None]).T @ x + np.diag(penalty)
    coef = np.linalg.solve(gram, (x * w[:, None]).T @ y)
    return columns, coef


def _key(choice: Mapping[str, int]) -> Key:
    return tuple(sorted((k, int(v)) for k, v in choice.items()))


def pooled_estimates(
    observations: Sequence[tuple[Mapping[str, int], float, int]],
    own_scores: Mapping[Key, tuple[float, int]],
    choices: Mapping[Key, Mapping[str, int]],
    prior_examples: float = 30.0,
) -> dict[Key, float]:
    """Each combination's estimated mean: the additive model's prediction blended with its own mean.

    Args:
        observations: (choice, mean score, examples) of every scored evaluation, to fit the model on.
        own_scores: per combination with evidence of its own, its mean and number of examples.
        choices: the combinations to estimate, by key.
        prior_examples: how many examples the model estimate is worth when blended with a combination's
            own mean.
    """
    if observations:
        columns, coef = fit_additive(observations)
    out: dict[Key, float] = {}
    for key, choice in choices.items():
        own = own_scores.get(key)
        if not observations:
            out[key] = own[0] if own is not None else 0.0
            continue
        model = float(_features(choice, columns) @ coef)
        if own is None:
            out[key] = model
        else:
            mean, n = own
            out[key] = (mean * n + model * prior_examples) / (n + prior_examples)
    return out


def best_combination(
    observations: Sequence[tuple[Mapping[str, int], float, int]],
    own_scores: Mapping[Key, tuple[float, int]],
    space: Mapping[str, int],
    exclude: set[Key],
    prior_examples: float = 30.0,
) -> dict[str, int] | None:
    """The combination with the highest estimated mean that is not in ``exclude`` (the first of
    :func:`ranked_combinations`)."""
    ranked = ranked_combinations(observations, own_scores, space, exclude, 1, prior_examples)
    return ranked[0] if ranked else None


def ranked_combinations(
    observations: Sequence[tuple[Mapping[str, int], float, int]],
    own_scores: Mapping[Key, tuple[float, int]],
    space: Mapping[str, int],
    exclude: set[Key],
    limit: int,
    prior_examples: float = 30.0,
) -> list[dict[str, int]]:
    """Up to ``limit`` combinations not in ``exclude``, highest estimated mean first (equal estimates
    by the choice itself).

    Args:
        observations: every trial as (choice, mean score, examples).
        own_scores: per tried combination, its pooled mean and number of examples.
        space: parameter name -> number of choices (for the model's own proposals).
        exclude: combinations already fully evaluated.
        limit: how many to return at most.
        prior_examples: how many examples the model estimate is worth when blended with a combination's
            own mean.
    """
    if not observations:
        return []
    columns, coef = fit_additive(observations)
    candidates: dict[Key, dict[str, int]] = {}
    for choice, _, _ in observations:
        candidates.setdefault(_key(choice), dict(choice))
    argmax: dict[str, int] = {}
    for name, n_choices in space.items():
        effects = [coef[columns[(name, v)]] if (name, v) in columns else -np.inf for v in range(n_choices)]
        argmax[name] = int(np.argmax(effects))
    candidates.setdefault(_key(argmax), argmax)
    for name, n_choices in space.items():
        for value in range(n_choices):
            if (name, value) in columns:
                variant = {**argmax, name: value}
                candidates.setdefault(_key(variant), variant)
    open_ = {key: choice for key, choice in candidates.items() if key not in exclude}
    estimates = pooled_estimates(observations, own_scores, open_, prior_examples)
    ranked = sorted(estimates.items(), key=lambda item: (-item[1], item[0]))
    return [dict(candidates[key]) for key, _ in ranked[:limit]]
