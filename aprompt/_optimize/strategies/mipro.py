"""``mipro``: proposed instructions and bootstrapped demos, searched together by TPE on mini-batches."""

from __future__ import annotations

from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.strategies.base import Strategy, StrategyPlan
from aprompt._optimize.strategies.pipeline import Pipeline, pipeline
from aprompt._optimize.strategies.steps import bootstrap_candidates, instruction_candidates, tpe_search


class Mipro(Strategy):
    """Proposed instructions and bootstrapped demos, searched together by TPE on mini-batches."""

    name = "mipro"

    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        return StrategyPlan.standard(budget, n_predictors, n_train, n_val, screened=True)

    async def candidates(self, ctx: RunContext, early: Pipeline) -> Candidates:
        """Bootstrapped demo sets and screened proposals for every predictor: MIPRO's search space. The
        hand-written prompt's evaluation (labeled demos) starts beside the bootstrap, and each proposal's
        calls as soon as their inputs exist (:mod:`aprompt._optimize.strategies.warmup`), when the run has
        no limit that could refuse them; else the first when the bootstrap ends, the others in turn."""
        warm = early.warmup()  # the proposals' calls, sent as soon as their inputs exist
        early.start_reference_early(self.plan_for(ctx))
        try:
            demo_sets = await bootstrap_candidates(ctx, warm.demo_set_built if warm else None)
        finally:
            if warm is not None:
                warm.bootstrap_ended()
        early.start_reference(demo_sets, self.plan_for(ctx))
        instructions = await instruction_candidates(ctx, demo_sets, await early.texts())
        candidates = Candidates(tuple(n for n, _ in ctx.predictors), instructions, demo_sets)
        return candidates.with_formats(ctx.predictors, ctx.budget.search_formats)

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        async with pipeline(ctx) as early:
            candidates = await self.candidates(ctx, early)
            return candidates, await tpe_search(ctx, candidates, self.plan_for(ctx).n_trials, early)
