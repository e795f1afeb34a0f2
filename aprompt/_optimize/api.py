"""``await aprompt.optimize(...)``: check its arguments, plan and fingerprint the run, open its storage, and
hand the run to :func:`~aprompt._optimize.run_result.run_to_result`, which returns the optimized program."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import attrs

from aprompt._errors import ConfigError
from aprompt._optimize.arguments import (
    check_arguments,
    check_lm,
    check_metric_on_labels,
    no_predictors_found,
    resolve_limits,
)
from aprompt._optimize.budget import Budget, resolve_budget
from aprompt._optimize.data_warnings import warn_missing_labels, warn_unsaved_demo_values
from aprompt._optimize.evaluate import Metric, RunMetric, check_inputs
from aprompt._optimize.events import EventCallback
from aprompt._optimize.examples import Example, apart_from, as_examples, check_disjoint, inputs_key
from aprompt._optimize.outage import DEFAULT_OUTAGE_TOLERANCE, outage_policy
from aprompt._optimize.propose import Grounding
from aprompt._optimize.result import OptimizeResult, P
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.run_result import run_to_result
from aprompt._optimize.strategies import Strategy, resolve_strategy
from aprompt._optimize.strategies.base import checked_plan
from aprompt.executors.base import Executor, check_executor, use_executor
from aprompt.lm.types import LM
from aprompt.program._copying import copy_program
from aprompt.program.context import current_lm
from aprompt.program.discovery import is_function, named_predictors
from aprompt.program.overrides import watch_predictors
from aprompt.program.state import program_state
from aprompt.run._limits import Limits
from aprompt.run._preflight import check_endpoints, check_limits, check_metric, first_step_runs
from aprompt.run._storage import run_fingerprint, run_storage
from aprompt.run.identity import note_program_run, plain_settings, program_settings

logger = logging.getLogger("aprompt")


def split_valset(
    trainset: Sequence[Example], valset: Sequence[Example] | None, val_size: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Given no valset, hold out a seeded part of the trainset (at most half, at most ``val_size``);
    a valset larger than ``val_size`` is subsampled (seeded)."""
    rng = random.Random(f"{seed}:split")
    if valset is None:
        if len(trainset) < 2:
            raise ConfigError("need at least 2 training examples when no valset is given")
        shuffled = list(trainset)
        rng.shuffle(shuffled)
        n_val = min(val_size, max(1, len(shuffled) // 2))
        held_out = shuffled[:n_val]
        # A trainset holding the same inputs twice: the copies of a held-out example leave the trainset,
        # or a demo made from one would be scored on its own answer.
        held = {inputs_key(example) for example in held_out}
        kept = [example for example in shuffled[n_val:] if inputs_key(example) not in held]
        if not kept:  # a run would bootstrap and summarize nothing, and search blind
            raise ConfigError(
                f"the trainset's {len(shuffled)} examples hold {len(held)} distinct input(s), all held out "
                "as the valset: no training example is left for demos; give more distinct examples or a "
                "valset"
            )
        if len(kept) < len(shuffled) - n_val:
            logger.info(
                "aprompt: %d training example(s) share their inputs with held-out validation examples "
                "and are left out of the trainset",
                len(shuffled) - n_val - len(kept),
            )
        return kept, held_out
    val = list(valset)
    if len(val) > val_size:
        val = rng.sample(val, val_size)
    return list(trainset), val


async def optimize(
    program: P,
    trainset: Sequence[Example | Mapping[str, Any]],
    metric: Metric,
    *,
    lm: LM | None = None,
    proposer_lm: LM | None = None,
    teacher_lm: LM | None = None,
    valset: Sequence[Example | Mapping[str, Any]] | None = None,
    strategy: str | Strategy = "mipro",
    budget: str | Budget | Mapping[str, Any] = "light",
    seed: int = 0,
    input_fields: Sequence[str] | None = None,
    grounding: Grounding | None = None,
    concurrency: int = 256,
    bootstrap_threshold: float = 1.0,
    in_place: bool = False,
    on_event: EventCallback | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    limits: Limits | None = None,
    max_lm_calls: int | None = None,
    max_tokens: int | None = None,
    max_cost: float | None = None,
    max_time: float | None = None,
    prices: Mapping[str, tuple[float, float]] | None = None,
    outage_tolerance: float = DEFAULT_OUTAGE_TOLERANCE,
    executor: Executor | None = None,
) -> OptimizeResult[P]:
    """Optimize the instructions and demos of every predictor in ``program``.

    Args:
        program: an object (or bound async method) whose attributes hold predictors, or a plain async
            function whose globals or closure hold them (``in_place=True`` is then required: a
            module's predictors cannot be copied); it is called with each example's inputs as
            keyword arguments.
        trainset: examples (or mappings, with ``input_fields`` naming the program inputs).
        metric: ``metric(example, prediction) -> bool | float in [0, 1]``, sync or async; or a score with
            text feedback, ``(score, feedback)`` or an object with ``.score`` and ``.feedback`` (shown to
            the proposer by ``strategy="mipro_reflective"``).
        lm: the LM for predictors that have none (else the :func:`aprompt.use_lm` default).
        proposer_lm: writes summaries and instruction proposals (default: ``lm``).
        teacher_lm: runs the program while bootstrapping demos (default: ``lm``); like ``lm``, it
            serves the predictors that have no ``lm`` of their own.
        valset: scored during search; default: a seeded part of the trainset.
        strategy: ``"mipro"`` or another key of :data:`aprompt._optimize.strategies.STRATEGIES`, or a
            :class:`~aprompt._optimize.strategies.Strategy` instance.
        budget: ``"light"``, ``"medium"``, ``"heavy"``, a :class:`Budget` or a mapping of overrides.
        seed: the same seed and a warm cache give the same result with no new LM calls.
        input_fields: which keys of mapping examples are program inputs (the rest are labels);
            needed only when examples are plain mappings.
        grounding: which pieces ground the instruction proposals, and the proposer temperature.
        concurrency: program runs in flight at once (LM calls are further limited by the LM client).
        bootstrap_threshold: the metric score a run must reach for its trace to become demos.
        in_place: write the best prompts into ``program`` itself instead of a copy (refused with a
            ``ConfigError`` while another run in this process optimizes one of its predictors, and a run
            refused while another ``in_place`` run does).
        on_event: called (sync or async) with every progress event, and awaited inline: a slow
            callback slows the run (its time counts against ``max_time``, and it is not cancelled at
            the deadline), and one that raises stops the run with that exception.
        run_dir: journal every durable fact there (and keep the LM cache there when the LM has none);
            calling again with the same ``run_dir`` resumes the run where it stopped.
        resume: with ``False``, an existing journal in ``run_dir`` is cleared and the run starts over.
        limits: hard limits on what the run spends (:class:`aprompt.Limits`: ``max_lm_calls``,
            ``max_tokens``, ``max_cost`` with ``prices``, ``max_time``). A step the rest cannot pay for
            (estimated from the program's measured calls per run) is not started, a request past the
            limit is refused and its step abandoned, and the best program so far is returned
            (``result.stopped_by`` names the limit, ``result.spent`` the amounts). Limits count for any
            LM object and are cumulative over the calls of one run: with a ``run_dir`` a resumed run
            continues the same budget, and calling a stopped run again with the same limit spends nothing.
            A run killed mid-step and resumed may end otherwise than an uninterrupted run under
            ``max_lm_calls``, ``max_tokens`` or ``max_cost``, and then warns
            (:class:`aprompt.InexactResumeWarning`), as does a run called again with a lower limit, or
            with a higher one (or none) where the lower limit stopped, refused, trimmed or kept back
            steps of an earlier call.
        max_lm_calls: deprecated (a :class:`DeprecationWarning`): ``limits=aprompt.Limits(max_lm_calls=...)``;
            giving an old limit argument with ``limits`` is a :class:`ConfigError`.
        max_tokens: deprecated: ``limits=aprompt.Limits(max_tokens=...)``.
        max_cost: deprecated: ``limits=aprompt.Limits(max_cost=..., prices=...)``.
        max_time: deprecated: ``limits=aprompt.Limits(max_time=...)``.
        prices: deprecated: ``limits=aprompt.Limits(prices=...)``.
        outage_tolerance: seconds to wait for an LM that went down (checked with back-off) before
            stopping with :class:`~aprompt.EndpointDownError`; a step is re-run once the LM answers, so
            an outage does not change the result (:mod:`aprompt._optimize.outage`).
        executor: where the program runs happen (:mod:`aprompt.executors`): in this process by default,
            or e.g. on a Ray cluster (:class:`~aprompt.executors.RayExecutor`); the LM calls, limits,
            cache, journal and result are the same.

    The returned program (unless ``in_place``) is a copy holding copies of the predictors and sharing
    everything else (locks, clients, data) with ``program``, whose prompts stay unchanged.

    Raises:
        ConfigError: bad input (the type or range of any argument, examples, program, budget, limits, or
            a metric that returns no valid score for a prediction made of an example's own labels),
            before any LM call. During the run: a metric value that is not a score (``None``, NaN, a
            string, 2.5), or a predictor called where the run's prompts cannot reach it (a worker task or
            thread started before the run; see "Program" in the docs' concepts); or ``max_lm_calls``
            cannot pay for the baseline and one mini-batch at the calls per run the program's first run
            showed.
        OptimizationError: the metric raised on every prediction of its first evaluation (before it
            ever returned a score), or the program or metric failed on every baseline example.
        RunLimitError: a limit stopped the run before the baseline was scored.
        LMConnectionError, AuthenticationError: an endpoint is unreachable or refuses the key; each is
            probed once up front (``GET /models``, no tokens spent).
        EndpointDownError: an LM stayed down longer than ``outage_tolerance`` (or refuses every request);
            with a ``run_dir``, calling again resumes from the step it stopped at.

    Example::

        result = await aprompt.optimize(
            program, trainset, metric, lm=lm, budget="light", limits=aprompt.Limits(max_lm_calls=2_000)
        )
        print(result.baseline_score, "->", result.score)
        result.save("optimized.json")
    """
    started = time.monotonic()
    run_limits = resolve_limits(
        limits,
        {
            "max_lm_calls": max_lm_calls,
            "max_tokens": max_tokens,
            "max_cost": max_cost,
            "max_time": max_time,
            "prices": prices,
        },
        function="optimize",
        stacklevel=2,
    )
    check_arguments(
        trainset=trainset,
        valset=valset,
        strategy=strategy,
        budget=budget,
        seed=seed,
        input_fields=input_fields,
        grounding=grounding,
        concurrency=concurrency,
        bootstrap_threshold=bootstrap_threshold,
        in_place=in_place,
        on_event=on_event,
        run_dir=run_dir,
        resume=resume,
        lms={"lm": lm, "proposer_lm": proposer_lm, "teacher_lm": teacher_lm},
    )
    check_executor(executor)
    # Checked whole and in range above; as plain numbers, a numpy seed or a threshold of 1 is the same
    # run (the same fingerprint, so a resume) as 1 or 1.0.
    seed, bootstrap_threshold = int(seed), float(bootstrap_threshold)
    chosen = resolve_strategy(strategy)
    plan = resolve_budget(budget)
    predictors = named_predictors(program)
    if not predictors:
        raise ConfigError(no_predictors_found(program))
    for name, predictor in predictors:
        # A model name given as a predictor's lm would fail every program run, after the run's first calls.
        if predictor.lm is not None:
            check_lm(f"{name}.lm", predictor.lm)
    if is_function(program) and not in_place:
        raise ConfigError(
            f"program {getattr(program, '__qualname__', program)} is a function: its predictors live in "
            "its module and cannot be copied; pass in_place=True to write the best prompts into them"
        )
    train = as_examples(trainset, input_fields, role="trainset")
    if not train:
        raise ConfigError("trainset is empty")
    val_given = as_examples(valset, input_fields, role="valset") if valset is not None else None
    if val_given is not None and not val_given:
        raise ConfigError("valset is empty; pass None to hold out part of the trainset")
    train, val = split_valset(train, val_given, plan.val_size, seed)
    check_disjoint(train, val)
    train = apart_from(train, val)
    # A plan it cannot run costs nothing.
    plans_trials = checked_plan(chosen, plan, len(predictors), len(train), len(val)).n_trials > 0
    check_inputs(program, [*train, *val], "trainset/valset")
    check_metric(metric)
    # A metric object's settings as the call begins, before the check below calls it: those the run itself
    # changes (a count of calls) are no settings, and a resume in this process reads them as they were.
    metric_settings = plain_settings(metric)
    metric_identity = program_settings(metric)
    await check_metric_on_labels(metric, [*val, *train])
    warn_unsaved_demo_values(predictors, train)
    warn_missing_labels(predictors, train, val)
    default_lm = lm if lm is not None else current_lm()
    if default_lm is None and any(p.lm is None for _, p in predictors):
        raise ConfigError("no LM: pass lm=, give every predictor an lm, or use aprompt.use_lm(lm)")
    proposer = proposer_lm or default_lm or predictors[0][1].lm
    assert proposer is not None
    outage = outage_policy(outage_tolerance)
    lms = [default_lm, proposer, teacher_lm, *(p.lm for _, p in predictors)]
    runs, what = first_step_runs(len(val), plan.minibatch_size, trials=plans_trials)
    check_limits(run_limits, lms, runs=runs, what=what)
    await check_endpoints(lms)
    # A copy of a P is a P (copy_program copies predictors and shares the rest).
    target = program if in_place else cast(P, copy_program(program))
    grounding = grounding or Grounding()
    # Resolved here, not later, so the run's flow is part of its fingerprint (resume must match it).
    capacity = getattr(default_lm, "planned_concurrency", None)  # from its configuration, not timing
    plan = attrs.evolve(
        plan,
        parallel_trials=plan.parallel_trials_for(
            capacity if isinstance(capacity, int) else None, len(predictors)
        ),
    )
    fingerprint = run_fingerprint(
        chosen.name,
        plan,
        seed,
        grounding,
        bootstrap_threshold,
        predictors,
        train,
        val,
        lm=default_lm,
        proposer_lm=proposer,
        teacher_lm=teacher_lm,
        metric=metric,
        metric_settings=metric_identity,
        program=program,
        journal_format=chosen.journal_format,
    )
    # The plain values the program holds as the run begins: those the run itself changes are no
    # settings, and a resume of the same object in this process must fingerprint them as they were.
    settings = plain_settings(program)
    try:
        # Every LM the run calls gets the run's cache when it has none, a predictor's own included: its
        # answers then are not paid for twice, and a resume or an outage's re-run gets them back.
        async with run_storage(run_dir, resume, fingerprint, lms) as journal:
            ctx = RunContext(
                program=program,
                predictors=predictors,
                trainset=train,
                valset=val,
                metric=RunMetric(metric),
                budget=plan,
                seed=seed,
                lm=default_lm,
                proposer_lm=proposer,
                teacher_lm=teacher_lm,
                grounding=grounding,
                concurrency=concurrency,
                on_event=on_event,
                bootstrap_threshold=bootstrap_threshold,
                plans_trials=plans_trials,
                journal=journal,
                limits=run_limits,
                outage=outage,
            )
            ctx.spending.check_limits()  # again, with the calls per run measured by earlier calls of this run
            if journal is not None and journal.latest("original_state") is None:
                journal.append("original_state", program_state(program))
            with watch_predictors(predictors, in_place=in_place), use_executor(executor):
                return await run_to_result(ctx, chosen, target, started)
    finally:
        note_program_run(program, settings)
        note_program_run(metric, metric_settings)


__all__ = ["optimize", "split_valset"]
