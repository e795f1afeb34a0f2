"""The steps strategies are built from: bootstrapping demo sets, grounding texts, proposing and screening
instructions, and the search loop (each journaled through ``ctx.memo``, so a resumed run pays for none
again). Steps that need no earlier one's result start beside them
(:mod:`aprompt._optimize.strategies.pipeline`)."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from aprompt._errors import JournalError
from aprompt._optimize import grounding as grounding_sources
from aprompt._optimize.bootstrap import (
    DemoSet,
    bootstrap_demo_sets,
    bootstrap_runs,
    labeled_only_set,
    size_ladder,
)
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.evaluate import Evaluation, evaluate
from aprompt._optimize.events import CandidateDropped, CandidateProposed
from aprompt._optimize.examples import Example
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.proposal_filter import on_task, screen_verdict, task_vocabulary
from aprompt._optimize.propose import Proposal, ProposalContext, propose_instructions
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search import ProposalHook, SearchLoop, no_hook
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.summaries import Grounded
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._metering import LimitReached
from aprompt.program.overrides import PromptOverride
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo

if TYPE_CHECKING:
    from aprompt._optimize.strategies.pipeline import Pipeline

logger = logging.getLogger("aprompt")


async def bootstrap_candidates(
    ctx: RunContext, on_set: Callable[[int, Mapping[str, DemoSet]], None] | None = None
) -> dict[str, tuple[DemoSet, ...]]:
    """Demo sets per predictor, of several sizes up to ``Budget.max_demos`` (see
    :mod:`aprompt._optimize.bootstrap`); set 0 is the program's own demos, and when it has some, an empty
    set follows it, so showing no demos is always a choice.

    ``on_set``: told each bootstrapped set as soon as it is built (see
    :func:`~aprompt._optimize.bootstrap.bootstrap_demo_sets`); not when the sets are journaled."""

    async def compute() -> dict[str, tuple[DemoSet, ...]]:
        labeled = (
            {name: labeled_set_of(ctx, name, predictor) for name, predictor in ctx.predictors}
            if ctx.budget.n_candidates >= 2
            else None
        )
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
            concurrency=ctx.limiter,
            outage=ctx.outage,
            set_sizes=size_ladder(ctx.budget.max_demos),
            on_set=on_set,
            labeled_sets=labeled,  # set 1, as the warm-up and the hand-written reference show it
        )
        ctx.failures.update({f"bootstrap:{k}": v for k, v in result.failures.items()})
        ctx.note_runs(result.runs)  # measures what a program run costs
        return {
            name: distinct_sets((*_own_sets(predictor), *result.demo_sets[name][1:]))
            for name, predictor in ctx.predictors
        }

    runs = bootstrap_runs(len(ctx.trainset), ctx.budget.n_candidates, ctx.budget.max_bootstrapped_demos)
    ctx.admit_step("bootstrapping demos", [("demo_sets", "all", runs)])
    async with ctx.phase("bootstrap"):
        sets = await ctx.memo("demo_sets", "all", compute, demo_sets_to_json, demo_sets_from_json)
        for name, _ in ctx.predictors:
            for index, demo_set in enumerate(sets[name][1:], start=1):
                await ctx.emit(CandidateProposed(name, "demos", index, demo_set))
    return sets


def _own_sets(predictor: Predict) -> tuple[DemoSet, ...]:
    """The program's own demos, then, when it has some, an empty set."""
    return (DemoSet(tuple(predictor.demos)), *((DemoSet(()),) if predictor.demos else ()))


def labeled_set_of(ctx: RunContext, name: str, predictor: Predict) -> DemoSet:
    """The labeled-only set of ``predictor`` (named ``name``) for the run, built on first use."""
    if name not in ctx.labeled_sets:
        budget = ctx.budget
        ctx.labeled_sets[name] = labeled_only_set(
            predictor, ctx.trainset, budget.max_labeled_demos, budget.max_demos
        )
    return ctx.labeled_sets[name]


def leading_sets_of(ctx: RunContext, name: str, predictor: Predict) -> tuple[DemoSet, ...]:
    """The sets :func:`bootstrap_candidates` puts first for ``predictor`` (named ``name``), before
    dropping repeats, known before any LM call: the program's own demos, an empty set when it has some,
    and the labeled set (training examples as demos, see :mod:`aprompt._optimize.bootstrap`). The
    bootstrapped sets follow."""
    labeled = ctx.budget.n_candidates >= 2
    return (*_own_sets(predictor), *((labeled_set_of(ctx, name, predictor),) if labeled else ()))


def leading_demo_sets(ctx: RunContext) -> dict[str, tuple[DemoSet, ...]]:
    """The first of the demo sets :func:`bootstrap_candidates` returns, at the same indices
    (:func:`leading_sets_of` without repeats)."""
    return {name: distinct_sets(leading_sets_of(ctx, name, predictor)) for name, predictor in ctx.predictors}


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


async def grounding_texts(ctx: RunContext) -> dict[str, str | None]:
    """The text of every grounding source (:data:`~aprompt._optimize.grounding.GROUNDING_SOURCES`) by
    name, ``None`` where switched off or unusable; written once per run and journaled together."""
    names = [source.name for source in grounding_sources.GROUNDING_SOURCES]

    def encode(texts: Mapping[str, str | None]) -> list[str | None]:
        return [texts[name] for name in names]

    def decode(data: Sequence[str | None]) -> dict[str, str | None]:
        return dict(zip(names, data, strict=True))

    return await ctx.memo("summaries", "all", lambda: _grounding_texts(ctx), encode, decode)


async def _grounding_texts(ctx: RunContext) -> dict[str, str | None]:
    sources = grounding_sources.GROUNDING_SOURCES
    got: list[Grounded | None] = [None] * len(sources)

    async def one(position: int) -> None:  # the sources need nothing of each other: all at once
        got[position] = await sources[position].text(ctx)

    async with plain_errors_task_group() as group:
        for position, source in enumerate(sources):
            if source.enabled(ctx.grounding):
                group.start_soon(one, position)
    texts: dict[str, str | None] = {}
    for source, grounded in zip(sources, got, strict=True):  # dropped in source order, as written
        texts[source.name] = None if grounded is None else grounded.text
        if grounded is not None and grounded.text is None:
            ctx.dropped.append(("*", -1, f"{source.label}: {grounded.reason}"))
    return texts


def grounding_calls(ctx: RunContext) -> int:
    """The most LM calls the run's grounding sources make."""
    return sum(
        source.max_calls for source in grounding_sources.GROUNDING_SOURCES if source.enabled(ctx.grounding)
    )


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
            out[name] = tuple(kept)
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
        ctx.note_runs(runs)  # measures what a program run costs
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
        return await evaluate(
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


def _capacity(lm: object) -> int | None:
    capacity = getattr(lm, "capacity", None)
    return capacity if isinstance(capacity, int) else None


def labeled_reference(candidates: Candidates) -> dict[str, int]:
    """The choice a user would write by hand: each predictor's instruction as written, with its first
    labeled-only demo set (training examples as demos, see :mod:`aprompt._optimize.bootstrap`) where it has
    one; empty when no predictor has one (a program without labels for its stages)."""
    choice = {}
    for name in candidates.predictors:
        sets = candidates.demo_sets[name]
        labeled = next((i for i, s in enumerate(sets) if i > 0 and s.demos and s.bootstrapped == 0), None)
        if labeled is not None and candidates.search_demos:
            choice[f"{name}.demos"] = labeled
    return choice


def nothing_refuses(ctx: RunContext) -> bool:
    """Whether the run has no limit that could refuse a step (calls, tokens, cost)."""
    limits = ctx.limits
    return limits.max_lm_calls is None and limits.max_tokens is None and limits.max_cost is None


def search_loop(
    ctx: RunContext,
    candidates: Candidates,
    n_trials: int,
    proposal_hook: ProposalHook | None = None,
    after_evaluation: Callable[[SearchLoop], Awaitable[None]] | None = None,
    early: Pipeline | None = None,
) -> SearchLoop:
    """The run's search loop over ``candidates`` (kept in ``ctx.search_loop``: a stopped run returns the
    best it found); ``after_evaluation`` runs after each periodic full evaluation; ``early``: the run's
    pipeline, whose evaluations (the baseline's, the hand-written prompt's) the loop takes instead of
    running them again."""
    ctx.search_loop = SearchLoop(
        references=[labeled_reference(candidates)],
        confirmation=ctx.trainset,
        after_evaluation=after_evaluation or no_hook,
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
        limiter=ctx.limiter,
        memo=ctx.memo,
        should_stop=ctx.limit_reached,
        outage=OutageGuard.for_program(ctx.predictors, ctx.lm, ctx.outage),
        failures=ctx.failures,
        admit_step=ctx.admit_step,
        # Under a limit, the trials keep one full evaluation's runs for the search's last evaluation, so
        # a budget smaller than the plan still ends in a program the evidence chose.
        admit_trial=None if nothing_refuses(ctx) else ctx.admit_trial,
        runs_affordable=ctx.runs_affordable,
        binding_limit=ctx.binding_limit,
        hold_steps=ctx.hold_steps,
        retire_steps=ctx.retire_steps,
        confirmation_kept=0 if nothing_refuses(ctx) else ctx.confirmation_kept,
        time_limited=ctx.limits.max_time is not None,
        seconds_left=ctx.meter.seconds_left,
        decided=ctx.decided,
        prefetched=early.prefetched if early is not None else None,
        # Runs started ahead must be the run's own: nothing may refuse or stop a step (no limit on calls,
        # tokens, cost or time).
        go_ahead=nothing_refuses(ctx) and ctx.limits.max_time is None,
    )
    return ctx.search_loop


async def tpe_search(
    ctx: RunContext, candidates: Candidates, n_trials: int, early: Pipeline | None = None
) -> SearchOutcome:
    """``n_trials`` TPE trials over ``candidates`` (the ``search`` phase)."""
    async with ctx.phase("search", f"{n_trials} trials"):
        return await search_loop(ctx, candidates, n_trials, early=early).run()
