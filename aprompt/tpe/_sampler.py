"""The TPE sampler: ask/tell over a search space, a thin orchestrator of the numeric parts.

One ask, for trial number ``t``:

1. ``rng = numpy.random.default_rng([seed, t])``: the randomness of a suggestion is a function of the seed
   and its trial number alone, so a sampler rebuilt from its trials suggests exactly what the original
   would have.
2. While fewer than ``n_startup`` trials are complete, draw uniformly at random.
3. Otherwise split the complete trials into good (the ``gamma(n)`` best) and bad, add the pending
   trials to the bad ones (constant liar: a point in flight counts as a poor one, so a batch spreads
   out), fit a Parzen estimator ``l`` to the good and ``g`` to the bad, and draw ``n_ei_candidates``
   points from ``l``. Multivariate (the default): each candidate comes from one kernel of ``l``, all
   parameters together, and is scored by the joint ``log l(x) - log g(x)``, so combinations that worked
   together are proposed together. Otherwise each parameter comes from its own kernel and the score is
   the sum of the per-parameter log ratios.
4. Keep the best-scoring candidate whose point is not held by a pending trial nor, with
   ``avoid_repeats`` (the default), by a complete one. When every candidate is held and the space is
   small and finite (categorical and integer parameters, at most 4,096 points), the best-scoring point
   no trial holds (during the start-up, one drawn uniformly); otherwise (every point held, or a space
   too large to list) the best candidate. With ``avoid_repeats``, that last resort looks first for a
   point no *pending* trial holds, the same way: a point in flight is repeated only when all are.
   With noisy scores a repeat spends a trial re-measuring a point the caller can already judge
   (the search loop pools mini-batch evidence and fully evaluates the leaders), while a new point can
   only add to what the search has found.
5. Covering: while ``t < n_cover``, each categorical parameter that has a choice no trial (pending or
   complete) holds takes one of those choices instead, drawn with ``rng``. So the first
   ``max(n_choices)`` trials try every choice of every parameter at least once (a seeded round-robin,
   parameters paired at random), and a choice added later (a grown space rebuilt from its history) is
   tried next. A choice never tried has no evidence for the estimators, nor for a caller that pools
   trial scores per choice, and a short run would otherwise leave some untried (on the simulated world
   of ``bench/regret.py`` covering lowered the mean regret; see ``bench/results/regret.md``).

Failed trials (:meth:`TPESampler.tell_failed`) are left out of both estimators and their points stay
available: a failure (an LM outage, say) says nothing about how good the params are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from aprompt._errors import ConfigError
from aprompt.tpe import _parzen
from aprompt.tpe._space import (
    Distribution,
    FloatArray,
    IntArray,
    decode_params,
    encode_params,
    encode_space,
    enumerate_points,
    sample_uniform,
)
from aprompt.tpe._split import default_gamma, flat_weights, split_good_bad
from aprompt.tpe._trials import (
    Suggestion,
    TrialError,
    TrialRecord,
    TrialState,
    TrialTable,
    check_value,
    point_key,
)


def default_n_cover(n_trials_hint: int | None) -> int | None:
    """Trial numbers below which untried categorical choices are forced: half the planned trials (at
    least one), so a space with more choices than that still leaves the model half the run; without a
    hint ``None``: no limit (covering ends by itself once every choice has a trial)."""
    if n_trials_hint is None:
        return None
    return max(1, math.ceil(n_trials_hint / 2))


def default_n_startup(n_trials_hint: int | None, n_dims: int) -> int:
    """Random start-up trials before the model takes over: a fifth of the planned trials, from 2 to 10.

    A 10-trial run gets 2 random trials, a 20-trial run 4, runs of 46 or more 10 (Optuna's fixed
    default). Without a hint: two per parameter, from 2 to 10. The estimators' prior keeps exploring
    after the start-up, so a short run loses little by starting the model early, and would spend most of
    its budget on random search otherwise: on the synthetic 4 x 12 problems of ``bench/tpe.py``
    (200 seeds), 10-trial runs with 2 start-up trials ended with 7-9% lower regret than with 10.
    """
    if n_trials_hint is None:
        return min(10, max(2, 2 * n_dims))
    return min(10, max(2, math.ceil(n_trials_hint / 5)))


class TPESampler:
    """A Tree-structured Parzen Estimator that **maximises** an objective through ask/tell.

    Args:
        space: parameter name -> :class:`Categorical`, :class:`IntRange` or :class:`FloatRange`.
        seed: a non-negative int; with it and the trials told so far, every suggestion is determined.
        n_startup: random trials before the model is used; default :func:`default_n_startup`.
        n_trials_hint: the run's planned number of trials, used only for the default ``n_startup``.
        gamma: ``n_complete -> n_good`` (an int); default :func:`default_gamma`.
        prior_weight: the prior kernel's weight (each observation weighs about 1); must be > 0.
        n_ei_candidates: points drawn from the good estimator per suggestion.
        multivariate: model the parameters jointly (default) or each on its own.
        weights: ``n -> (n,) array`` of observation weights in trial order; default equal weights
            (:func:`recency_weights` favours recent trials).
        avoid_repeats: pass over candidates at the point of a complete trial, not only of a pending one.
        n_cover: trials numbered below this take, per categorical parameter, a choice no trial holds yet
            while there is one (step 5 above); default :func:`default_n_cover` (from ``n_trials_hint``;
            without one, no limit); ``0`` turns covering off.

    Example::

        sampler = TPESampler({"instruction": Categorical(6), "demos": Categorical(6)}, seed=1)
        for _ in range(10):
            suggestion = sampler.ask()
            sampler.tell(suggestion, score(suggestion.params))
    """

    def __init__(
        self,
        space: Mapping[str, Distribution],
        *,
        seed: int = 0,
        n_startup: int | None = None,
        n_trials_hint: int | None = None,
        gamma: Callable[[int], int] = default_gamma,
        prior_weight: float = 1.0,
        n_ei_candidates: int = 24,
        multivariate: bool = True,
        weights: Callable[[int], FloatArray] = flat_weights,
        avoid_repeats: bool = True,
        n_cover: int | None = None,
    ) -> None:
        self._space = dict(space)
        self._encoded = encode_space(space)
        _check_int("seed", seed, minimum=0)
        if n_trials_hint is not None:
            _check_int("n_trials_hint", n_trials_hint, minimum=1)
        if n_startup is not None:
            _check_int("n_startup", n_startup, minimum=0)
        if n_cover is not None:
            _check_int("n_cover", n_cover, minimum=0)
        _check_int("n_ei_candidates", n_ei_candidates, minimum=1)
        if isinstance(prior_weight, bool) or not isinstance(prior_weight, int | float):
            raise ConfigError(f"prior_weight must be a number, got {prior_weight!r}")
        if not (math.isfinite(prior_weight) and prior_weight > 0):
            raise ConfigError(f"prior_weight must be finite and > 0, got {prior_weight!r}")
        if not callable(gamma) or not callable(weights):
            raise ConfigError("gamma and weights must be callables")
        self._seed = seed
        self._n_startup = (
            default_n_startup(n_trials_hint, self._encoded.n_dims) if n_startup is None else n_startup
        )
        self._gamma = gamma
        self._prior_weight = float(prior_weight)
        self._n_ei_candidates = n_ei_candidates
        self._multivariate = multivariate
        self._weights = weights
        self._avoid_repeats = avoid_repeats
        self._n_cover = default_n_cover(n_trials_hint) if n_cover is None else n_cover
        self._table = TrialTable(len(self._encoded.cat_names), len(self._encoded.num_names))
        self._next_number = 0

    @classmethod
    def from_history(
        cls,
        space: Mapping[str, Distribution],
        history: Iterable[TrialRecord],
        **options: Any,
    ) -> TPESampler:
        """A sampler in the state the trials in ``history`` describe; ``options`` as for the constructor.

        With the same space and options (``seed`` above all), its next suggestions are exactly those the
        original sampler would have made. Pending records stay pending: tell them when they finish.
        """
        sampler = cls(space, **options)
        sampler.tell_history(history)
        return sampler

    @property
    def space(self) -> dict[str, Distribution]:
        return dict(self._space)

    @property
    def n_startup(self) -> int:
        """The number of complete trials after which suggestions come from the model."""
        return self._n_startup

    @property
    def n_cover(self) -> int | None:
        """Trial numbers below which untried categorical choices are forced (``None``: no limit)."""
        return self._n_cover

    @property
    def trials(self) -> tuple[TrialRecord, ...]:
        """Every trial asked or recorded so far, in number order: the journal to rebuild from."""
        return self._table.records()

    def asked_params(self, start: int = 0) -> list[dict[str, Any]]:
        """The params of every trial asked or recorded, from the ``start``-th on, in number order
        (copies): those of :attr:`trials`, without building every record (a search reads them at each
        trial, so only the new ones)."""
        return [dict(params) for params in self._table.params[start:]]

    @property
    def pending(self) -> tuple[int, ...]:
        """Numbers of the trials asked and not yet told."""
        _, _, _, states, numbers = self._table.view()
        return tuple(int(n) for n in numbers[states == TrialTable.PENDING])

    def ask(self, params: Mapping[str, Any] | None = None) -> Suggestion:
        """Suggest params for the next trial (number ``0, 1, 2, ...``); it stays pending until told.

        ``params``, when given, are the trial's instead of a suggestion (a caller with a model of its own
        proposes the point); they count like any other trial's, and a :class:`~aprompt.ConfigError`
        names one that is not in the space.
        """
        number = self._next_number
        if params is None:
            cats, nums = self._suggest(np.random.default_rng([self._seed, number]), number)
        else:
            cats, nums = encode_params(self._encoded, params)
        params = decode_params(self._encoded, cats, nums)
        # Store the encoding of what the caller sees, so a rebuild from these params is bit-identical.
        cats, nums = encode_params(self._encoded, params)
        self._table.add(number, cats, nums, dict(params), TrialState.PENDING, None)
        self._next_number = number + 1
        return Suggestion(number=number, params=params)

    def ask_batch(self, k: int) -> list[Suggestion]:
        """``k`` suggestions to evaluate concurrently.

        Each is asked as if the ones before it were pending: they count as bad observations (constant
        liar) and their exact params are avoided, so the batch spreads out instead of repeating itself.
        """
        _check_int("k", k, minimum=1)
        return [self.ask() for _ in range(k)]

    def tell(self, trial: int | Suggestion, value: float) -> None:
        """Record the (noisy) value of a pending trial; higher is better."""
        number = self._pending_number(trial)
        self._table.finish(number, TrialState.COMPLETE, check_value(number, value))

    def tell_failed(self, trial: int | Suggestion) -> None:
        """Record that a pending trial produced no value; it is not scored as 0, only left out."""
        number = self._pending_number(trial)
        self._table.finish(number, TrialState.FAILED, None)

    def tell_history(self, history: Iterable[TrialRecord]) -> None:
        """Record past trials (for example a journal's) numbered after every trial known so far.

        All or nothing: a record that does not fit raises :class:`TrialError` and none is recorded.
        """
        records = list(history)
        for record in records:
            if not isinstance(record, TrialRecord):
                raise TrialError(f"history entries must be TrialRecord, got {record!r}")
        records.sort(key=lambda r: r.number)
        rows = []
        for previous, record in zip([None, *records], records, strict=False):
            if record.number < self._next_number or (previous and previous.number == record.number):
                raise TrialError(f"trial {record.number} is already known (or listed twice)")
            try:
                rows.append(encode_params(self._encoded, record.params))
            except ConfigError as exc:
                raise TrialError(f"trial {record.number}: {exc}") from exc
        for record, (cats, nums) in zip(records, rows, strict=True):
            self._table.add(record.number, cats, nums, dict(record.params), record.state, record.value)
            self._next_number = record.number + 1

    def __repr__(self) -> str:
        _, _, _, states, _ = self._table.view()
        return (
            f"TPESampler(space={self._space!r}, seed={self._seed}, n_startup={self._n_startup}, "
            f"multivariate={self._multivariate}, n_cover={self._n_cover}, trials={len(self._table)}, "
            f"pending={int(np.sum(states == TrialTable.PENDING))})"
        )

    def _pending_number(self, trial: int | Suggestion) -> int:
        number = trial.number if isinstance(trial, Suggestion) else trial
        if isinstance(number, bool) or not isinstance(number, int):
            raise TrialError(f"expected a trial number or a Suggestion, got {trial!r}")
        state = self._table.state_of(number)
        if state is None:
            raise TrialError(f"trial {number} was never asked")
        if state is not TrialState.PENDING:
            raise TrialError(f"trial {number} was already told ({state.value})")
        return number

    def _suggest(self, rng: np.random.Generator, number: int) -> tuple[IntArray, FloatArray]:
        cats, nums, values, states, numbers = self._table.view()
        complete = np.flatnonzero(states == TrialTable.COMPLETE)
        pending = np.flatnonzero(states == TrialTable.PENDING)
        n = self._n_ei_candidates
        model: tuple[_parzen.ParzenEstimator, _parzen.ParzenEstimator] | None = None
        if complete.size < self._n_startup:
            cand_cats, cand_nums = sample_uniform(self._encoded, rng, n)
            scores = np.zeros(n)
        else:
            n_good = min(max(self._n_good(complete.size), 0), complete.size)
            good, bad = split_good_bad(values[complete], numbers[complete], n_good)
            good_rows = complete[good]
            bad_rows = np.sort(np.concatenate([complete[bad], pending]))
            model = self._fit(cats[good_rows], nums[good_rows]), self._fit(cats[bad_rows], nums[bad_rows])
            cand_cats, cand_nums, scores = self._candidates(*model, rng, n)
        cand_cats, cand_nums, best = self._choose(model, rng, cand_cats, cand_nums, scores)
        chosen = cand_cats[best].copy()
        if self._n_cover is None or number < self._n_cover:
            self._cover(chosen, cats[states != TrialTable.FAILED], rng)
        return chosen, cand_nums[best]

    def _cover(self, chosen: IntArray, held: IntArray, rng: np.random.Generator) -> None:
        """Replace, in place, each categorical value of ``chosen`` whose parameter has choices no row of
        ``held`` takes by one of those, drawn uniformly."""
        for d, n_choices in enumerate(self._encoded.n_choices):
            counts = np.bincount(held[:, d], minlength=int(n_choices))
            untried = np.flatnonzero(counts == 0)
            if untried.size:
                chosen[d] = untried[int(rng.integers(untried.size))]

    def _choose(
        self,
        model: tuple[_parzen.ParzenEstimator, _parzen.ParzenEstimator] | None,
        rng: np.random.Generator,
        cats: IntArray,
        nums: FloatArray,
        scores: FloatArray,
    ) -> tuple[IntArray, FloatArray, int]:
        """The points to choose from and the index of the chosen one (step 4 of the module docstring)."""
        # A failed trial's params stay available: the failure says nothing about them. Once every point
        # is held, a complete one is repeated before one in flight: measured twice at once, a point
        # gives no more than re-measured after its value is in, and the batch would not spread out.
        tiers = [(TrialTable.PENDING, TrialTable.COMPLETE)] if self._avoid_repeats else []
        for taken in [*tiers, (TrialTable.PENDING,)]:
            best = self._best_untaken(scores, cats, nums, taken)
            if best is not None:
                return cats, nums, best
            # Every candidate is taken: in a small space a point no trial holds may remain, and a
            # repeat would spend the trial on a point the caller can already judge.
            free = self._untaken_points(model, rng, taken)
            if free is not None:
                return *free[:2], int(np.argmax(free[2]))
        return cats, nums, int(np.argmax(scores))

    def _taken(self, cats: IntArray, nums: FloatArray, taken: tuple[int, ...]) -> bool:
        """Whether a trial in one of the states ``taken`` (codes) holds this point."""
        return self._table.has_point(point_key(cats, nums), taken)

    def _best_untaken(
        self, scores: FloatArray, cats: IntArray, nums: FloatArray, taken: tuple[int, ...]
    ) -> int | None:
        """The highest-scoring candidate whose point is not ``taken`` (the first wins ties); ``None``
        when every candidate is."""
        for i in np.argsort(-scores, kind="stable"):
            if not self._taken(cats[i], nums[i], taken):
                return int(i)
        return None

    def _untaken_points(
        self,
        model: tuple[_parzen.ParzenEstimator, _parzen.ParzenEstimator] | None,
        rng: np.random.Generator,
        taken: tuple[int, ...],
    ) -> tuple[IntArray, FloatArray, FloatArray] | None:
        """The points of a small finite space that are not ``taken``, scored by ``model`` (by a uniform
        draw before the model is used); ``None`` when there is none, or the space is too large to list."""
        points = enumerate_points(self._encoded, _MAX_LISTED_POINTS)
        if points is None:
            return None
        free = np.array([not self._taken(c, x, taken) for c, x in zip(*points, strict=True)], dtype=np.bool_)
        if not free.any():
            return None
        cats, nums = points[0][free], points[1][free]
        if model is None:
            return cats, nums, np.asarray(rng.random(cats.shape[0]), dtype=np.float64)
        below, above = model
        # In slices: the estimators hold a kernel per trial, and each point is scored against every one.
        step = max(1, 2**20 // (below.n_kernels + above.n_kernels) // max(1, self._encoded.n_dims))
        scores = np.concatenate(
            [
                self._score(below, above, cats[i : i + step], nums[i : i + step])
                for i in range(0, len(cats), step)
            ]
        )
        return cats, nums, scores

    def _n_good(self, n: int) -> int:
        n_good = self._gamma(n)
        # int() would truncate 2.7 to 2 without a word, and fail on NaN with a bare ValueError.
        if isinstance(n_good, bool) or not isinstance(n_good, int | np.integer):
            raise ConfigError(
                f"gamma({n}) must return an int (how many observations are good), got {n_good!r}"
            )
        return int(n_good)

    def _fit(self, cats: IntArray, nums: FloatArray) -> _parzen.ParzenEstimator:
        n = cats.shape[0]
        weights = np.asarray(self._weights(n), dtype=np.float64)
        # A wrong array would surface as numpy's error deep in the estimators, or as NaN probabilities.
        if weights.shape != (n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ConfigError(
                f"weights({n}) must return {n} finite, non-negative numbers (one per observation), "
                f"got {weights!r}"
            )
        return _parzen.fit_parzen(self._encoded, cats, nums, weights, prior_weight=self._prior_weight)

    def _candidates(
        self,
        below: _parzen.ParzenEstimator,
        above: _parzen.ParzenEstimator,
        rng: np.random.Generator,
        n: int,
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        """Candidates drawn from ``below`` and their scores ``log l - log g`` (higher is better)."""
        cats, nums = _parzen.sample(below, rng, n, per_dimension=not self._multivariate)
        return cats, nums, self._score(below, above, cats, nums)

    def _score(
        self,
        below: _parzen.ParzenEstimator,
        above: _parzen.ParzenEstimator,
        cats: IntArray,
        nums: FloatArray,
    ) -> FloatArray:
        """``log l - log g`` of each point: joint, or summed over the parameters' marginals."""
        if self._multivariate:
            return _parzen.joint_log_pdf(below, cats, nums) - _parzen.joint_log_pdf(above, cats, nums)
        per_dim = _parzen.marginal_log_pdf(below, cats, nums) - _parzen.marginal_log_pdf(above, cats, nums)
        return np.asarray(per_dim.sum(axis=1), dtype=np.float64)


#: The most points a finite space may have for the sampler to list them when every candidate is taken.
_MAX_LISTED_POINTS = 4096


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
