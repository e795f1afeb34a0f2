"""The shape every strategy has: a :class:`Strategy` plans from the budget and runs on a run's context.

A strategy's :meth:`~Strategy.plan` is the one place its trial count is stated: ``optimize`` announces it
(the :class:`~aprompt._optimize.events.RunPlanned` event and its LM-call estimate) and the strategy's
:meth:`~Strategy.run` searches with it (:meth:`Strategy.plan_for`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import attrs

from aprompt._errors import ConfigError
from aprompt._optimize.bootstrap import bootstrap_runs
from aprompt._optimize.budget import Budget
from aprompt._optimize.grounding import GROUNDING_SOURCES

if TYPE_CHECKING:
    from aprompt._optimize.candidates import Candidates
    from aprompt._optimize.run_context import RunContext
    from aprompt._optimize.search_records import SearchOutcome


#: LM calls of the grounding sources (the data and program summaries) a plan counts besides the
#: proposals, at most: every source's, as the run's limits count them.
SUMMARY_CALLS = sum(source.max_calls for source in GROUNDING_SOURCES)


@attrs.frozen
class StrategyPlan:
    """What a strategy will do with a budget, known before anything is spent.

    Attributes:
        n_trials: mini-batch trials of the search (full evaluations aside).
        searches_instructions / searches_demos: what the search chooses among.
        bootstrap_runs: program runs of the demo bootstrap, at most when its runs pass (failing runs make
            it run more examples; :func:`~aprompt._optimize.bootstrap.bootstrap_runs`).
        proposal_calls: proposer LM calls (summaries and instruction proposals), at most.
        screen_runs: program runs of the proposal screen.
        extra_full_evals: full evaluations beyond those of the trials (baseline, one per
            ``full_eval_every`` trials and a last one): a strategy that evaluates in full only.
    """

    n_trials: int
    searches_instructions: bool
    searches_demos: bool
    bootstrap_runs: int
    proposal_calls: int
    screen_runs: int = 0
    extra_full_evals: int = 0

    @classmethod
    def standard(
        cls,
        budget: Budget,
        n_predictors: int,
        n_train: int,
        n_val: int,
        *,
        searches_instructions: bool = True,
        searches_demos: bool = True,
        n_trials: int | None = None,
        screened: bool = False,
    ) -> StrategyPlan:
        """The plan of a strategy built from the shared steps (:mod:`aprompt._optimize.strategies.steps`).

        ``n_trials`` defaults to :meth:`Budget.trials_for` the searched variables; ``screened`` says the
        proposals are screened (:func:`~aprompt._optimize.strategies.steps.instruction_candidates`). The
        bootstrap and proposal counts are upper bounds, for the steps the search needs: no bootstrap
        without ``searches_demos``, no summary or proposal without ``searches_instructions`` (a strategy
        that takes such a step all the same states its count with :func:`attrs.evolve`).
        """
        return cls(
            n_trials=budget.trials_for(n_predictors, searches_demos, n_val) if n_trials is None else n_trials,
            searches_instructions=searches_instructions,
            searches_demos=searches_demos,
            bootstrap_runs=(
                bootstrap_runs(n_train, budget.n_candidates, budget.max_bootstrapped_demos)
                if searches_demos
                else 0
            ),
            proposal_calls=(
                n_predictors * max(0, budget.n_candidates - 1) + SUMMARY_CALLS if searches_instructions else 0
            ),
            screen_runs=budget.screen_runs(n_predictors, n_val) if screened else 0,
        )


class Strategy(ABC):
    """An optimization strategy: subclass it, set :attr:`name`, implement :meth:`plan` and :meth:`run`.

    The first line of a strategy's docstring describes it. Register an instance with
    :func:`~aprompt._optimize.strategies.register_strategy` to select it by name
    (``optimize(..., strategy="name")``), or pass the instance itself as ``strategy=``.

    Attributes:
        name: the key it is registered and journaled under; part of a run's identity, so a resumed run
            must use a strategy of the same name.
        journal_format: the version of what it journals and how a resumed run replays it; raised when
            that changes, so a run_dir journaled in another format is refused by name, never replayed.
    """

    name: str
    journal_format: int = 1

    @abstractmethod
    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        """What a run with ``budget`` on ``n_predictors`` predictors, ``n_train`` training and ``n_val``
        validation examples will do. :meth:`run` must make ``n_trials`` mini-batch trials (fewer only
        when a limit stops the run or proposals are dropped)."""

    @abstractmethod
    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        """Search on the run's context; return the search space and the search's outcome."""

    def plan_for(self, ctx: RunContext) -> StrategyPlan:
        """:meth:`plan` for the run of ``ctx``."""
        return self.plan(ctx.budget, len(ctx.predictors), len(ctx.trainset), len(ctx.valset))

    @property
    def description(self) -> str:
        """The first line of the strategy's docstring."""
        doc = (type(self).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def __repr__(self) -> str:
        return f"<strategy {getattr(self, 'name', '?')!r}>"


def checked_plan(
    strategy: Strategy, budget: Budget, n_predictors: int, n_train: int, n_val: int
) -> StrategyPlan:
    """``strategy``'s plan, refused before the run spends anything when it cannot be run: not a
    :class:`StrategyPlan`, a count that is not a whole number >= 0, or neither a trial nor a full
    evaluation (a strategy option such as ``n_trials=0`` would otherwise fail only once the bootstrap is
    paid for).

    Raises:
        ConfigError: the plan is one of those.
    """
    plan = strategy.plan(budget, n_predictors, n_train, n_val)
    if not isinstance(plan, StrategyPlan):
        raise ConfigError(f"strategy {strategy.name!r}: plan() must return a StrategyPlan, got {plan!r}")
    counts = {k: v for k, v in attrs.asdict(plan).items() if not k.startswith("searches_")}
    bad = [f"{k}={v!r}" for k, v in counts.items() if type(v) is not int or v < 0]
    if bad:
        raise ConfigError(
            f"strategy {strategy.name!r} plans {', '.join(bad)}: counts must be whole numbers >= 0"
        )
    if plan.n_trials + plan.extra_full_evals < 1:
        raise ConfigError(
            f"strategy {strategy.name!r} plans no trial and no full evaluation (n_trials=0): "
            "it would pay for its bootstrap and proposals and search nothing; plan one trial or more"
        )
    return plan


__all__ = ["Strategy", "StrategyPlan", "checked_plan"]
