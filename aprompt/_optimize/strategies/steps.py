"""The steps strategies are built from: bootstrapping demo sets, grounding texts, proposing and screening
instructions, and the search loop (each journaled through ``ctx.memo``, so a resumed run pays for none
again). Steps that need no earlier one's result start beside them
(:mod:`aprompt._optimize.strategies.pipeline`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aprompt._optimize.candidates import Candidates
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search import SearchLoop
from aprompt._optimize.search_records import SearchOutcome
from aprompt._optimize.search_state import ProposalHook, no_hook
from aprompt._optimize.strategies.demo_steps import bootstrap_candidates as bootstrap_candidates
from aprompt._optimize.strategies.demo_steps import demo_sets_from_json as demo_sets_from_json
from aprompt._optimize.strategies.demo_steps import demo_sets_to_json as demo_sets_to_json
from aprompt._optimize.strategies.demo_steps import distinct_sets as distinct_sets
from aprompt._optimize.strategies.demo_steps import labeled_reference as labeled_reference
from aprompt._optimize.strategies.demo_steps import labeled_set_of as labeled_set_of
from aprompt._optimize.strategies.demo_steps import leading_demo_sets as leading_demo_sets
from aprompt._optimize.strategies.demo_steps import leading_sets_of as leading_sets_of
from aprompt._optimize.strategies.grounding_step import grounding_calls as grounding_calls
from aprompt._optimize.strategies.grounding_step import grounding_texts as grounding_texts
from aprompt._optimize.strategies.instruction_steps import drop as drop
from aprompt._optimize.strategies.instruction_steps import instruction_candidates as instruction_candidates
from aprompt._optimize.strategies.instruction_steps import proposals_from_json as proposals_from_json
from aprompt._optimize.strategies.instruction_steps import proposals_to_json as proposals_to_json
from aprompt._optimize.strategies.instruction_steps import screen_examples as screen_examples
from aprompt._optimize.strategies.instruction_steps import screen_instructions as screen_instructions
from aprompt._optimize.strategies.instruction_steps import screen_one as screen_one

if TYPE_CHECKING:
    from aprompt._optimize.strategies.pipeline import Pipeline


def _capacity(lm: object) -> int | None:
    capacity = getattr(lm, "capacity", None)
    return capacity if isinstance(capacity, int) else None


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
        should_stop=ctx.spending.limit_reached,
        outage=OutageGuard.for_program(ctx.predictors, ctx.lm, ctx.outage),
        failures=ctx.failures,
        admit_step=ctx.admit_step,
        # Under a limit, the trials keep one full evaluation's runs for the search's last evaluation, so
        # a budget smaller than the plan still ends in a program the evidence chose.
        admit_trial=None if nothing_refuses(ctx) else ctx.admit_trial,
        # A periodic evaluation the budget cannot pay for beside the trials in flight ends the trials, not
        # the run: the rest goes to the search's last evaluation.
        admit_evaluation_step=None if nothing_refuses(ctx) else ctx.admit_evaluation_step,
        runs_affordable=ctx.runs_affordable,
        binding_limit=ctx.binding_limit,
        limit_bound=ctx.spending.note_bound,
        hold_steps=ctx.spending.hold_steps,
        retire_steps=ctx.spending.retire_steps,
        confirmation_kept=0 if nothing_refuses(ctx) else ctx.confirmation_kept,
        time_limited=ctx.limits.max_time is not None,
        seconds_left=ctx.spending.meter.seconds_left,
        decided=ctx.spending.decided,
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
