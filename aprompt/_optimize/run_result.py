"""A checked run of ``optimize()``, from its plan to its result: the plan told (:class:`RunPlanned`, with
its LM-call estimate), the strategy run, the best prompts written into the program returned, and the
result journaled and told (:class:`RunFinished`)."""

from __future__ import annotations

import logging
import math
import time
import warnings

import attrs

from aprompt._errors import InexactResumeWarning
from aprompt._optimize.budget import Budget, estimate_calls
from aprompt._optimize.confirmation import confirmation_calls
from aprompt._optimize.events import RunFinished, RunPlanned
from aprompt._optimize.result import OptimizeResult, P
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.run_outputs import final_examples, recording_outputs
from aprompt._optimize.strategies import Strategy
from aprompt._optimize.strategies.base import checked_plan
from aprompt.lm.usage import IN_FLIGHT_KIND, timing_requests
from aprompt.program.discovery import named_predictors

logger = logging.getLogger("aprompt")


async def run_to_result(ctx: RunContext, strategy: Strategy, target: P, started: float) -> OptimizeResult[P]:
    """Run ``strategy`` in ``ctx`` (its plan told first), write the best prompts into ``target`` and
    return the result (journaled, and told by :class:`RunFinished`). Called by ``optimize()`` itself:
    a warning it gives names the caller of ``optimize()``."""
    plan, predictors, train, val, seed = ctx.budget, ctx.predictors, ctx.trainset, ctx.valset, ctx.seed
    planned = plan_event(strategy, plan, len(predictors), len(train), len(val))
    logger.info(
        "aprompt %s: %d trials on %d validation examples, about %d LM calls before caching (and up to %d "
        "more to confirm an undecided pick on training examples)",
        strategy.name,
        planned.n_trials,
        planned.val_size,
        planned.expected_lm_calls,
        planned.detail["confirmation_at_most"],
    )
    await ctx.emit(planned)
    with recording_outputs() as outputs, timing_requests() as requests:
        candidates, outcome = await ctx.run_strategy(strategy)
        loop = ctx.search_loop
    spending = ctx.spending
    if spending.diverged is not None:
        warnings.warn(
            InexactResumeWarning(
                "aprompt: this run's result may differ from an uninterrupted run's with the same inputs: "
                f"it was resumed after {spending.diverged}, and its limits decide steps on what it has spent"
            ),
            stacklevel=3,  # the caller of optimize()
        )
    examples = final_examples(ctx.valset, candidates, outcome, outputs, ctx.journal)
    if ctx.journal is not None and len(requests):  # a call answered from the cache keeps the last chart
        ctx.journal.append(IN_FLIGHT_KIND, requests.record())

    prompts = candidates.prompts_for(outcome.best_choice)
    for name, predictor in named_predictors(target):
        if name in prompts:
            predictor.use_prompt(prompts[name])
    result = OptimizeResult(
        program=target,
        strategy=strategy.name,
        score=outcome.best_score,
        baseline_score=outcome.baseline_score,
        best_choice=outcome.best_choice,
        trials=outcome.trials,
        full_evals=outcome.full_evals,
        confirmations=outcome.confirmations,
        candidates=candidates,
        dropped=tuple(ctx.dropped),
        phases=tuple(ctx.phases),
        seconds=time.monotonic() - started,
        seed=seed,
        failures=dict(ctx.failures),
        stopped_by=ctx.stopped_by or (loop.cut_short_by if loop is not None else None),
        spent=spending.spent(),
        pick=outcome.pick,
        examples=examples,
    )
    if result.stopped_by is not None:
        logger.info(
            "aprompt: stopped by %s; spent %s", spending.meter.describe(result.stopped_by), result.spent
        )
    if ctx.journal is not None:
        pick = attrs.asdict(result.pick) if result.pick is not None else None
        # The stop is journaled too: a run made from Python has no result.json to tell ``aprompt show`` it.
        record = {"score": result.score, "best_choice": dict(result.best_choice), "pick": pick}
        ctx.journal.append("result", {**record, "stopped_by": result.stopped_by})
    await ctx.emit(
        RunFinished(result.score, result.baseline_score, result.seconds, result.usage, result.stopped_by)
    )
    return result


def plan_event(strategy: Strategy, plan: Budget, n_predictors: int, n_train: int, n_val: int) -> RunPlanned:
    """The run's plan, as ``strategy`` plans it, with its LM-call estimate."""
    planned = checked_plan(strategy, plan, n_predictors, n_train, n_val)
    # The hand-written prompt's full evaluation, which a search of trials over demo sets makes beside the
    # baseline when the budget allows labeled demos (demo_steps.labeled_reference).
    reference = int(planned.searches_demos and planned.n_trials > 0 and plan.max_labeled_demos > 0)
    estimate = estimate_calls(
        plan,
        n_predictors=n_predictors,
        calls_per_run=float(n_predictors),
        n_trials=planned.n_trials,
        val_size=n_val,
        bootstrap_runs=planned.bootstrap_runs,
        proposal_calls=planned.proposal_calls,
        screen_runs=planned.screen_runs,
        extra_full_evals=planned.extra_full_evals + reference,
    )
    return RunPlanned(
        strategy.name,
        planned.n_trials,
        n_val,
        estimate.total,
        {
            "bootstrap": estimate.bootstrap,
            "proposal": estimate.proposal,
            "screen": estimate.screen,
            "evaluation": estimate.evaluation,
            "per_program_run": math.ceil(n_predictors),
            # Not in the total: run only when the search ends undecided (aprompt._optimize.confirmation).
            "confirmation_at_most": confirmation_calls(n_predictors, n_train, n_val),
        },
    )
