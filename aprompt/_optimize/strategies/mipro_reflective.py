"""``mipro_reflective``: MIPRO whose search also adds instructions written from the pick's failures."""

from __future__ import annotations

import logging

from aprompt._optimize.candidates import Candidates
from aprompt._optimize.reflect import ReflectiveProposals
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.strategies.mipro import Mipro
from aprompt._optimize.strategies.pipeline import pipeline
from aprompt._optimize.strategies.steps import search_loop

logger = logging.getLogger("aprompt")


class MiproReflective(Mipro):
    """MIPRO plus reflective proposals after each periodic full evaluation.

    See :mod:`aprompt._optimize.reflect`. The plan and the search space are MIPRO's. A search of no more
    trials than ``full_eval_every`` has no periodic full evaluation to reflect after: it is MIPRO's, and
    the log (INFO) and the search phase's detail say so.
    """

    name = "mipro_reflective"

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        async with pipeline(ctx) as early:
            candidates = await self.candidates(ctx, early)
            n_trials = self.plan_for(ctx).n_trials
            every = ctx.budget.full_eval_every
            detail = f"{n_trials} trials with reflective proposals"
            if n_trials <= every:
                detail = (
                    f"{n_trials} trials and no reflective proposal: a reflection follows each periodic full "
                    f"evaluation, one every {every} trials (full_eval_every), and the search ends before "
                    "the first; lower full_eval_every or raise n_trials to reflect"
                )
                logger.info("aprompt: mipro_reflective: %s", detail)
            async with ctx.phase("search", detail):
                reflective = ReflectiveProposals(ctx)
                loop = search_loop(ctx, candidates, n_trials, after_evaluation=reflective, early=early)
                outcome = await loop.run()
            return loop.candidates, outcome
