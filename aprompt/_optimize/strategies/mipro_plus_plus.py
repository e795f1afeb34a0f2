"""``mipro_plus_plus``: MIPRO whose TPE also chooses, per predictor, the proposer's grounding and
temperature; each trial proposes the instructions it evaluates with the chosen settings."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import attrs

from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.events import CandidateDropped, CandidateProposed
from aprompt._optimize.propose import (
    PROPOSAL_ATTEMPTS,
    Grounding,
    Proposal,
    ProposalContext,
    propose_instruction,
)
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search import SearchLoop
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.strategies.base import SUMMARY_CALLS, Strategy, StrategyPlan
from aprompt._optimize.strategies.pipeline import pipeline
from aprompt._optimize.strategies.steps import bootstrap_candidates, search_loop

#: The proposer groundings the search chooses among, per predictor.
GROUNDING_OPTIONS: tuple[Grounding, ...] = (
    Grounding(),
    Grounding(data_summary=False),
    Grounding(program_summary=False),
    Grounding(demos=False),
    Grounding(data_summary=False, program_summary=False),
    Grounding(tip=False, history=False),
)
#: The proposer temperatures the search chooses among, per predictor.
TEMPERATURES = (0.5, 1.0, 1.4)
#: The pieces of a :class:`Grounding` a proposal shows or not (all but the temperature).
_PIECES = tuple(field.name for field in attrs.fields(Grounding) if field.name != "temperature")


def within(option: Grounding, run: Grounding, temperature: float) -> Grounding:
    """``option`` at ``temperature``, showing only the pieces the run's ``grounding=`` shows too: the
    search chooses among what the caller allowed, never shows what it switched off."""
    shown = {piece: getattr(option, piece) and getattr(run, piece) for piece in _PIECES}
    return Grounding(**shown, temperature=temperature)


class MiproPlusPlus(Strategy):
    """MIPRO whose TPE also chooses, per predictor, the proposer's grounding and temperature (learning
    how to propose): each trial proposes the instructions it evaluates with the chosen settings.

    The grounding options show no piece the run's ``grounding=`` switches off (:func:`within`).
    """

    name = "mipro_plus_plus"
    #: 2: proposals show only the grounding pieces the run's ``grounding=`` shows (1 showed them all).
    journal_format = 2

    def plan(self, budget: Budget, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
        # The space is larger than MIPRO's (grounding and temperature too): twice the derived trials,
        # unless the budget names its own count.
        n_trials = budget.n_trials or budget.trials_for(n_predictors, True, n_val) * 2
        standard = StrategyPlan.standard(budget, n_predictors, n_train, n_val, n_trials=n_trials)
        # One proposal per predictor for each proposer setting the trials choose, each of a few attempts,
        # at most; and the summaries.
        settings = len(GROUNDING_OPTIONS) * len(TEMPERATURES)
        proposals = n_predictors * min(settings, n_trials) * PROPOSAL_ATTEMPTS
        return attrs.evolve(standard, proposal_calls=proposals + SUMMARY_CALLS)

    async def run(self, ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
        async with pipeline(ctx) as early:
            demo_sets = await bootstrap_candidates(ctx)
            early.start_reference(demo_sets, self.plan_for(ctx))
            texts = await early.texts()
            candidates = Candidates(
                tuple(n for n, _ in ctx.predictors),
                {n: (p.instruction,) for n, p in ctx.predictors},
                demo_sets,
            ).with_formats(ctx.predictors, ctx.budget.search_formats)
            n_trials = self.plan_for(ctx).n_trials
            async with ctx.phase("search", f"{n_trials} trials with proposals"):
                loop = search_loop(ctx, candidates, n_trials, _ProposalHook(ctx, texts), early=early)
                outcome = await loop.run()
                return loop.candidates, outcome


@attrs.define
class _ProposalHook:
    """Turns a MIPRO++ suggestion (grounding, temperature) into an instruction index, proposing and
    caching a new instruction per distinct setting."""

    ctx: RunContext
    texts: Mapping[str, str | None]
    made: dict[tuple[str, int, int], int] = attrs.Factory(dict)

    def extra_parameters(self, candidates: Candidates) -> dict[str, int]:
        out = {}
        for name in candidates.predictors:
            out[f"{name}.grounding"] = len(GROUNDING_OPTIONS)
            out[f"{name}.temperature"] = len(TEMPERATURES)
        return out

    async def resolve(self, loop: SearchLoop, choice: dict[str, int]) -> dict[str, int]:
        resolved = {k: v for k, v in choice.items() if k.endswith((".demos", ".format"))}
        for name, predictor in self.ctx.predictors:
            g, t = choice.get(f"{name}.grounding", 0), choice.get(f"{name}.temperature", 0)
            key = (name, g, t)
            if key not in self.made:
                grounding = within(GROUNDING_OPTIONS[g], self.ctx.grounding, TEMPERATURES[t])
                existing = list(loop.candidates.instructions[name])
                demo_sets = loop.candidates.demo_sets[name]
                demos = demo_sets[choice.get(f"{name}.demos", 0)].demos
                proposal = await self.ctx.memo(
                    "mipro_pp_proposal",
                    f"{name}:{g}:{t}:{len(self.made) + 1}",
                    partial(
                        propose_instruction,
                        ProposalContext(name, predictor, texts=self.texts),
                        self.ctx.proposer_lm,
                        index=len(self.made) + 1,
                        grounding=grounding,
                        demos=demos,
                        existing=existing,
                        history=[(text, None) for text in existing],
                        seed=self.ctx.seed,
                        outage=self.ctx.outage,
                    ),
                    attrs.asdict,
                    lambda data: Proposal(**data),
                )
                if proposal.instruction is None:
                    self.ctx.dropped.append((name, proposal.index, proposal.reason))
                    await self.ctx.emit(CandidateDropped(name, proposal.index, proposal.reason))
                    self.made[key] = 0
                else:
                    self.made[key] = loop.add_instruction(name, proposal.instruction)
                    await self.ctx.emit(
                        CandidateProposed(name, "instruction", self.made[key], proposal.instruction)
                    )
            resolved[f"{name}.instruction"] = self.made[key]
        return resolved
