"""The demo-set steps: the run's bootstrapped demo sets (journaled, so a resumed run pays for none again),
the sets known before any LM call that lead them, and the hand-written reference choice they give."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aprompt._optimize.bootstrap import (
    DemoSet,
    bootstrap_demo_sets,
    bootstrap_runs,
    labeled_only_set,
    size_ladder,
)
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.events import CandidateProposed
from aprompt._optimize.labeled_demos import demo_key
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.step_memo import note_runs
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo


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
        note_runs(result.runs)  # measures what a program run costs
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
    seen: set[tuple[str, ...]] = set()
    out = []
    for demo_set in sets:
        key = tuple(demo_key(d) for d in demo_set.demos)
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
