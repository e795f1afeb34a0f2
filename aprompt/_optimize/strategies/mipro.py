"""``mipro``: proposed instructions and bootstrapped demos, searched together by TPE on mini-batches."""

from __future__ import annotations

from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search import SearchOutcome
from aprompt._optimize.strategies.base import Strategy, StrategyPlan
from aprompt._optimize.strategies.pipeline import Pipeline, pipeline
from aprompt._optimize.strategies.steps import bootstrap_candidates, instruction_candidates, tpe_search


class Mipro(Strategy):
    """Proposed instructions and bootstrapped demos, searched together by TPE on mini-batches."""

    name = "mipro"

    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        return StrategyPlan.standard(budget, n_predictors, n_train, n_val, screened=True)

    async def candidates(self, ctx: RunContext, early: Pipeline) -> Candidates:
        """Bootstrapped demo sets and screened proposals for every predictor: MIPRO's search space (the
        hand-written prompt's evaluation starts as soon as the demo sets exist, beside the proposals)."""
        demo_sets = await bootstrap_candidates(ctx)
        early.start_reference(demo_sets, self.plan_for(ctx))
        instructions = await instruction_candidates(ctx, demo_sets, await early.texts())
        candidates = Candidates(tuple(n for n, _ in ctx.predictors), instructions, demo_sets)
        return candidates.with_formats(ctx.predictors, ctx.budget.search_formats)

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        async with pipeline(ctx) as early:
            candidates = await self.candidates(ctx, early)
            return candidates, await tpe_search(ctx, candidates, self.plan_for(ctx).n_trials, early)
