"""``bootstrap_random_search``: random joint choices of bootstrapped demo sets, each fully evaluated."""

from __future__ import annotations

import math
import random

import attrs

from aprompt._optimize.bootstrap import DemoSet
from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.strategies.base import Strategy, StrategyPlan
from aprompt._optimize.strategies.pipeline import Pipeline, pipeline
from aprompt._optimize.strategies.steps import bootstrap_candidates, search_loop


class BootstrapRandomSearch(Strategy):
    """Demos only: random joint choices of demo sets, each fully evaluated; the best is kept."""

    name = "bootstrap_random_search"

    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        # Full evaluations only, no mini-batch trials: the random combinations' are extra.
        standard = StrategyPlan.standard(
            budget, n_predictors, n_train, n_val, searches_instructions=False, n_trials=0
        )
        return attrs.evolve(standard, extra_full_evals=_random_evaluations(budget, n_predictors, n_val))

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        async with pipeline(ctx, grounding=False) as early:
            demo_sets = await bootstrap_candidates(ctx)
            return await self._search(ctx, demo_sets, early)

    async def _search(
        self, ctx: RunContext, demo_sets: dict[str, tuple[DemoSet, ...]], early: Pipeline
    ) -> tuple[Candidates, SearchOutcome]:
        base = Candidates.original(ctx.predictors)
        candidates = attrs.evolve(base, demo_sets=demo_sets, search_instructions=False)
        candidates = candidates.with_formats(ctx.predictors, ctx.budget.search_formats)
        space = candidates.parameters()
        n_full = _random_evaluations(ctx.budget, len(ctx.predictors), len(ctx.valset))
        rng = random.Random(f"{ctx.seed}:random-search")
        async with ctx.phase("search", f"{n_full} random full evaluations"):
            loop = search_loop(ctx, candidates, self.plan_for(ctx).n_trials, early=early)
            await loop.full_evaluation(candidates.baseline(), is_baseline=True)
            seen = {tuple(sorted(candidates.baseline().items()))}
            combos = []
            for _ in range(n_full * 20):
                choice = {key: rng.randrange(dist.n_choices) for key, dist in space.items()}
                key = tuple(sorted(choice.items()))
                if key not in seen:
                    seen.add(key)
                    combos.append(choice)
                if len(combos) >= n_full:
                    break
            for choice in combos:
                if ctx.spending.limit_reached() is not None:
                    break
                await loop.full_evaluation(choice)
            return candidates, await loop.run_outcome()


def _random_evaluations(budget: Budget, n_predictors: int, n_val: int) -> int:
    """Random combinations fully evaluated: one per ``full_eval_every`` trials of the plan MIPRO would
    make."""
    trials = budget.trials_for(n_predictors, True, n_val)
    return max(1, math.ceil(trials / budget.full_eval_every))
