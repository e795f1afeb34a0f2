"""The instruction steps: proposing instructions per predictor, and screening the proposals against the
original on a few validation examples (each journaled through ``ctx.memo``, so a resumed run pays for
none again)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from aprompt._errors import JournalError
from aprompt._optimize.bootstrap import DemoSet
from aprompt._optimize.evaluate import Evaluation, evaluate_reporting
from aprompt._optimize.events import CandidateDropped, CandidateProposed
from aprompt._optimize.examples import Example
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.proposal_filter import on_task, screen_verdict, task_vocabulary
from aprompt._optimize.propose import Proposal, ProposalContext, propose_instructions
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.step_memo import note_runs
from aprompt._optimize.strategies.grounding_step import grounding_calls, grounding_texts
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._limit_reached import LimitReached
from aprompt.program.overrides import PromptOverride

logger = logging.getLogger("aprompt")

#: The journal's record of a predictor's searched instructions (the original first) and what the screen
#: dropped: the search's indices, which the proposals alone do not give once the screen drops one.
INSTRUCTIONS_KIND = "instructions"


async def instruction_candidates(
    ctx: RunContext,
    demo_sets: Mapping[str, tuple[DemoSet, ...]],
    texts: Mapping[str, str | None] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Proposed instructions per predictor (the original first), each worth searching.

    ``texts``: the grounding texts, when the run wrote them already (beside the bootstrap, see
    :mod:`aprompt._optimize.strategies.pipeline`); else they are written here first.

    Every proposal of every predictor is drawn at once
    (:func:`~aprompt._optimize.propose.propose_instructions`), and each predictor's proposals are screened
    as soon as they are in. Replies are cleaned as they come
    (echoed scaffolding and field labels removed, see :mod:`aprompt._optimize.proposal_filter`); then every
    usable proposal is screened against the original instruction on ``Budget.screen_size`` validation
    examples without demos, and dropped when far worse, or off-task and worse. Every drop is in
    ``ctx.dropped`` and a :class:`CandidateDropped` event (in predictor order, whatever finished first); a
    predictor left with the original alone is searched on demos only, and the run says so.
    """
    n_proposals = max(0, ctx.budget.n_candidates - 1)
    ctx.admit_step(
        "proposing instructions",
        [
            *([("summaries", "all", grounding_calls(ctx))] if texts is None else []),
            *(("proposals", name, n_proposals) for name, _ in ctx.predictors),
        ],
        calls=True,
    )
    async with ctx.phase("propose"):
        grounded = await grounding_texts(ctx) if texts is None else texts
        found: dict[str, tuple[list[Proposal], list[dict[str, float]]]] = {}

        async def for_predictor(name: str) -> None:
            predictor = dict(ctx.predictors)[name]
            context = ProposalContext(name, predictor, texts=grounded)

            async def compute() -> list[Proposal]:
                return await propose_instructions(
                    context,
                    ctx.proposer_lm,
                    n_candidates=ctx.budget.n_candidates,
                    grounding=ctx.grounding,
                    demo_sets=[s.demos for s in demo_sets.get(name, ())],
                    seed=ctx.seed,
                    outage=ctx.outage,
                )

            proposals = await ctx.memo("proposals", name, compute, proposals_to_json, proposals_from_json)
            usable = [p.instruction for p in proposals if p.instruction is not None]
            found[name] = (proposals, await screen_instructions(ctx, name, [predictor.instruction, *usable]))

        async with plain_errors_task_group() as group:
            for name, _ in ctx.predictors:
                group.start_soon(for_predictor, name)
        out: dict[str, tuple[str, ...]] = {}
        for name, predictor in ctx.predictors:
            proposals, scores = found[name]
            usable: list[Proposal] = []
            for proposal in proposals:
                if proposal.instruction is None:
                    await drop(ctx, name, proposal.index, proposal.reason)
                else:
                    usable.append(proposal)
                    if proposal.cleaned:
                        logger.info("aprompt: proposal %d for %s %s", proposal.index, name, proposal.cleaned)
            kept = [predictor.instruction]
            screened: list[str] = []
            vocabulary = task_vocabulary(predictor, *grounded.values())
            for position, proposal in enumerate(usable, start=1):
                assert proposal.instruction is not None
                verdict = (
                    screen_verdict(
                        scores[0], scores[position], task_related=on_task(proposal.instruction, vocabulary)
                    )
                    if scores
                    else None
                )
                if verdict is not None:
                    await drop(ctx, name, proposal.index, verdict)
                    screened.append(verdict)
                    continue
                kept.append(proposal.instruction)
                await ctx.emit(CandidateProposed(name, "instruction", len(kept) - 1, kept[-1]))
            if n_proposals and len(kept) == 1:
                searched = "demos" if len(demo_sets.get(name, ())) > 1 else "nothing (it has no demo sets)"
                reason = (
                    f"every proposal for {name} was dropped: it keeps its original instruction, and the "
                    f"search spends its trials for {name} on {searched}"
                )
                logger.info("aprompt: %s", reason)
                await drop(ctx, name, -1, reason)
                screened.append(reason)
            out[name] = tuple(kept)
            if ctx.journal is not None:
                record = {"instructions": list(kept), "dropped": screened}
                ctx.journal.append(INSTRUCTIONS_KIND, record, key=name)
    return out


async def drop(ctx: RunContext, name: str, index: int, reason: str) -> None:
    """Record a dropped proposal (``index`` -1: the predictor lost them all) and report it."""
    ctx.dropped.append((name, index, reason))
    await ctx.emit(CandidateDropped(name, index, reason))


def screen_examples(ctx: RunContext) -> list[Example]:
    """The screen's validation examples: a seeded sample, the same for every predictor and proposal."""
    n = min(ctx.budget.screen_size, len(ctx.valset))
    return random.Random(f"{ctx.seed}:screen").sample(list(ctx.valset), n)


async def screen_instructions(
    ctx: RunContext, name: str, instructions: Sequence[str]
) -> list[dict[str, float]]:
    """Per-example scores of each instruction for predictor ``name`` (no demos; the other predictors as
    the program has them) on :func:`screen_examples`; ``[]`` when the screen is off, has nothing to
    compare, or the run's limits cannot pay for it. Journaled, so a resumed run screens nothing again."""
    examples = screen_examples(ctx)
    if len(instructions) < 2 or not examples:
        return []
    runs = len(instructions) * len(examples)
    guard = OutageGuard.for_program(ctx.predictors, ctx.lm, ctx.outage)

    async def compute() -> list[dict[str, float]]:
        stopped_by = ctx.stopped_by
        try:
            ctx.admit_step(f"screening the proposals for {name}", [("screen", name, runs)])
        except LimitReached as refusal:
            # The screen is a filter, never worth the baseline's evaluation: the run goes on unscreened.
            # The skip is journaled like a screen, so a resumed run (with a higher limit) searches the
            # same candidates.
            ctx.stopped_by = stopped_by
            logger.info("aprompt: the proposals for %s are not screened: %s", name, refusal)
            return []
        results: list[dict[str, float]] = [{} for _ in instructions]

        # Every instruction at once: a screen waits for its slowest call, not for one per instruction.
        # The other predictors' calls, the same for every instruction, are sent once: the run's cache
        # shares identical calls in flight.
        async def screen(position: int) -> None:
            what = f"the screen of {name}'s proposal {position}"
            evaluation = await screen_one(ctx, name, instructions[position], guard, what)
            results[position] = evaluation.scores

        async with plain_errors_task_group() as group:
            for position in range(len(instructions)):
                group.start_soon(screen, position)
        note_runs(runs)  # measures what a program run costs
        return results

    def encode(scores: list[dict[str, float]]) -> dict[str, Any]:
        return {"instructions": list(instructions), "scores": scores}

    def decode(data: Mapping[str, Any]) -> list[dict[str, float]]:
        if list(data["instructions"]) != list(instructions):
            raise JournalError(
                f"the journal's screen of {name} scored other instructions than this run proposes: the "
                "run_dir belongs to a different run; pass resume=False to start over"
            )
        return [{str(k): float(v) for k, v in s.items()} for s in data["scores"]]

    return await ctx.memo("screen", name, compute, encode, decode)


async def screen_one(
    ctx: RunContext, name: str, instruction: str, guard: OutageGuard, what: str
) -> Evaluation:
    """One instruction's screen for predictor ``name``: the program with ``instruction`` and no demos
    for it on :func:`screen_examples`."""

    async def run(todo: Sequence[Example]) -> Evaluation:
        # The run's arguments were checked once by optimize(): not again for each screen.
        return await evaluate_reporting(
            ctx.program,
            todo,
            ctx.metric,
            prompts={name: PromptOverride(instruction, ())},
            lm=ctx.lm,
            concurrency=ctx.limiter,
        )

    return await guard.evaluate(run, screen_examples(ctx), what)


def proposals_to_json(proposals: Sequence[Proposal]) -> list[dict[str, Any]]:
    return [attrs.asdict(p) for p in proposals]


def proposals_from_json(data: Sequence[Mapping[str, Any]]) -> list[Proposal]:
    return [Proposal(**p) for p in data]
