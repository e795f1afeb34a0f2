"""A Tree-structured Parzen Estimator (TPE) in numpy/scipy, driven by ask/tell; it **maximises**.

The search loop asks for params, evaluates them (typically a noisy mini-batch score in [0, 1]) and tells
the value back. Several trials can be in flight at once (:meth:`TPESampler.ask_batch`), a trial can fail
without counting as a zero (:meth:`TPESampler.tell_failed`), and a sampler rebuilt from its trials
(:meth:`TPESampler.from_history`) continues with exactly the suggestions the original would have made.

Example::

    from aprompt.tpe import Categorical, TPESampler

    space = {"qa.instruction": Categorical(6), "qa.demos": Categorical(6)}
    sampler = TPESampler(space, seed=0, n_trials_hint=10)
    for _ in range(10):
        suggestion = sampler.ask()
        sampler.tell(suggestion, evaluate(suggestion.params))

See ``_sampler`` for the algorithm, ``_parzen`` for the estimators and ``_split`` for the good/bad split.
"""

from aprompt.tpe._sampler import TPESampler, default_n_cover, default_n_startup
from aprompt.tpe._space import Categorical, Distribution, FloatRange, IntRange, ParamValue
from aprompt.tpe._split import default_gamma, flat_weights, recency_weights
from aprompt.tpe._trials import Suggestion, TrialError, TrialRecord, TrialState

__all__ = [
    "Categorical",
    "Distribution",
    "FloatRange",
    "IntRange",
    "ParamValue",
    "Suggestion",
    "TPESampler",
    "TrialError",
    "TrialRecord",
    "TrialState",
    "default_gamma",
    "default_n_cover",
    "default_n_startup",
    "flat_weights",
    "recency_weights",
]
