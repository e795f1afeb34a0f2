"""Steps started the moment their inputs exist, beside a strategy's own sequence of steps.

A run's steps depend on each other less than their order suggests. The unoptimized program's full
evaluation (the ``"baseline"`` phase) and the grounding texts (data summary, program description: the
``"grounding"`` phase) need no demo, so they start at t = 0 beside the bootstrap. The evaluation of the
prompt a user would write by hand (instructions as written, labeled training examples as demos; the
``"reference"`` phase) needs only the labeled set, which needs no call: when the run has no limit that
could refuse a step, it starts once the baseline's evaluation ends, beside the bootstrap
(:meth:`Pipeline.start_reference_early`); else when the bootstrap ends, beside the proposals and their
screen. The proposals' own calls may go ahead too (:meth:`Pipeline.warmup`). The search takes these
evaluations as they are (``SearchLoop.prefetched``: matched by the prompts they evaluated) instead of
running them again, and journals them under their usual ``"full_eval"`` keys.

Each step is journaled on its own (kinds ``"baseline_eval"``, ``"summaries"``, ``"reference_eval"``),
so a resumed run pays for none again. The program failing on every validation example
(:class:`~aprompt._errors.OptimizationError`, see :func:`~aprompt._optimize.search_records.check_baseline`)
surfaces as soon as the baseline's evaluation ends, cancelling the rest. Leaving the block cancels what
nothing awaited (a reference the search skipped once a limit stopped it).

Example::

    async with pipeline(ctx) as early:
        demo_sets = await bootstrap_candidates(ctx)
        early.start_reference(demo_sets)
        texts = await early.texts()
        ...
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Generic, TypeVar

import anyio
import anyio.abc
import attrs

from aprompt._optimize.bootstrap import DemoSet
from aprompt._optimize.candidates import Candidates, Choice
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.run_context import BASELINE_KIND, RunContext
from aprompt._optimize.run_stop import exception_leaves, limit_reached_in
from aprompt._optimize.search import SearchLoop
from aprompt._optimize.search_records import FullEval, full_eval_from_json, full_eval_to_json
from aprompt._optimize.step_memo import note_runs
from aprompt._optimize.strategies.base import StrategyPlan
from aprompt._optimize.strategies.demo_steps import labeled_reference, leading_demo_sets
from aprompt._optimize.strategies.grounding_step import grounding_calls, grounding_texts
from aprompt._optimize.strategies.warmup import Warmup, nothing_refuses
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._limit_reached import LimitReached
from aprompt.program.overrides import PromptOverride

T = TypeVar("T")
logger = logging.getLogger("aprompt")

#: The journal kind of the hand-written prompt's evaluation started when the bootstrap ends.
REFERENCE_KIND = "reference_eval"


@attrs.define(eq=False)
class Deferred(Generic[T]):
    """A value one task of the pipeline sets and others await. A task that fails cancels the whole
    pipeline, so an awaiting task never waits for a value that will not come."""

    _event: anyio.Event = attrs.field(factory=anyio.Event)
    _value: T | None = None
    _error: BaseException | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        """Make every wait raise ``error`` (a step refused by the run's limits)."""
        self._error = error
        self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set before the event


@attrs.define(eq=False)
class Pipeline:
    """The steps a run started ahead of its strategy's sequence; see the module docstring."""

    ctx: RunContext
    _group: anyio.abc.TaskGroup
    _baseline: Deferred[FullEval] = attrs.field(factory=Deferred)
    _texts: Deferred[dict[str, str | None]] = attrs.field(factory=Deferred)
    #: Each evaluation started ahead, by the prompts it evaluates.
    _evaluations: list[tuple[dict[str, PromptOverride], Deferred[FullEval]]] = attrs.field(factory=list)
    _grounding: bool = False

    async def texts(self) -> dict[str, str | None]:
        """The grounding texts (:func:`~aprompt._optimize.strategies.grounding_step.grounding_texts`),
        once written."""
        return await self._texts.wait()

    async def baseline(self) -> FullEval:
        """The unoptimized program's full evaluation (choice ``{}``), once scored."""
        return await self._baseline.wait()

    def start_reference(
        self,
        demo_sets: Mapping[str, tuple[DemoSet, ...]],
        plan: StrategyPlan | None = None,
        *,
        after_baseline: bool = False,
    ) -> None:
        """Start the evaluation of the prompt a user would write by hand
        (:func:`~aprompt._optimize.strategies.demo_steps.labeled_reference`) with these demo sets; nothing
        when no predictor has a labeled set, or when the run's limits cannot pay for it and for what
        goes before it (``plan``'s proposals and screen, the first mini-batch): the search then meets
        the refusal itself, as it would have without a pipeline. ``after_baseline``: its calls wait
        for the baseline's evaluation to end."""
        candidates = attrs.evolve(Candidates.original(self.ctx.predictors), demo_sets=demo_sets)
        choice = labeled_reference(candidates)
        if not choice or self.prefetched(candidates, choice) is not None:
            return  # nothing to evaluate, or started already (from the leading demo sets)
        key = json.dumps(sorted(choice.items()))
        stopped_by = self.ctx.stopped_by
        try:
            what = "the hand-written prompt's evaluation"
            ahead_runs = min(self.ctx.budget.minibatch_size, len(self.ctx.valset))
            ahead = (ahead_runs, 0) if plan is None else (ahead_runs + plan.screen_runs, plan.proposal_calls)
            self.ctx.admit_step(what, [(REFERENCE_KIND, key, len(self.ctx.valset))], ahead=ahead)
        except LimitReached as refusal:
            self.ctx.stopped_by = stopped_by
            logger.info("aprompt: the hand-written prompt is not evaluated ahead of the search: %s", refusal)
            return
        done: Deferred[FullEval] = Deferred()
        self._evaluations.append((self._prompts(candidates, choice), done))
        self._group.start_soon(self._reference, candidates, choice, key, done, after_baseline)

    def warmup(self) -> Warmup | None:
        """Send the proposals' first draws and their screens as soon as their inputs exist
        (:mod:`aprompt._optimize.strategies.warmup`); ``None`` when the run must not, or writes no
        grounding texts here. Tell it :meth:`~aprompt._optimize.strategies.warmup.Warmup.bootstrap_ended`."""
        warm = Warmup.for_run(self.ctx, self.texts) if self._grounding else None
        if warm is not None:
            self._group.start_soon(warm.run)
        return warm

    def start_reference_early(self, plan: StrategyPlan | None = None) -> None:
        """Start the evaluation of the prompt a user would write by hand now, before the bootstrap ends:
        its demos are the labeled set, which needs no LM call
        (:func:`~aprompt._optimize.strategies.demo_steps.leading_demo_sets`). Only when the run has no limit
        that could refuse a step (calls, tokens, cost): under such a limit the steps are admitted in
        their usual order, and this waits for :meth:`start_reference` after the bootstrap. Nothing
        either when no leading set is a labeled one; :meth:`start_reference` then starts it.

        Its calls wait for the baseline's evaluation to end: sent at once beside it, they would take the
        client's burst allowance (:mod:`aprompt.lm.limits`) from the bootstrap's first wave, which
        the proposals, and so the search, wait for."""
        if nothing_refuses(self.ctx):
            self.start_reference(leading_demo_sets(self.ctx), plan, after_baseline=True)

    def prefetched(self, candidates: Candidates, choice: Choice) -> Callable[[], Awaitable[FullEval]] | None:
        """``SearchLoop.prefetched``: the evaluation started ahead of the same prompts as ``choice``
        of ``candidates``, or ``None``."""
        prompts = self._prompts(candidates, choice)
        for evaluated, done in self._evaluations:
            if evaluated == prompts:
                return partial(self._handed_in, done)
        return None

    async def _handed_in(self, done: Deferred[FullEval]) -> FullEval:
        note_runs(0)  # the runs were counted by the step that made them
        return await done.wait()

    def _prompts(self, candidates: Candidates, choice: Choice) -> dict[str, PromptOverride]:
        """``candidates``' prompts under ``choice``, each predictor's own reply format named."""
        own = dict(self.ctx.predictors)
        return {
            name: attrs.evolve(p, reply_format=p.reply_format or own[name].reply_format)
            for name, p in candidates.prompts_for(choice).items()
        }

    def _evaluator(self, candidates: Candidates) -> SearchLoop:
        ctx = self.ctx
        return SearchLoop(
            program=ctx.program,
            candidates=candidates,
            valset=ctx.valset,
            metric=ctx.metric,
            emit=ctx.emit,
            n_trials=0,
            seed=ctx.seed,
            lm=ctx.lm,
            concurrency=ctx.concurrency,
            limiter=ctx.limiter,
            outage=OutageGuard.for_program(ctx.predictors, ctx.lm, ctx.outage),
        )

    def _start_baseline(self) -> None:
        candidates = Candidates.original(self.ctx.predictors)
        self._evaluations.append((self._prompts(candidates, {}), self._baseline))
        self._group.start_soon(self._run_baseline, candidates)

    async def _run_baseline(self, candidates: Candidates) -> None:
        ctx = self.ctx
        done = self._baseline
        ctx.admit_step("the baseline's evaluation", [(BASELINE_KIND, "all", len(ctx.valset))])
        evaluator = self._evaluator(candidates)
        async with ctx.phase("baseline"):
            result = await ctx.memo(
                BASELINE_KIND,
                "all",
                lambda: evaluator.evaluate_in_full({}, is_baseline=True),
                full_eval_to_json,
                full_eval_from_json,
            )
        ctx.baseline = result
        done.set(result)

    async def _run_grounding(self) -> None:
        parts = [("summaries", "all", grounding_calls(self.ctx))]
        try:
            self.ctx.admit_step("writing the grounding texts", parts, calls=True)
        except LimitReached as refusal:
            # Refused where the texts are needed (the proposals), so that the steps in flight end first.
            self._texts.fail(refusal)
            return
        try:
            async with self.ctx.phase("grounding"):
                texts = await grounding_texts(self.ctx)
        except BaseException as exc:  # a cancellation, or anything else, is raised on below
            # A request refused mid-step (raised alone or from the step's own task group): in this task it
            # would cancel the group, and with it the baseline's evaluation already paid for. Refused where
            # the texts are needed, as above.
            stop = limit_reached_in(exc)
            if stop is None:
                raise
            self._texts.fail(stop)
            return
        self._texts.set(texts)

    async def _reference(
        self, candidates: Candidates, choice: Choice, key: str, done: Deferred[FullEval], after_baseline: bool
    ) -> None:
        if after_baseline:
            await self._baseline.wait()
        evaluator = self._evaluator(candidates)
        async with self.ctx.phase("reference"):
            result = await self.ctx.memo(
                REFERENCE_KIND,
                key,
                lambda: evaluator.evaluate_in_full(choice),
                full_eval_to_json,
                full_eval_from_json,
            )
        done.set(result)


@asynccontextmanager
async def pipeline(ctx: RunContext, *, grounding: bool = True) -> AsyncIterator[Pipeline]:
    """Start the baseline's evaluation (and, with ``grounding``, the grounding texts) now, beside the
    block; see the module docstring."""
    refusal: BaseException | None = None
    async with _own_errors(), plain_errors_task_group() as group:
        early = Pipeline(ctx, group, grounding=grounding)
        early._start_baseline()
        if grounding:
            group.start_soon(early._run_grounding)
        try:
            yield early
        except BaseException as exc:
            if limit_reached_in(exc) is None:
                raise
            # A limit stopped the strategy: the steps in flight were admitted, so they end (and are
            # journaled) first; the stopped run returns the baseline at least, and calling it again with
            # the same limit finds everything it paid for.
            refusal = exc
        else:
            group.cancel_scope.cancel()  # what nothing awaited (a skipped reference) is not paid for
    if refusal is not None:
        raise refusal


@asynccontextmanager
async def _own_errors() -> AsyncIterator[None]:
    """Raise an error of the block or of one step as itself, not wrapped in a group: the block's own
    error (a user callback's) must reach the caller as it would without the pipeline."""
    try:
        yield
    except BaseExceptionGroup as grouped:
        leaves = exception_leaves(grouped)
        if len(leaves) == 1:
            raise leaves[0] from grouped
        raise


__all__ = ["REFERENCE_KIND", "Deferred", "Pipeline", "pipeline"]
