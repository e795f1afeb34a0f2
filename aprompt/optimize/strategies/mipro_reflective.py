"""``mipro_reflective``: MIPRO whose search also adds instructions written from the pick's failures."""

from __future__ import annotations

from aprompt.optimize.budget import Budget
from aprompt.optimize.candidates import Candidates
from aprompt.optimize.reflect import ReflectiveProposals
from aprompt.optimize.run_context import RunContext
from aprompt.optimize.search import SearchOutcome
from aprompt.optimize.strategies.base import Strategy, StrategyPlan
from aprompt.optimize.strategies.steps import bootstrap_candidates, instruction_candidates, search_loop


class MiproReflective(Strategy):
    """MIPRO plus reflective proposals after each periodic full evaluation.

    See :mod:`aprompt.optimize.reflect`.
    """

    name = "mipro_reflective"

    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        return StrategyPlan.standard(budget, n_predictors, n_train, n_val, screened=True)

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        demo_sets = await bootstrap_candidates(ctx)
        instructions = await instruction_candidates(ctx, demo_sets)
        candidates = Candidates(tuple(n for n, _ in ctx.predictors), instructions, demo_sets)
        candidates = candidates.with_formats(ctx.predictors, ctx.budget.search_formats)
        n_trials = self.plan_for(ctx).n_trials
        async with ctx.phase("search", f"{n_trials} trials with reflective proposals"):
            loop = search_loop(ctx, candidates, n_trials, after_evaluation=ReflectiveProposals(ctx))
            outcome = await loop.run()
        return loop.candidates, outcome
