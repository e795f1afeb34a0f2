"""``mipro_zero_shot``: proposed instructions only, no demos, searched by TPE on mini-batches."""

from __future__ import annotations

import attrs

from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.strategies.base import Strategy, StrategyPlan
from aprompt._optimize.strategies.pipeline import pipeline
from aprompt._optimize.strategies.steps import instruction_candidates, tpe_search


class MiproZeroShot(Strategy):
    """Proposed instructions only (no demos), searched by TPE on mini-batches."""

    name = "mipro_zero_shot"

    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        return StrategyPlan.standard(
            budget, n_predictors, n_train, n_val, searches_demos=False, screened=True
        )

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        async with pipeline(ctx) as early:
            instructions = await instruction_candidates(ctx, {}, await early.texts())
            base = Candidates.original(ctx.predictors)
            candidates = attrs.evolve(base, instructions=instructions, search_demos=False)
            candidates = candidates.with_formats(ctx.predictors, ctx.budget.search_formats)
            return candidates, await tpe_search(ctx, candidates, self.plan_for(ctx).n_trials, early)
