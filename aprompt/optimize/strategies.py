"""The optimization strategies, assembled from the shared parts (bootstrap, propose, search).

===========================  ============  ============  ======================================
strategy                     instructions  demos         search
===========================  ============  ============  ======================================
``mipro`` (default)          proposed      bootstrapped  TPE over both, mini-batches
``mipro_zero_shot``          proposed      none          TPE, mini-batches
``bayesian_bootstrap``       original      bootstrapped  TPE, mini-batches
``bootstrap_random_search``  original      bootstrapped  random demo sets, each fully evaluated
``module_opro``              proposed      none          rounds: propose with scored history
``mipro_plus_plus``          proposed      bootstrapped  TPE also over the proposer's grounding
===========================  ============  ============  ======================================
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import attrs

from aprompt._errors import JournalError
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm.metering import LimitReached
from aprompt.optimize.bootstrap import DemoSet, bootstrap_demo_sets, size_ladder
from aprompt.optimize.candidates import Candidates
from aprompt.optimize.evaluate import Evaluation, evaluate
from aprompt.optimize.events import CandidateDropped, CandidateProposed
from aprompt.optimize.examples import Example
from aprompt.optimize.outage import OutageGuard
from aprompt.optimize.proposal_filter import on_task, screen_verdict, task_vocabulary
from aprompt.optimize.propose import (
    Grounding,
    Proposal,
    ProposalContext,
    propose_instruction,
    propose_instructions,
)
from aprompt.optimize.run_context import RunContext
from aprompt.optimize.search import ProposalHook, SearchLoop, SearchOutcome
from aprompt.optimize.summaries import summarize_data, summarize_program
from aprompt.program.overrides import PromptOverride
from aprompt.program.values import Demo

Strategy = Callable[[RunContext], Awaitable[tuple[Candidates, SearchOutcome]]]
logger = logging.getLogger("aprompt")


async def bootstrap_candidates(ctx: RunContext) -> dict[str, tuple[DemoSet, ...]]:
    """Demo sets per predictor, of several sizes up to ``Budget.max_demos`` (see
    :mod:`aprompt.optimize.bootstrap`); set 0 is the program's own demos, and when it has some, an empty
    set follows it, so showing no demos is always a choice."""

    async def compute() -> dict[str, tuple[DemoSet, ...]]:
        result = await bootstrap_demo_sets(
            ctx.program,
            ctx.predictors,
            ctx.trainset,
            ctx.metric,
            n_sets=ctx.budget.n_candidates,
            max_bootstrapped=ctx.budget.max_bootstrapped_demos,
            max_labeled=ctx.budget.max_labeled_demos,
            seed=ctx.seed,
            teacher_lm=ctx.teacher_lm,
            lm=ctx.lm,
            threshold=ctx.bootstrap_threshold,
            concurrency=ctx.concurrency,
            outage=ctx.outage,
            set_sizes=size_ladder(ctx.budget.max_demos),
        )
        ctx.failures.update({f"bootstrap:{k}": v for k, v in result.failures.items()})
        ctx.pending_runs = result.runs  # measures what a program run costs
        return {
            name: distinct_sets(
                (
                    DemoSet(tuple(predictor.demos)),
                    *((DemoSet(()),) if predictor.demos else ()),
                    *result.demo_sets[name][1:],
                )
            )
            for name, predictor in ctx.predictors
        }

    n_sets, most = ctx.budget.n_candidates, ctx.budget.max_bootstrapped_demos
    ctx.admit_step(
        "bootstrapping demos", [("demo_sets", "all", min(len(ctx.trainset), max(0, n_sets - 2) * most * 2))]
    )
    async with ctx.phase("bootstrap"):
        sets = await ctx.memo("demo_sets", "all", compute, demo_sets_to_json, demo_sets_from_json)
        for name, _ in ctx.predictors:
            for index, demo_set in enumerate(sets[name][1:], start=1):
                await ctx.emit(CandidateProposed(name, "demos", index, demo_set))
    return sets


def distinct_sets(sets: Sequence[DemoSet]) -> tuple[DemoSet, ...]:
    """``sets`` without those showing the same demos as an earlier one (a labeled set is empty when no
    example has the predictor's fields; a small trainset gives equal sets): a repeat only dilutes the
    search."""
    seen: set[str] = set()
    out = []
    for demo_set in sets:
        key = json.dumps([d.to_dict() for d in demo_set.demos], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(demo_set)
    return tuple(out)


def demo_sets_to_json(sets: Mapping[str, tuple[DemoSet, ...]]) -> dict[str, Any]:
    return {
        name: [
            {
                "demos": [d.to_dict() for d in s.demos],
                "bootstrapped": s.bootstrapped,
                "source_ids": list(s.source_ids),
            }
            for s in group
        ]
        for name, group in sets.items()
    }


def demo_sets_from_json(data: Mapping[str, Any]) -> dict[str, tuple[DemoSet, ...]]:
    return {
        name: tuple(
            DemoSet(tuple(Demo(d) for d in s["demos"]), s["bootstrapped"], tuple(s["source_ids"]))
            for s in group
        )
        for name, group in data.items()
    }


async def grounding_texts(ctx: RunContext) -> tuple[str | None, str | None]:
    """Data summary and program description, each ``None`` when switched off or unusable."""
    found = await ctx.memo("summaries", "all", lambda: _grounding_texts(ctx), list, tuple)
    return found[0], found[1]


async def _grounding_texts(ctx: RunContext) -> tuple[str | None, str | None]:
    data_summary = program_summary = None
    if ctx.grounding.data_summary:
        got = await summarize_data(ctx.trainset, ctx.proposer_lm, seed=ctx.seed, outage=ctx.outage)
        data_summary = got.text
        if got.text is None:
            ctx.dropped.append(("*", -1, f"data summary: {got.reason}"))
    if ctx.grounding.program_summary:
        got = await summarize_program(ctx.program, ctx.predictors, ctx.proposer_lm, outage=ctx.outage)
        program_summary = got.text
        if got.text is None:
            ctx.dropped.append(("*", -1, f"program summary: {got.reason}"))
    return data_summary, program_summary


async def instruction_candidates(
    ctx: RunContext, demo_sets: Mapping[str, tuple[DemoSet, ...]]
) -> dict[str, tuple[str, ...]]:
    """Proposed instructions per predictor (the original first), each worth searching.

    Predictors are proposed for concurrently, each predictor's candidates one after another so each sees
    the earlier ones. Replies are cleaned as they come (echoed scaffolding and field labels removed, see
    :mod:`aprompt.optimize.proposal_filter`); then every usable proposal is screened against the original
    instruction on ``Budget.screen_size`` validation examples without demos, and dropped when far worse,
    or off-task and worse. Every drop is in ``ctx.dropped`` and a :class:`CandidateDropped` event; a
    predictor left with the original alone is searched on demos only, and the run says so.
    """
    n_proposals = max(0, ctx.budget.n_candidates - 1)
    n_summaries = 4 * ctx.grounding.data_summary + ctx.grounding.program_summary  # 3 batches + condensing
    ctx.admit_step(
        "proposing instructions",
        [
            ("summaries", "all", n_summaries),
            *(("proposals", name, n_proposals) for name, _ in ctx.predictors),
        ],
        calls=True,
    )
    async with ctx.phase("propose"):
        data_summary, program_summary = await grounding_texts(ctx)
        found: dict[str, list[Proposal]] = {}

        async def for_predictor(name: str) -> None:
            predictor = dict(ctx.predictors)[name]
            context = ProposalContext(name, predictor, data_summary, program_summary)

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

            found[name] = await ctx.memo("proposals", name, compute, proposals_to_json, proposals_from_json)

        async with plain_errors_task_group() as group:
            for name, _ in ctx.predictors:
                group.start_soon(for_predictor, name)
        out: dict[str, tuple[str, ...]] = {}
        # One predictor after another: a screen's runs measure what a program run costs.
        for name, predictor in ctx.predictors:
            usable: list[Proposal] = []
            for proposal in found[name]:
                if proposal.instruction is None:
                    await _drop(ctx, name, proposal.index, proposal.reason)
                else:
                    usable.append(proposal)
                    if proposal.cleaned:
                        logger.info("aprompt: proposal %d for %s %s", proposal.index, name, proposal.cleaned)
            kept = [predictor.instruction]
            scores = await screen_instructions(
                ctx, name, [predictor.instruction, *(p.instruction or "" for p in usable)]
            )
            vocabulary = task_vocabulary(predictor, data_summary, program_summary)
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
                    await _drop(ctx, name, proposal.index, verdict)
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
                await _drop(ctx, name, -1, reason)
            out[name] = tuple(kept)
    return out


async def _drop(ctx: RunContext, name: str, index: int, reason: str) -> None:
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
        results: list[dict[str, float]] = []
        # One instruction after another: the other predictors' calls, the same for every instruction,
        # are then answered from the cache instead of being sent at once.
        for position, instruction in enumerate(instructions):

            async def run(todo: Sequence[Example], instruction: str = instruction) -> Evaluation:
                return await evaluate(
                    ctx.program,
                    todo,
                    ctx.metric,
                    prompts={name: PromptOverride(instruction, ())},
                    lm=ctx.lm,
                    concurrency=ctx.concurrency,
                )

            evaluation = await guard.evaluate(run, examples, f"the screen of {name}'s proposal {position}")
            results.append(evaluation.scores)
        ctx.pending_runs = runs  # measures what a program run costs
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


def proposals_to_json(proposals: Sequence[Proposal]) -> list[dict[str, Any]]:
    return [attrs.asdict(p) for p in proposals]


def proposals_from_json(data: Sequence[Mapping[str, Any]]) -> list[Proposal]:
    return [Proposal(**p) for p in data]


def _capacity(lm: object) -> int | None:
    capacity = getattr(lm, "capacity", None)
    return capacity if isinstance(capacity, int) else None


def _loop(
    ctx: RunContext, candidates: Candidates, n_trials: int, proposal_hook: ProposalHook | None = None
) -> SearchLoop:
    ctx.search_loop = SearchLoop(
        proposal_hook=proposal_hook,
        program=ctx.program,
        candidates=candidates,
        valset=ctx.valset,
        metric=ctx.metric,
        emit=ctx.emit,
        n_trials=n_trials,
        minibatch_size=ctx.budget.minibatch_size,
        full_eval_every=ctx.budget.full_eval_every,
        racing=ctx.budget.racing,
        parallel_trials=ctx.budget.parallel_trials_for(_capacity(ctx.lm), len(ctx.predictors)),
        seed=ctx.seed,
        lm=ctx.lm,
        concurrency=ctx.concurrency,
        memo=ctx.memo,
        should_stop=ctx.limit_reached,
        outage=OutageGuard.for_program(ctx.predictors, ctx.lm, ctx.outage),
        failures=ctx.failures,
        admit_step=ctx.admit_step,
    )
    return ctx.search_loop


async def _tpe_search(ctx: RunContext, candidates: Candidates) -> SearchOutcome:
    n_trials = ctx.budget.trials_for(len(ctx.predictors), candidates.search_demos)
    async with ctx.phase("search", f"{n_trials} trials"):
        return await _loop(ctx, candidates, n_trials).run()


async def mipro(ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
    demo_sets = await bootstrap_candidates(ctx)
    instructions = await instruction_candidates(ctx, demo_sets)
    candidates = Candidates(tuple(n for n, _ in ctx.predictors), instructions, demo_sets)
    return candidates, await _tpe_search(ctx, candidates)


async def mipro_zero_shot(ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
    instructions = await instruction_candidates(ctx, {})
    base = Candidates.original(ctx.predictors)
    candidates = attrs.evolve(base, instructions=instructions, search_demos=False)
    return candidates, await _tpe_search(ctx, candidates)


async def bayesian_bootstrap(ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
    demo_sets = await bootstrap_candidates(ctx)
    base = Candidates.original(ctx.predictors)
    candidates = attrs.evolve(base, demo_sets=demo_sets, search_instructions=False)
    return candidates, await _tpe_search(ctx, candidates)


async def bootstrap_random_search(ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
    """Demos only: random joint choices of demo sets, each fully evaluated; the best is kept."""
    demo_sets = await bootstrap_candidates(ctx)
    base = Candidates.original(ctx.predictors)
    candidates = attrs.evolve(base, demo_sets=demo_sets, search_instructions=False)
    space = candidates.parameters()
    n_full = max(1, ctx.budget.trials_for(len(ctx.predictors), True) // ctx.budget.full_eval_every)
    rng = random.Random(f"{ctx.seed}:random-search")
    async with ctx.phase("search", f"{n_full} random full evaluations"):
        loop = _loop(ctx, candidates, 0)
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
            if ctx.limit_reached() is not None:
                break
            await loop.full_evaluation(choice)
        return candidates, await loop.run_outcome()


async def module_opro(ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
    """Instructions only: each round, every predictor's proposer sees its past instructions with the
    program-level mini-batch score they got, and writes the next one."""
    candidates = attrs.evolve(Candidates.original(ctx.predictors), search_demos=False)
    n_rounds = max(1, ctx.budget.n_candidates - 1)
    async with ctx.phase("search", f"{n_rounds} OPRO rounds"):
        data_summary, program_summary = await grounding_texts(ctx)
        loop = _loop(ctx, candidates, 0)
        await loop.full_evaluation(candidates.baseline(), is_baseline=True)
        history: dict[str, list[tuple[str, float | None]]] = {
            name: [(p.instruction, loop.full_evals[0].score)] for name, p in ctx.predictors
        }
        for round_number in range(1, n_rounds + 1):
            if ctx.limit_reached() is not None:
                break
            choice: dict[str, int] = {}
            instructions = {k: list(v) for k, v in candidates.instructions.items()}
            for name, predictor in ctx.predictors:
                proposal = await ctx.memo(
                    "opro_proposal",
                    f"{name}:{round_number}",
                    partial(
                        propose_instruction,
                        ProposalContext(name, predictor, data_summary, program_summary),
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
            trial = await loop.single_trial(round_number - 1, choice)
            for name, _ in ctx.predictors:
                key = f"{name}.instruction"
                if key in choice:
                    history[name].append((instructions[name][choice[key]], trial.score))
            if round_number % max(1, ctx.budget.full_eval_every // 2) == 0:
                await loop.full_evaluate_best_untested()
        return candidates, await loop.run_outcome(final_full_eval=True)


GROUNDING_OPTIONS: tuple[Grounding, ...] = (
    Grounding(),
    Grounding(data_summary=False),
    Grounding(program_summary=False),
    Grounding(demos=False),
    Grounding(data_summary=False, program_summary=False),
    Grounding(tip=False, history=False),
)
TEMPERATURES = (0.5, 1.0, 1.4)


async def mipro_plus_plus(ctx: RunContext) -> tuple[Candidates, SearchOutcome]:
    """MIPRO whose TPE also chooses, per predictor, the proposer's grounding and temperature; each
    trial proposes the instructions it evaluates with the chosen settings (learning how to propose)."""
    demo_sets = await bootstrap_candidates(ctx)
    async with ctx.phase("propose", "summaries"):
        data_summary, program_summary = await grounding_texts(ctx)
    candidates = Candidates(
        tuple(n for n, _ in ctx.predictors),
        {n: (p.instruction,) for n, p in ctx.predictors},
        demo_sets,
    )
    # The space is larger than MIPRO's (grounding and temperature too): twice the derived trials,
    # unless the budget names its own count.
    n_trials = ctx.budget.n_trials or ctx.budget.trials_for(len(ctx.predictors), True) * 2
    async with ctx.phase("search", f"{n_trials} trials with proposals"):
        loop = _loop(ctx, candidates, n_trials, _ProposalHook(ctx, data_summary, program_summary))
        outcome = await loop.run()
        return loop.candidates, outcome


@attrs.define
class _ProposalHook:
    """Turns a MIPRO++ suggestion (grounding, temperature) into an instruction index, proposing and
    caching a new instruction per distinct setting."""

    ctx: RunContext
    data_summary: str | None
    program_summary: str | None
    made: dict[tuple[str, int, int], int] = attrs.Factory(dict)

    def extra_parameters(self, candidates: Candidates) -> dict[str, int]:
        out = {}
        for name in candidates.predictors:
            out[f"{name}.grounding"] = len(GROUNDING_OPTIONS)
            out[f"{name}.temperature"] = len(TEMPERATURES)
        return out

    async def resolve(self, loop: SearchLoop, choice: dict[str, int]) -> dict[str, int]:
        resolved = {k: v for k, v in choice.items() if k.endswith(".demos")}
        for name, predictor in self.ctx.predictors:
            g, t = choice.get(f"{name}.grounding", 0), choice.get(f"{name}.temperature", 0)
            key = (name, g, t)
            if key not in self.made:
                grounding = attrs.evolve(GROUNDING_OPTIONS[g], temperature=TEMPERATURES[t])
                existing = list(loop.candidates.instructions[name])
                demo_sets = loop.candidates.demo_sets[name]
                demos = demo_sets[choice.get(f"{name}.demos", 0)].demos
                proposal = await self.ctx.memo(
                    "mipro_pp_proposal",
                    f"{name}:{g}:{t}:{len(self.made) + 1}",
                    partial(
                        propose_instruction,
                        ProposalContext(name, predictor, self.data_summary, self.program_summary),
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


STRATEGIES: dict[str, Strategy] = {
    "mipro": mipro,
    "mipro_zero_shot": mipro_zero_shot,
    "bayesian_bootstrap": bayesian_bootstrap,
    "bootstrap_random_search": bootstrap_random_search,
    "module_opro": module_opro,
    "mipro_plus_plus": mipro_plus_plus,
}
