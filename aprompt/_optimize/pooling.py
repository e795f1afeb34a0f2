"""Which combination deserves the next full evaluation: evidence pooled across trials.

A mini-batch score says something about every candidate in the combination, not only about the
combination: trials that share an instruction or a demo set inform each other. We estimate each
combination's mean with an additive model — intercept plus one effect per (parameter, choice), ridge-
regularised towards zero and fitted on every trial, weighted by its mini-batch size — and blend it with
the combination's own mean (shrinkage: the more examples a combination has, the more its own mean counts).

Besides the combinations already tried, the model's best guesses are considered too: its argmax and the
single-parameter changes of it. A combination never tried on a mini-batch can so be fully evaluated when
the evidence says it combines the best parts, which a run of a few dozen trials would rarely stumble on.

With ``optimism`` (the search's races), the most promising combination still comes first, and the rest are
ranked by an upper bound instead of the estimate: the estimate plus ``optimism`` posterior standard
deviations (the ridge fit read as a Bayesian posterior, :func:`effect_covariance`). A choice seen in one or
two mini-batches has its effect shrunk far towards 0 by the ridge, so ranked by the estimate alone the
combination that swaps it in would rarely race, however good it is; its wide posterior lets it in beside
the best-estimated one, and the race's first rung decides cheaply.

The same posterior chooses the search's trials once the TPE's covering trials have tried every choice
(:func:`thompson_choice`, Thompson sampling): each parameter takes its best effect under one draw, so a
choice whose few noisy mini-batches leave it possibly the best keeps getting trials until the evidence
settles it, which the TPE's good/bad split of raw scores does not aim at (on the simulated world of
``bench/regret.py`` this lowered the regret; see ``bench/results/regret.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from aprompt._optimize.observations import Key, Observations, combination_key, observation_rows

#: The ridge of :func:`fit_additive`, in examples.
RIDGE = 50.0
#: Posterior standard deviations added to the estimate to rank the race entrants after the first.
RACE_OPTIMISM = 2.0


def _features(choice: Mapping[str, int], columns: Mapping[tuple[str, int], int]) -> np.ndarray:
    row = np.zeros(len(columns) + 1)
    row[0] = 1.0
    for name, value in choice.items():
        column = columns.get((name, int(value)))
        if column is not None:
            row[column] = 1.0
    return row


def _design(
    observations: Sequence[tuple[Mapping[str, int], float, int]], columns: Mapping[tuple[str, int], int]
) -> np.ndarray:
    """The rows of :func:`_features` of every observation as one matrix."""
    return _feature_rows([choice for choice, _, _ in observations], columns)


def _feature_rows(choices: Sequence[Mapping[str, int]], columns: Mapping[tuple[str, int], int]) -> np.ndarray:
    """The rows of :func:`_features` of ``choices`` as one matrix, set in one step: the same rows,
    without an array per row (a model is fitted on every trial, and every combination estimated, many
    times in a run)."""
    x = np.zeros((len(choices), len(columns) + 1))
    # A choice the columns lack sets the intercept's column, which is 1 anyway.
    get = columns.get
    cols = [get((name, int(value)), 0) for choice in choices for name, value in choice.items()]
    rows = np.repeat(np.arange(len(choices)), [len(choice) for choice in choices])
    x[:, 0] = 1.0
    x[rows, cols] = 1.0
    return x


def fit_additive(
    observations: Sequence[tuple[Mapping[str, int], float, int]], ridge: float = RIDGE
) -> tuple[dict[tuple[str, int], int], np.ndarray]:
    """Fit score ≈ intercept + Σ effect[(param, choice)] by weighted ridge regression.

    ``observations`` are (choice, mean score, number of examples). ``ridge`` is in examples: an effect
    needs about that many examples of evidence to move halfway from 0 to its data value.
    """
    fit = additive_fit(observations, ridge)
    return dict(fit.columns), fit.coef.copy()


@attrs.frozen(eq=False)
class AdditiveFit:
    """:func:`fit_additive` of some observations with what its posterior needs: the same columns and
    coefficients, the regularised Gram matrix and the :func:`score_variance`."""

    columns: dict[tuple[str, int], int]
    coef: np.ndarray
    gram: np.ndarray
    sigma2: float
    _covariance: list[np.ndarray] = attrs.field(factory=list)

    def covariance(self) -> np.ndarray:
        """:func:`effect_covariance` of the same observations (computed once)."""
        if not self._covariance:
            self._covariance.append(np.asarray(self.sigma2 * np.linalg.inv(self.gram)))
        return self._covariance[0]


#: The last fit and what it was fitted on: a search asks again on unchanged evidence (a race's draws).
_LAST: list[tuple[tuple[object, ...], AdditiveFit]] = []


def additive_fit(
    observations: Sequence[tuple[Mapping[str, int], float, int]], ridge: float = RIDGE
) -> AdditiveFit:
    """The :class:`AdditiveFit` of ``observations``; the same numbers as fitting on each observation's
    row (the design is built from the distinct combinations' rows), and the last fit again when asked on
    the same observations. A model is fitted on every trial at every decision of a run, so the work done
    per observation in Python is one lookup, and none for :class:`Observations` (their rows are kept as
    they are added)."""
    if isinstance(observations, Observations):
        distinct, index, y, w = observations.rows()
    else:
        distinct, index, y, w = observation_rows(observations)
    memo = (tuple(distinct), index.tobytes(), y.tobytes(), w.tobytes(), ridge)
    last = _LAST[0] if _LAST else None
    if last is not None and last[0] == memo:
        return last[1]
    # Columns in order of first appearance, each choice's parameters sorted: a later repeat of a
    # combination adds none, so the distinct ones in their order give the same columns.
    columns: dict[tuple[str, int], int] = {}
    for key in distinct:
        for item in key:
            columns.setdefault(item, len(columns) + 1)
    rows = np.zeros((len(distinct), len(columns) + 1))
    rows[:, 0] = 1.0
    at = np.repeat(np.arange(len(distinct)), [len(key) for key in distinct])
    rows[at, [columns[item] for key in distinct for item in key]] = 1.0
    x = rows[index]
    # Each entry of the Gram matrix sums whole numbers (0/1 features times numbers of examples), exact in
    # any order: summed per distinct combination it is the same matrix, at the cost of the combinations.
    gram = _gram(rows, np.bincount(index, weights=w, minlength=len(distinct)), ridge)
    coef = np.linalg.solve(gram, (x * w[:, None]).T @ y)
    m = float(np.clip((w @ y) / max(float(w.sum()), 1e-12), 0.05, 0.95))
    fit = AdditiveFit(columns, coef, gram, m * (1.0 - m))
    _LAST[:] = [(memo, fit)]
    return fit


def _gram(x: np.ndarray, w: np.ndarray, ridge: float) -> np.ndarray:
    penalty = np.full(x.shape[1], ridge)
    penalty[0] = 1e-6  # the intercept is not shrunk
    return np.asarray((x * w[:, None]).T @ x + np.diag(penalty))


def score_variance(observations: Sequence[tuple[Mapping[str, int], float, int]]) -> float:
    """One example's score variance, ``m(1 − m)`` for the examples' mean score ``m`` (kept within
    [0.05, 0.95]): exact for scores of 0 or 1, an upper bound for scores in [0, 1]."""
    w = np.array([float(n) for _, _, n in observations])
    y = np.array([score for _, score, _ in observations])
    m = float(np.clip((w @ y) / max(float(w.sum()), 1e-12), 0.05, 0.95))
    return m * (1.0 - m)


def effect_covariance(
    observations: Sequence[tuple[Mapping[str, int], float, int]],
    columns: Mapping[tuple[str, int], int],
    ridge: float = RIDGE,
) -> np.ndarray:
    """The posterior covariance of :func:`fit_additive`'s coefficients: each effect a priori within
    ``σ²/ridge`` of 0, a mean of ``n`` examples within ``σ²/n`` of the model, ``σ²`` the
    :func:`score_variance`. An effect seen on few examples has a wide posterior."""
    fit = additive_fit(observations, ridge)
    if fit.columns == columns:
        return fit.covariance().copy()
    x = _design(observations, columns)
    w = np.array([float(n) for _, _, n in observations])
    return np.asarray(score_variance(observations) * np.linalg.inv(_gram(x, w, ridge)))


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
    if not observations:
        return {key: own[0] if (own := own_scores.get(key)) is not None else 0.0 for key in choices}
    fit = additive_fit(observations)
    # One dot product per row, as of each row alone: a product of the whole matrix may sum in another
    # order (BLAS blocks it), and the estimates rank combinations and break ties in the pick.
    coef = fit.coef
    models = [float(row @ coef) for row in _feature_rows(list(choices.values()), fit.columns)]
    out: dict[Key, float] = {}
    for key, model in zip(choices, models, strict=True):
        own = own_scores.get(key)
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
    optimism: float = 0.0,
) -> list[dict[str, int]]:
    """Up to ``limit`` combinations not in ``exclude``, highest estimated mean first (equal estimates
    by the choice itself); with ``optimism``, the first so and the rest by their upper bound (see the
    module docstring).

    Args:
        observations: every trial as (choice, mean score, examples).
        own_scores: per tried combination, its pooled mean and number of examples.
        space: parameter name -> number of choices (for the model's own proposals).
        exclude: combinations already fully evaluated.
        limit: how many to return at most.
        prior_examples: how many examples the model estimate is worth when blended with a combination's
            own mean.
        optimism: posterior standard deviations added to rank all but the first; 0 ranks by the
            estimate alone.
    """
    if not observations:
        return []
    fit = additive_fit(observations)
    columns, coef = fit.columns, fit.coef
    candidates: dict[Key, dict[str, int]] = {}
    for choice, _, _ in observations:
        candidates.setdefault(combination_key(choice), dict(choice))
    argmax: dict[str, int] = {}
    for name, n_choices in space.items():
        effects = [coef[columns[(name, v)]] if (name, v) in columns else -np.inf for v in range(n_choices)]
        argmax[name] = int(np.argmax(effects))
    candidates.setdefault(combination_key(argmax), argmax)
    for name, n_choices in space.items():
        for value in range(n_choices):
            if (name, value) in columns:
                variant = {**argmax, name: value}
                candidates.setdefault(combination_key(variant), variant)
    open_ = {key: choice for key, choice in candidates.items() if key not in exclude}
    estimates = pooled_estimates(observations, own_scores, open_, prior_examples)
    ranked = sorted(estimates.items(), key=lambda item: (-item[1], item[0]))
    if optimism > 0.0 and len(ranked) > 1:
        covariance = fit.covariance()
        sigma2 = fit.sigma2

        def upper(key: Key) -> float:
            row = _features(open_[key], columns)
            variance = float(row @ covariance @ row)
            own = own_scores.get(key)
            if own is not None:  # its own examples narrow it further (the blend in pooled_estimates)
                variance = 1.0 / (1.0 / variance + own[1] / sigma2)
            return estimates[key] + optimism * math.sqrt(variance)

        ranked = [ranked[0], *sorted(ranked[1:], key=lambda item: (-upper(item[0]), item[0]))]
    return [dict(candidates[key]) for key, _ in ranked[:limit]]


def thompson_choice(
    observations: Sequence[tuple[Mapping[str, int], float, int]],
    space: Mapping[str, int],
    seed: Sequence[int],
    avoid: set[Key],
    draws: int = 16,
) -> dict[str, int] | None:
    """A combination to try next: the best one under a draw of the effects from their posterior.

    Thompson sampling on the additive model of :func:`fit_additive`: the coefficients are drawn from
    the ridge fit read as a Bayesian posterior (:func:`effect_covariance`; a choice no observation has
    from the prior, within ``σ²/ridge`` of 0), and each parameter takes its best drawn effect. A choice
    seen on few examples has a wide posterior, so it is drawn as the best now and then when it may be,
    and gets the trials that settle it; a choice clearly behind is almost never drawn. Draws whose
    combination is in ``avoid`` are passed over (up to ``draws`` draws; then the first). A pure
    function of its arguments (``seed`` seeds the draws); ``None`` without observations.
    """
    if not observations:
        return None
    fit = additive_fit(observations)
    columns, coef, covariance = fit.columns, fit.coef, fit.covariance()
    prior_sd = math.sqrt(fit.sigma2 / RIDGE)
    # Draws through the Cholesky factor, which is unique: an eigendecomposition's eigenvector signs and
    # order depend on the BLAS build and the CPU, so the same seed drew differently on another machine
    # (and a run resumed there took another path).
    try:
        factor = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:  # positive definite in exact arithmetic; rounding may say otherwise
        factor = np.linalg.cholesky(
            covariance + 1e-12 * np.eye(len(coef)) * max(1.0, float(np.trace(covariance)))
        )
    rng = np.random.default_rng(list(seed))
    first: dict[str, int] | None = None
    for _ in range(draws):
        sample = coef + factor @ rng.standard_normal(len(coef))
        unseen = rng.normal(0.0, prior_sd, size=sum(space.values()))
        choice: dict[str, int] = {}
        offset = 0
        for name, n_choices in space.items():
            effects = [
                sample[columns[(name, v)]] if (name, v) in columns else unseen[offset + v]
                for v in range(n_choices)
            ]
            choice[name] = int(np.argmax(effects))
            offset += n_choices
        if combination_key(choice) not in avoid:
            return choice
        first = first or choice
    return first


@attrs.define
class ScorePool:
    """Per-combination evidence: every example score seen in its mini-batches (trials, race rungs), by
    example id; without pooling, the search ranks the combinations by their own means here."""

    scores: dict[Key, dict[str, float]] = attrs.Factory(dict)
    choices: dict[Key, dict[str, int]] = attrs.Factory(dict)

    def add(self, choice: Mapping[str, int], scores: Mapping[str, float]) -> None:
        """Add ``choice``'s ``scores`` (a later score of an example replaces the earlier one)."""
        key = combination_key(choice)
        self.choices.setdefault(key, dict(choice))
        self.scores.setdefault(key, {}).update(scores)

    def copy(self) -> ScorePool:
        """A copy that later additions to either do not reach."""
        return ScorePool(
            {key: dict(scores) for key, scores in self.scores.items()},
            {key: dict(choice) for key, choice in self.choices.items()},
        )

    def ranked_untested(self, tested: set[Key], limit: int) -> list[dict[str, int]]:
        """Up to ``limit`` combinations not in ``tested``, best own mean first."""
        ranked = [
            (sum(s.values()) / len(s), len(s), key)
            for key, s in self.scores.items()
            if s and key not in tested
        ]
        # Best mean; more evidence breaks ties; the key keeps the order deterministic.
        ranked.sort(key=lambda item: (item[0], item[1], [-v for _, v in item[2]]), reverse=True)
        return [self.choices[key] for _, _, key in ranked[:limit]]
