"""``module_opro``: instructions proposed in rounds, each proposer shown its scored history."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import attrs

from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.events import CandidateDropped, CandidateProposed
from aprompt._optimize.propose import Proposal, ProposalContext, propose_instruction
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search import SearchLoop
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.strategies.base import SUMMARY_CALLS, Strategy, StrategyPlan
from aprompt._optimize.strategies.pipeline import Pipeline, pipeline
from aprompt._optimize.strategies.steps import search_loop

#: A full evaluation of the best untested combination after every this many rounds.
FULL_EVALUATION_ROUNDS = 2


class ModuleOpro(Strategy):
    """Instructions only: each round, every predictor's proposer sees its past instructions with the
    program-level mini-batch score they got, and writes the next one; one trial per round. The rounds
    are the budget's ``n_trials``, else one per candidate ``n_candidates`` asks for beyond the original."""

    name = "module_opro"
    #: 2: the budget's ``n_trials`` rounds (1 ran ``n_candidates - 1``, its records another run's).
    journal_format = 2

    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        # One round per proposed candidate, unless the budget names its own trial count.
        n_rounds = budget.n_trials or max(1, budget.n_candidates - 1)
        standard = StrategyPlan.standard(
            budget, n_predictors, n_train, n_val, searches_demos=False, n_trials=n_rounds
        )
        # Besides the standard ones: one after every FULL_EVALUATION_ROUNDS rounds, and with the reply
        # formats searched, the pick in each predictor's other format.
        extra = n_rounds // FULL_EVALUATION_ROUNDS + (n_predictors if budget.search_formats else 0)
        proposals = n_predictors * n_rounds + SUMMARY_CALLS  # one proposal per predictor and round
        return attrs.evolve(standard, extra_full_evals=extra, proposal_calls=proposals)

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        candidates = attrs.evolve(Candidates.original(ctx.predictors), search_demos=False).with_formats(
            ctx.predictors, ctx.budget.search_formats
        )
        n_rounds = self.plan_for(ctx).n_trials
        async with pipeline(ctx) as early:
            texts = await early.texts()
            return await self._rounds(ctx, candidates, n_rounds, texts, early)

    async def _rounds(
        self,
        ctx: RunContext,
        candidates: Candidates,
        n_rounds: int,
        texts: Mapping[str, str | None],
        early: Pipeline,
    ) -> tuple[Candidates, SearchOutcome]:
        async with ctx.phase("search", f"{n_rounds} OPRO rounds"):
            loop = search_loop(ctx, candidates, 0, early=early)
            await loop.full_evaluation(candidates.baseline(), is_baseline=True)
            history: dict[str, list[tuple[str, float | None]]] = {
                name: [(p.instruction, loop.full_evals[0].score)] for name, p in ctx.predictors
            }
            size = min(ctx.budget.minibatch_size, len(ctx.valset))
            for round_number in range(1, n_rounds + 1):
                if ctx.spending.limit_reached() is not None:
                    break
                # Admitted before they spend, as the other strategies' steps are: a limit refuses the
                # round, not a call in its midst that would leave it paid for and unrecorded.
                ctx.admit_step(
                    f"round {round_number}'s proposals",
                    [("opro_proposal", f"{name}:{round_number}", 1) for name, _ in ctx.predictors],
                    calls=True,
                    ahead=(size, 0),
                )
                choice: dict[str, int] = {}
                instructions = {k: list(v) for k, v in candidates.instructions.items()}
                for name, predictor in ctx.predictors:
                    proposal = await ctx.memo(
                        "opro_proposal",
                        f"{name}:{round_number}",
                        partial(
                            propose_instruction,
                            ProposalContext(name, predictor, texts=texts),
                            ctx.proposer_lm,
                            index=round_number,
                            grounding=ctx.grounding,
                            demos=(),
                            existing=instructions[name],
                            history=list(history[name]),
                            seed=ctx.seed,
                            outage=ctx.outage,
                        ),
                        attrs.asdict,
                        lambda data: Proposal(**data),
                    )
                    if proposal.instruction is None:
                        ctx.dropped.append((name, round_number, proposal.reason))
                        await ctx.emit(CandidateDropped(name, round_number, proposal.reason))
                        continue
                    instructions[name].append(proposal.instruction)
                    choice[f"{name}.instruction"] = loop.add_instruction(name, proposal.instruction)
                    await ctx.emit(
                        CandidateProposed(
                            name, "instruction", choice[f"{name}.instruction"], proposal.instruction
                        )
                    )
                if not choice:
                    continue
                candidates = loop.candidates
                # Every searched parameter named (a dropped proposal's predictor and the reply formats at
                # their first option), so one program is always recorded under one key.
                choice = {**candidates.baseline(), **choice}
                loop.admit_step(f"trial {round_number - 1}", [("trial", str(round_number - 1), size)])
                trial = await loop.single_trial(round_number - 1, choice)
                for name, _ in ctx.predictors:
                    key = f"{name}.instruction"
                    if key in choice:
                        history[name].append((instructions[name][choice[key]], trial.score))
                if round_number % FULL_EVALUATION_ROUNDS == 0:
                    await loop.full_evaluate_best_untested()
            await self._other_formats(ctx, loop)
            return loop.candidates, await loop.run_outcome(final_full_eval=True)

    @staticmethod
    async def _other_formats(ctx: RunContext, loop: SearchLoop) -> None:
        """The rounds keep each predictor's first reply format (the proposers' history compares
        instructions, not formats); with formats searched, the pick so far is also evaluated in full in each
        predictor's other formats, and the final pick weighs them."""
        space = loop.candidates.parameters()
        pick = dict(loop.decide().choice)
        for name, _ in ctx.predictors:
            key = f"{name}.format"
            for option in range(1, space[key].n_choices if key in space else 1):
                if ctx.spending.limit_reached() is not None:
                    return
                await loop.full_evaluation({**loop.candidates.baseline(), **pick, key: option})
