"""``bayesian_bootstrap``: the original instructions, bootstrapped demo sets searched by TPE."""

from __future__ import annotations

import attrs

from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.strategies.base import Strategy, StrategyPlan
from aprompt._optimize.strategies.pipeline import pipeline
from aprompt._optimize.strategies.steps import bootstrap_candidates, tpe_search


class BayesianBootstrap(Strategy):
    """Demos only: bootstrapped demo sets searched by TPE on mini-batches, the instructions kept."""

    name = "bayesian_bootstrap"

    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        return StrategyPlan.standard(budget, n_predictors, n_train, n_val, searches_instructions=False)

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        async with pipeline(ctx, grounding=False) as early:
            demo_sets = await bootstrap_candidates(ctx)
            early.start_reference(demo_sets, self.plan_for(ctx))
            base = Candidates.original(ctx.predictors)
            candidates = attrs.evolve(base, demo_sets=demo_sets, search_instructions=False)
            candidates = candidates.with_formats(ctx.predictors, ctx.budget.search_formats)
            return candidates, await tpe_search(ctx, candidates, self.plan_for(ctx).n_trials, early)
