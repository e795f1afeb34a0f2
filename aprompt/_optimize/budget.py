"""Run sizes: the ``light`` / ``medium`` / ``heavy`` presets, explicit overrides, and a call estimate."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import attrs

from aprompt._errors import ConfigError

#: The most trials a chosen window holds with mini-batches of :data:`FORMULA_MINIBATCH`: beyond it,
#: suggestions see too few results (the TPE's model starts after a fifth of a run's trials are told).
#: Smaller mini-batches make proportionally more trials, so the window may grow with them
#: (:meth:`Budget.max_window`).
MAX_PARALLEL_TRIALS = 8
#: The mini-batch size the reference's trial formula counts trials of (:meth:`Budget.trials_for`).
FORMULA_MINIBATCH = 35
#: The window when the LM's concurrency is unknown, with mini-batches of :data:`FORMULA_MINIBATCH` (as
#: many more as a smaller mini-batch makes trials: :meth:`Budget.max_window`): an adaptive client starts
#: at 64 requests in flight and grows while the server keeps up. Trials are told in order, so with four
#: in flight one slow answer held the next suggestions back (1.52 × the bound against 1.31 with eight on
#: the latency-bound benchmark, ``bench/results/throughput_regimes.md``); beyond the client's cap the
#: calls of the later trials wait in its queue, and the window is the one a client told its limits gets.
ADAPTIVE_PARALLEL_TRIALS = MAX_PARALLEL_TRIALS


@attrs.frozen
class Budget:
    """How much search a run does.

    Attributes:
        n_candidates: instruction candidates and demo sets per predictor (the original instruction and the
            empty demo set are among them).
        val_size: validation examples used (a random subset when the valset is larger).
        n_trials: mini-batch trials; ``None`` derives it from the search space (:meth:`trials_for`): the
            reference's count of 35-example trials, turned into as many ``minibatch_size`` trials as score
            the same number of examples.
        minibatch_size: validation examples scored per trial. The default, 12, is about a third of the
            reference's 35: the same examples spread over three times the trials show the search three
            times as many combinations, which halved the regret in the simulated world at no more LM
            calls (``bench/results/regret.md``).
        full_eval_every: a full evaluation of the best untested combination every this many trials (15:
            as many full evaluations per example scored in trials as the reference's 5 with 35).
        max_bootstrapped_demos / max_labeled_demos: a demo set holds at most ``max_bootstrapped_demos``
            demos from passing program runs and ``max_labeled_demos`` labeled training examples, so at
            most :attr:`max_demos` (their sum) in all; candidate sets come in several sizes up to it,
            0 included, and the search picks the size (see :mod:`aprompt._optimize.bootstrap`). One
            exception: when the training labels form a small label space with more classes than
            ``max_labeled_demos`` but no more than :attr:`max_demos`, the labeled-only set shows one
            example of each class (``max_labeled_demos=0`` still means no labeled demos).
        screen_size: validation examples of the screen that drops proposals far worse than the original
            instruction (both without demos; see :mod:`aprompt._optimize.proposal_filter`); 0 turns it off.
        parallel_trials: trials in flight at once (the window of continuous trials); ``None`` chooses
            from the LM's planned concurrency (:meth:`parallel_trials_for`).
        search_formats: also search, per predictor with one output field, its reply format: ``Label: value``
            lines or the bare value (see :mod:`aprompt.program.adapter`).
        racing: spend the full evaluations' budget on races among the most promising combinations
            (growing shared parts of the valset, clear losers dropped early) and stop a trial after the
            first part of its mini-batch when it is clearly losing to the current pick, instead of one
            full evaluation every ``full_eval_every`` trials (see :mod:`aprompt._optimize.racing`); the
            run sends at most the LM calls it would without. ``False`` gives the plain schedule.
    """

    n_candidates: int = 6
    val_size: int = 100
    n_trials: int | None = None
    minibatch_size: int = 12
    full_eval_every: int = 15
    max_bootstrapped_demos: int = 4
    max_labeled_demos: int = 4
    parallel_trials: int | None = None
    screen_size: int = 5
    search_formats: bool = False
    racing: bool = True

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.racing, bool):
            raise ConfigError(f"budget value racing must be True or False, not {self.racing!r}")
        optional = {"n_trials", "parallel_trials"}
        not_whole = [
            f.name
            for f in attrs.fields(Budget)
            if f.name != "racing"
            and not _is_count(getattr(self, f.name))
            and not (f.name in optional and getattr(self, f.name) is None)
            and f.name != "search_formats"
        ]
        if not_whole:
            raise ConfigError(f"budget values must be whole numbers: {', '.join(not_whole)}")
        checks = {
            "n_candidates": self.n_candidates >= 1,
            "val_size": self.val_size >= 1,
            "minibatch_size": self.minibatch_size >= 1,
            "full_eval_every": self.full_eval_every >= 1,
            "max_bootstrapped_demos": self.max_bootstrapped_demos >= 0,
            "max_labeled_demos": self.max_labeled_demos >= 0,
            "screen_size": self.screen_size >= 0,
            "parallel_trials": self.parallel_trials is None or self.parallel_trials >= 1,
            "n_trials": self.n_trials is None or self.n_trials >= 1,
            "search_formats": isinstance(self.search_formats, bool),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"budget values out of range: {', '.join(bad)} (a budget must allow one trial)")
        # A numpy integer is a whole number too; as a plain int it is the same run (fingerprint) and
        # every part the budget is handed to (the TPE's trial hint among them) takes it.
        for f in attrs.fields(Budget):
            value = getattr(self, f.name)
            if _is_count(value) and type(value) is not int:
                object.__setattr__(self, f.name, int(value))

    @property
    def max_demos(self) -> int:
        """The most demos one candidate set holds: ``max_bootstrapped_demos + max_labeled_demos``."""
        return self.max_bootstrapped_demos + self.max_labeled_demos

    def screen_runs(self, n_predictors: int, val_size: int) -> int:
        """Program runs of the proposal screen: per predictor, the original and each proposal on
        ``screen_size`` validation examples."""
        return (
            n_predictors * self.n_candidates * min(self.screen_size, val_size) if self.n_candidates > 1 else 0
        )

    def parallel_trials_for(self, lm_capacity: int | None, calls_per_run: int) -> int:
        """Trials in flight at once: ``parallel_trials`` when given, else enough to keep the LM busy.

        ``lm_capacity`` is the LM's planned concurrency (``planned_concurrency`` of the HTTP clients:
        their fixed cap, or what their configured rate limits call for by Little's law at a latency
        guess). A trial finishing holds only its slowest calls in flight, so besides it the window keeps
        enough trials to fill the rest of the cap: ``1 + ceil((capacity - 1) / calls per trial)``, from 1
        to :meth:`max_window`. With no capacity known (an adaptive client with no limit configured, or
        an LM that says nothing), :meth:`max_window` too.

        Never from measured latency: trial *n*'s suggestion depends on the window (it sees the trials up
        to *n − window*), so the window comes from the run's inputs only, and a replayed or resumed run
        asks the same suggestions.

        Example:
            >>> Budget(minibatch_size=35).parallel_trials_for(64, calls_per_run=1)  # 1 + ceil(63/35)
            3
        """
        if self.parallel_trials is not None:
            return self.parallel_trials
        if lm_capacity is None:
            return self.max_window()
        per_trial = max(1, self.minibatch_size * calls_per_run)
        return max(1, min(self.max_window(), 1 + math.ceil((lm_capacity - 1) / per_trial)))

    def max_window(self) -> int:
        """The most trials in flight a known capacity gets: :data:`MAX_PARALLEL_TRIALS` trials of
        :data:`FORMULA_MINIBATCH` examples, as many more as a smaller mini-batch makes trials (the
        suggestions then see the same share of the run's trials).

        Example:
            >>> Budget(minibatch_size=35).max_window(), Budget(minibatch_size=12).max_window()
            (8, 24)
        """
        share = math.ceil(ADAPTIVE_PARALLEL_TRIALS * FORMULA_MINIBATCH / self.minibatch_size)
        return max(ADAPTIVE_PARALLEL_TRIALS, share)

    def trials_for(self, n_predictors: int, searches_demos: bool, n_val: int | None = None) -> int:
        """Trials for a search space: ``max(2·V·log2(N), 1.5·N)`` trials of
        :data:`FORMULA_MINIBATCH` examples (the reference's formula, V = searched variables), as trials of
        ``minibatch_size`` examples that score no more examples in all.

        With ``n_val`` validation examples, a mini-batch holds at most all of them, on both sides.

        Example:
            >>> Budget(minibatch_size=35).trials_for(2, searches_demos=True)  # int(max(20.68, 9))
            20
            >>> Budget(minibatch_size=12).trials_for(2, searches_demos=True)  # 20 · 35 // 12
            58
            >>> Budget(minibatch_size=12).trials_for(2, searches_demos=True, n_val=30)  # 20 · 30 // 12
            50
        """
        if self.n_trials is not None:
            return self.n_trials
        variables = n_predictors * (2 if searches_demos else 1)
        n = max(self.n_candidates, 2)
        formula = max(1, int(max(2 * variables * math.log2(n), 1.5 * n)))
        examples = FORMULA_MINIBATCH if n_val is None else min(FORMULA_MINIBATCH, n_val)
        per_trial = self.minibatch_size if n_val is None else min(self.minibatch_size, n_val)
        return max(1, formula * examples // per_trial)


def _is_count(value: object) -> bool:
    # A string or float would fail later, deep in the run; bool is an int but never a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


PRESETS: Mapping[str, Budget] = {
    "light": Budget(n_candidates=6, val_size=100),
    "medium": Budget(n_candidates=12, val_size=300),
    "heavy": Budget(n_candidates=18, val_size=1000),
}


def resolve_budget(budget: str | Budget | Mapping[str, Any]) -> Budget:
    """A preset name, a :class:`Budget`, or a mapping of overrides on ``light``
    (``{"preset": "medium", "n_trials": 30}`` starts from another preset)."""
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, str):
        if budget not in PRESETS:
            raise ConfigError(f"unknown budget {budget!r}; use one of {sorted(PRESETS)} or a Budget")
        return PRESETS[budget]
    if isinstance(budget, Mapping):
        overrides = dict(budget)
        base = resolve_budget(str(overrides.pop("preset", "light")))
        unknown = set(overrides) - {f.name for f in attrs.fields(Budget)}
        if unknown:
            raise ConfigError(f"unknown budget field(s): {sorted(unknown, key=repr)}")
        return attrs.evolve(base, **overrides)
    raise ConfigError(f"budget must be a preset name, a Budget or a mapping, not {type(budget).__name__}")


@attrs.frozen
class CallEstimate:
    """Expected LM calls of a run, by phase (program runs × calls per run)."""

    bootstrap: int
    proposal: int
    evaluation: int
    screen: int = 0

    @property
    def total(self) -> int:
        return self.bootstrap + self.proposal + self.screen + self.evaluation


def estimate_calls(
    budget: Budget,
    *,
    n_predictors: int,
    calls_per_run: float,
    n_trials: int,
    val_size: int,
    bootstrap_runs: int,
    proposal_calls: int,
    screen_runs: int = 0,
    extra_full_evals: int = 0,
) -> CallEstimate:
    """An estimate before any cache: full evaluations (baseline, one per ``full_eval_every`` trials and a
    last one, and ``extra_full_evals`` a strategy makes besides) plus every mini-batch; ``screen_runs``
    program runs screen the proposals. With ``racing`` the search spends at most these program runs,
    differently divided; the whole is no bound (see :class:`~aprompt._optimize.events.RunPlanned`)."""
    full_evals = 1 + math.ceil(n_trials / budget.full_eval_every) + extra_full_evals
    runs = full_evals * val_size + n_trials * min(budget.minibatch_size, val_size)
    return CallEstimate(
        bootstrap=math.ceil(bootstrap_runs * calls_per_run),
        proposal=proposal_calls,
        evaluation=math.ceil(runs * calls_per_run),
        screen=math.ceil(screen_runs * calls_per_run),
    )
