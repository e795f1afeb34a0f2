"""``mipro_reflective``: MIPRO whose search also adds instructions written from the pick's failures."""

from __future__ import annotations

from aprompt._optimize.candidates import Candidates
from aprompt._optimize.reflect import ReflectiveProposals
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.strategies.mipro import Mipro
from aprompt._optimize.strategies.pipeline import pipeline
from aprompt._optimize.strategies.steps import search_loop


class MiproReflective(Mipro):
    """MIPRO plus reflective proposals after each periodic full evaluation.

    See :mod:`aprompt._optimize.reflect`. The plan and the search space are MIPRO's.
    """

    name = "mipro_reflective"

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        async with pipeline(ctx) as early:
            candidates = await self.candidates(ctx, early)
            n_trials = self.plan_for(ctx).n_trials
            async with ctx.phase("search", f"{n_trials} trials with reflective proposals"):
                reflective = ReflectiveProposals(ctx)
                loop = search_loop(ctx, candidates, n_trials, after_evaluation=reflective, early=early)
                outcome = await loop.run()
            return loop.candidates, outcome
