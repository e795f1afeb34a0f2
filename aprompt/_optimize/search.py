"""The search loop (MIPRO stage 3): TPE-guided mini-batch trials with periodic full evaluations.

The baseline (all candidates at index 0) is fully evaluated first, then the ``references`` (the strategies
pass the prompt a user would write by hand: instructions as written, labeled training examples as demos),
so the pick weighs every program against them from the start. Then the TPE trials run, each on a
seeded mini-batch (after the TPE's covering trials, each trial's combination is a Thompson draw from
the pooled additive model instead: :func:`~aprompt._optimize.pooling.thompson_choice`), with periodic full
evaluations beside them (below); every ``full_eval_every`` trials the
combination with the best pooled mini-batch mean that has no full evaluation yet gets one.

**Continuous trials.** ``parallel_trials`` trials are in flight at a time, with no batch barrier: trial
*n* is asked from the TPE as soon as trial *n − parallel_trials* has been told, and trials are told strictly
in number order (one that finishes early waits for those before it). So trial *n*'s suggestion is a
function of trials *0 .. n − parallel_trials* (told) and of those between (pending: the TPE counts them as
bad observations, a constant liar), never of which finished first. The periodic evaluation at point *K*
(once trial *K − 1* is told) is decided from the evidence there — trials *0 .. K − 1* and the evaluations
before — and runs beside the trials that follow, on a copy of the search that sees only that evidence;
``after_evaluation`` follows it on the same copy. What it records (full evaluations, race rungs, the
candidates ``after_evaluation`` added) joins the search once trial *K* is told, before trial
*K + parallel_trials* is asked, which waits for it if needed: that is the first trial whose suggestion, or
whose stopping early (racing, below), can depend on it. Every decision thus depends on the seed and the
results (and the LM cache) only, whatever the timing, and a resumed run replays the same flow from its
journal. Each step (a trial, a race's rung, a full evaluation) is admitted by the run's limits before it
starts, counting what the admitted steps beside it are still expected to spend, and a journaled step for
free; a refusal is journaled, so a run stopped by a limit and resumed under the same limit replays what it
did and stops at the same step. Once a limit refuses a trial, or a step of the evaluation beside (from its
join on), no trial starts any more, those running are completed and
recorded, and the search returns the best found.

The returned choice is decided by :mod:`aprompt._optimize.final_pick` from all the evidence: every
combination's per-example scores from trials and full evaluations, compared pairwise on shared examples. A
fully evaluated combination replaces the baseline (or an earlier pick) only when the lower confidence bound
of its mean paired difference on their shared examples is above 0 (one-sided 95 %, Bonferroni-adjusted for
the fully evaluated combinations weighed; below 10 validation examples a higher mean); they are weighed from
the highest mean down, and ties never go by evaluation order (the pooled estimate of
:mod:`aprompt._optimize.pooling` breaks them). At the end, the plan's last full evaluation(s) go to the
pick's most promising *challenger* — a combination that scored above the pick on shared examples but has no
full evaluation — or, when there is none, to the best untested combination by the pooled estimate; the pick
is then decided again. ``SearchOutcome.pick`` says what was returned and why (also logged at INFO).

When the baseline and every trial scored 0 on every example at the first full evaluation after the
baseline, nothing the search can try is expected to score either: the search stops there (the trials
running are cancelled; no more trials or full evaluations) and returns the baseline with
``pick.stopped == "nothing_scores"``.

A full evaluation a strategy made ahead of the search (the baseline's beside the bootstrap, the reference's
beside the proposals: :mod:`aprompt._optimize.strategies.pipeline`) is handed in through ``prefetched``
instead of run again, and journaled like the others.

A trial or full evaluation is complete before it is journaled and told to the TPE: examples an LM outage
left unscored are run again once the LM answers (:mod:`aprompt._optimize.outage`); only those that fail
while the LM works stay unscored (``lm_failures``) and are reported in ``failures``.

With ``racing`` (``Budget.racing``, the default), the periodic and final full evaluations are spent on races
among the most promising untested combinations instead, and a trial clearly losing to the pick after the
first part of its mini-batch stops there (:mod:`aprompt._optimize.racing`); the rungs of the races are
evidence for the pick like trials, and still only a fully evaluated combination can be returned. A trial's
second part, and the next step of a rung's sure leader, do not wait for the slowest answer before them when
the answers in already settle that they run (same module); the records and decisions are those of waiting.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.abc
import attrs

from aprompt._errors import JournalError
from aprompt._optimize.candidates import Candidates, Choice, choice_key
from aprompt._optimize.concurrent_steps import at_once_in_order
from aprompt._optimize.evaluate import Evaluation, Metric, OnResult, evaluate_reporting
from aprompt._optimize.events import Event, FullEvaluation, NewBest, TrialScored
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import (
    MIN_SHARED,
    NOTHING_SCORES,
    FinalPick,
    collect_evidence,
    key_of,
    nothing_scores,
    pick,
)
from aprompt._optimize.head_start import HeadStart
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.pooling import RACE_OPTIMISM, ranked_combinations, thompson_choice
from aprompt._optimize.racing import (
    MAX_ENTRANTS,
    final_races,
    first_stage_size,
    run_race,
    staged_evaluation,
)
from aprompt._optimize.search_records import (
    FullEval,
    Memo,
    RungEval,
    SearchOutcome,
    Trial,
    check_baseline,
    full_eval_from_json,
    full_eval_to_json,
    lm_failures_of,
    minibatch,
    no_memo,
    trial_from_json,
    trial_to_json,
)
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._metering import LimitReached
from aprompt.lm.types import LM
from aprompt.tpe import Categorical, TPESampler

Emit = Callable[[Event], Awaitable[None]]
#: Seeds the draws of the model's trials apart from the TPE's own (``[seed, number]``).
MODEL_TRIAL_STREAM = 1
logger = logging.getLogger("aprompt")


#: See ``SearchLoop.prefetched``.
Prefetched = Callable[[Candidates, Choice], Callable[[], Awaitable["FullEval"]] | None]


class ProposalHook(Protocol):
    """Lets a strategy replace instruction indices by its own parameters (MIPRO++)."""

    def extra_parameters(self, candidates: Candidates) -> dict[str, int]: ...

    async def resolve(self, loop: SearchLoop, choice: dict[str, int]) -> dict[str, int]: ...


@attrs.define
class _Pool:
    """Per-combination evidence: every example score seen in mini-batches."""

    scores: dict[tuple[tuple[str, int], ...], dict[str, float]] = attrs.Factory(dict)
    choices: dict[tuple[tuple[str, int], ...], dict[str, int]] = attrs.Factory(dict)

    def add(self, choice: Choice, scores: Mapping[str, float]) -> None:
        key = choice_key(choice)
        self.choices.setdefault(key, dict(choice))
        self.scores.setdefault(key, {}).update(scores)

    def copy(self) -> _Pool:
        return _Pool(
            {key: dict(scores) for key, scores in self.scores.items()},
            {key: dict(choice) for key, choice in self.choices.items()},
        )

    def ranked_untested(self, tested: set[tuple[tuple[str, int], ...]], limit: int) -> list[dict[str, int]]:
        ranked = [
            (sum(s.values()) / len(s), len(s), key)
            for key, s in self.scores.items()
            if s and key not in tested
        ]
        # Best mean; more evidence breaks ties; the key keeps the order deterministic.
        ranked.sort(key=lambda item: (item[0], item[1], [-v for _, v in item[2]]), reverse=True)
        return [self.choices[key] for _, _, key in ranked[:limit]]


@attrs.define
class _Evaluation:
    """A periodic evaluation running beside the trials, on ``fork``: what it records joins the search
    once trial ``joins_after`` is told. The counts and candidates are the search's when it was decided."""

    fork: SearchLoop
    joins_after: int
    #: Program runs it may spend (its race's allowance, or a full evaluation's).
    allowance: int
    full_evals: int
    rungs: int
    spent: int
    candidates: Candidates
    finished: anyio.Event = attrs.Factory(anyio.Event)
    merged: bool = False
    #: The run's limits refused one of its steps (the search stops at its join).
    refusal: LimitReached | None = None


@attrs.define
class _Window:
    """The trials in flight: asked up to ``asked``, told (in number order) up to ``told``."""

    first: int
    asked: int = attrs.field(init=False)
    told: int = attrs.field(init=False)
    #: Per trial asked and not told: its cancel scope, and the event set when it is done.
    running: dict[int, anyio.CancelScope] = attrs.Factory(dict)
    finished: dict[int, anyio.Event] = attrs.Factory(dict)
    done: dict[int, Trial] = attrs.Factory(dict)
    evaluation: _Evaluation | None = None
    #: No trial starts any more (the search stops, or a limit refused one: ``refusal``).
    stopping: bool = False
    refusal: LimitReached | None = None

    def __attrs_post_init__(self) -> None:
        self.asked = self.told = self.first

    def cancel_running(self) -> None:
        for scope in self.running.values():
            scope.cancel()


def _with_reserve(
    admit: Callable[[str, Sequence[tuple[str, str, int]]], None],
    reserve: int,
    what: str,
    parts: Sequence[tuple[str, str, int]],
) -> None:
    """``admit`` with ``reserve`` program runs added to the first part (free with it when journaled)."""
    if parts:
        (kind, key, size), *rest = parts
        parts = [(kind, key, size + reserve), *rest]
    admit(what, parts)


def _limit_refusal(exc: BaseException) -> LimitReached | None:
    """``exc`` when it is a :class:`LimitReached`, or a group of nothing else, else ``None``."""
    if isinstance(exc, LimitReached):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(LimitReached)
        if matched is not None and rest is None:
            first = matched.exceptions[0]
            return first if isinstance(first, LimitReached) else _limit_refusal(first)
    return None


async def no_hook(loop: SearchLoop) -> None:
    """The default ``SearchLoop.after_evaluation``: nothing."""


@attrs.define
class SearchLoop:
    """Runs one search; see the module docstring. ``emit`` receives progress events."""

    program: object
    candidates: Candidates
    valset: Sequence[Example]
    metric: Metric
    emit: Emit
    n_trials: int
    minibatch_size: int = 35
    full_eval_every: int = 5
    parallel_trials: int = 2
    seed: int = 0
    lm: LM | None = None
    concurrency: int = 64
    #: Races and trials stopped early (:mod:`aprompt._optimize.racing`) instead of the plain schedule.
    racing: bool = True

    trials: list[Trial] = attrs.field(factory=list, init=False)
    full_evals: list[FullEval] = attrs.field(factory=list, init=False)
    rungs: list[RungEval] = attrs.field(factory=list, init=False)
    #: Races run so far (numbers the next one's journal keys); combinations a race dropped.
    races_started: int = attrs.field(default=0, init=False)
    raced_out: set[tuple[tuple[str, int], ...]] = attrs.field(factory=set, init=False)
    #: Program runs of the trials, rungs and full evaluations so far, and the periodic points passed.
    _spent: int = attrs.field(default=0, init=False)
    _points: int = attrs.field(default=0, init=False)
    _pool: _Pool = attrs.field(factory=_Pool, init=False)
    _tested: set[tuple[tuple[str, int], ...]] = attrs.field(factory=set, init=False)
    _pick: FinalPick | None = attrs.field(default=None, init=False)
    #: Why the search stopped on its own before its planned end (``"nothing_scores"``), or ``None``.
    stopped: str | None = attrs.field(default=None, init=False)
    _limiter: anyio.CapacityLimiter = attrs.field(init=False)
    _sampler: TPESampler | None = attrs.field(default=None, init=False)
    _reference_choices: list[dict[str, int]] = attrs.field(factory=list, init=False)
    #: Combinations fully evaluated right after the baseline (see ``_reference_evaluations``).
    references: Sequence[Mapping[str, int]] = attrs.field(default=(), kw_only=True)
    #: Lets a strategy replace the instruction parameters by its own (MIPRO++); fixed for the run.
    proposal_hook: ProposalHook | None = attrs.field(default=None, kw_only=True)
    memo: Memo = attrs.field(default=no_memo, kw_only=True)
    should_stop: Callable[[], str | None] = attrs.field(default=lambda: None, kw_only=True)
    #: Raises (``LimitReached``) when the run's budget cannot pay for a step: ``(what, [(journal kind,
    #: key, program runs), ...])``; see ``RunContext.admit_step``.
    admit_step: Callable[[str, Sequence[tuple[str, str, int]]], None] = attrs.field(
        default=lambda what, parts: None, kw_only=True
    )
    pooled: bool = attrs.field(default=True, kw_only=True)
    # Outage handling: steps are completed across outages; own LM failures are reported in `failures`.
    outage: OutageGuard = attrs.field(kw_only=True)
    failures: dict[str, str] = attrs.field(factory=dict, kw_only=True)
    #: Awaited right after each periodic evaluation, on the copy of the search it ran on (see "Continuous
    #: trials" in the module docstring): candidates it adds (reflective proposals) join the search with it.
    after_evaluation: Callable[[SearchLoop], Awaitable[None]] = attrs.field(default=no_hook, kw_only=True)
    #: Full evaluations started before the search (the baseline's, the references'; see
    #: :mod:`aprompt._optimize.strategies.pipeline`): given the candidates and a choice, how to await
    #: the evaluation of the same prompts, or ``None``. Handed in, not evaluated again.
    prefetched: Prefetched | None = attrs.field(default=None, kw_only=True)
    #: Program runs in flight at once: a limit of its own, or one the run's other steps share.
    limiter: anyio.CapacityLimiter | None = attrs.field(default=None, kw_only=True)
    #: A race's next step may start running ahead, once the answers in settle that it runs those examples
    #: (:mod:`aprompt._optimize.racing`): only when nothing can refuse or stop a step.
    go_ahead: bool = attrs.field(default=False, kw_only=True)
    #: Runs started ahead of their step, per choice; the step's first evaluation of the choice takes them.
    _ahead: dict[tuple[tuple[str, int], ...], HeadStart] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._limiter = self.limiter or anyio.CapacityLimiter(max(1, self.concurrency))

    async def run(self) -> SearchOutcome:
        await self.full_evaluation(self.candidates.baseline(), is_baseline=True)
        await self._reference_evaluations()
        space = self._space()
        if space:
            self._sampler = TPESampler(space, seed=self.seed, n_trials_hint=self.n_trials)
            await self._trials()
        return await self.run_outcome(final_full_eval=True)

    async def _reference_evaluations(self) -> None:
        """Fully evaluate the ``references`` (the prompt a user would write by hand: the instruction with
        labeled training examples as demos) right after the baseline, so the final pick weighs every
        program against them from the start and returns one of the others only on paired evidence."""
        space = self._space()
        for reference in self.references:
            choice = {key: value for key, value in reference.items() if key in space}
            if not choice or any(v >= space[k].n_choices for k, v in choice.items()):
                continue
            choice = {**self.candidates.baseline(), **choice}
            if choice_key(choice) in self._tested or self.should_stop() is not None:
                continue
            self._reference_choices.append(choice)
            await self.full_evaluation(choice)

    def _space(self) -> dict[str, Categorical]:
        space: dict[str, Categorical] = self.candidates.parameters()
        if self.proposal_hook is not None:
            space = {k: v for k, v in space.items() if not k.endswith(".instruction")}
            extra = self.proposal_hook.extra_parameters(self.candidates)
            space.update({k: Categorical(n) for k, n in extra.items()})
        return space

    def add_instruction(self, name: str, instruction: str) -> int:
        """Add a candidate instruction for predictor ``name`` to the running search; returns its index.

        The TPE (when it searches instructions) is rebuilt over the grown space from its own history,
        so earlier trials keep their weight and the suggestions stay a function of the seed and the
        trials; a trial recorded before the predictor had a searched instruction chose index 0.
        Called from ``after_evaluation``, it adds to the evaluation's copy of the search; the instruction
        joins the search with the evaluation, at the same index unless a proposal hook added one to the
        same predictor meanwhile (no strategy uses both).
        """
        instructions = {k: tuple(v) for k, v in self.candidates.instructions.items()}
        instructions[name] = (*instructions[name], instruction)
        self.candidates = attrs.evolve(self.candidates, instructions=instructions)
        if self._sampler is not None:
            space = self._space()
            if space != self._sampler.space:
                history = [
                    attrs.evolve(record, params={key: record.params.get(key, 0) for key in space})
                    for record in self._sampler.trials
                ]
                self._sampler = TPESampler.from_history(
                    space, history, seed=self.seed, n_trials_hint=self.n_trials
                )
        return len(instructions[name]) - 1

    async def run_outcome(self, *, final_full_eval: bool = False) -> SearchOutcome:
        """The outcome so far, decided by :func:`~aprompt._optimize.final_pick.pick`; with
        ``final_full_eval``, first spend the plan's remaining full evaluations (at least one) on the
        pick's challengers (see the module docstring)."""
        assert self.full_evals, "the baseline is evaluated first"
        if self.stopped == NOTHING_SCORES and not self._nothing_scored():
            self.stopped = None  # a strategy ran more trials after the stop (module_opro), and one scored
        if final_full_eval:
            await self._final_evaluations()
        chosen = self.decide()
        if self.stopped == NOTHING_SCORES:
            chosen = attrs.evolve(
                chosen,
                stopped=NOTHING_SCORES,
                reason=f"kept the unoptimized program: it and all {len(self.trials)} trials scored 0 on "
                "every example, so the search stopped early (nothing_scores)",
            )
        logger.info("aprompt: final pick: %s", chosen.reason)
        return SearchOutcome(
            best_choice=dict(chosen.choice),
            best_score=self._full_score(chosen.choice),
            baseline_score=self.full_evals[0].score,
            trials=tuple(self.trials),
            full_evals=tuple(self.full_evals),
            pick=chosen,
            rungs=tuple(self.rungs),
        )

    async def _final_evaluations(self) -> None:
        planned = 1 + math.ceil(self.n_trials / self.full_eval_every)  # as the plan counts them
        if self.racing:
            n = len(self.valset)
            await final_races(self, planned * n + self.n_trials * min(self.minibatch_size, n) - self._spent)
            return
        for _ in range(max(1, planned - len(self.full_evals))):
            if self.stopped is not None or self.should_stop() is not None or self.stops_as_nothing_scores():
                return
            choice = self._next_for_pick()
            if choice is None:
                return
            await self.full_evaluation(choice)

    def _next_for_pick(self) -> dict[str, int] | None:
        """While the baseline is kept, its most promising challenger without a full evaluation (the
        evaluation that can settle the undecided); else the best untested by the pooled estimate."""
        current = self.decide()
        if current.kept_baseline:
            for challenger in current.challengers:
                if key_of(challenger) not in self._tested:
                    return dict(challenger)
        return self.next_full_evaluation()

    def decide(self) -> FinalPick:
        """The pick from all evidence so far (a pure function of the trials, rungs and full evaluations)."""
        evaluations = [(t.choice, t.scores, t.score) for t in self.trials]
        evaluations += [(r.choice, r.scores, r.score) for r in self.rungs]
        evaluations += [(f.choice, f.scores, f.score) for f in self.full_evals]
        evidence = collect_evidence(evaluations, self._tested)
        return pick(
            evidence,
            self.full_evals[0].choice,
            min_shared=min(MIN_SHARED, len(self.valset)),
            references=self._reference_choices,
        )

    def scores_of(self, choice: Mapping[str, int]) -> dict[str, float]:
        """Every example score of ``choice`` so far (trials, rungs, full evaluations), by example id."""
        key = key_of(choice)
        merged: dict[str, float] = {}
        records: list[Trial | RungEval | FullEval] = [*self.trials, *self.rungs, *self.full_evals]
        for record in records:
            if key_of(record.choice) == key:
                merged.update(record.scores)
        return merged

    def _full_score(self, choice: Mapping[str, int]) -> float:
        key = key_of(choice)
        return next(f.score for f in reversed(self.full_evals) if key_of(f.choice) == key)

    def stops_as_nothing_scores(self) -> bool:
        """At the first full evaluation after the baseline's: stop when nothing has scored above 0."""
        if len(self.full_evals) != 1 + len(self._reference_choices) or not self._nothing_scored():
            return False
        self.stopped = NOTHING_SCORES
        logger.info(
            "aprompt: the unoptimized program and all %d trials scored 0 on every example; "
            "stopping the search (nothing_scores)",
            len(self.trials),
        )
        return True

    def _nothing_scored(self) -> bool:
        evaluated = [t.scores for t in self.trials]
        evaluated += [f.scores for f in self.full_evals[1 : 1 + len(self._reference_choices)]]
        return nothing_scores(self.full_evals[0].scores, evaluated)

    async def full_evaluate_best_untested(self) -> FullEval | None:
        if self.stopped is not None or self.should_stop() is not None or self.stops_as_nothing_scores():
            return None
        choice = self.next_full_evaluation()
        return await self.full_evaluation(choice) if choice is not None else None

    def next_full_evaluation(self) -> dict[str, int] | None:
        """The combination with the best pooled estimate (see :mod:`aprompt._optimize.pooling`) that has
        no full evaluation yet."""
        ranked = self.ranked_untested(1)
        return ranked[0] if ranked else None

    def ranked_untested(self, limit: int) -> list[dict[str, int]]:
        """Up to ``limit`` combinations without a full evaluation (nor dropped by a race), best pooled
        estimate first, then by an optimistic bound (``RACE_OPTIMISM``: a choice with few trials gets a
        race); trials and race rungs are the evidence."""
        excluded = self._tested | self.raced_out
        if not self.pooled:
            return self._pool.ranked_untested(excluded, limit)
        scored: list[Trial | RungEval] = [*self.trials, *self.rungs]
        observations = [(r.choice, r.score, len(r.scores)) for r in scored if r.score is not None]
        own = {key: (sum(s.values()) / len(s), len(s)) for key, s in self._pool.scores.items() if s}
        space = {name: dist.n_choices for name, dist in self.candidates.parameters().items()}
        return ranked_combinations(observations, own, space, excluded, limit, optimism=RACE_OPTIMISM)

    async def single_trial(self, number: int, choice: dict[str, int]) -> Trial:
        """Run and record one trial outside the TPE loop (used by OPRO-style strategies)."""
        trial = await self._trial(number, choice, self._incumbent())
        await self._record(trial)
        return trial

    def _incumbent(self) -> dict[str, float] | None:
        """The current pick's full-evaluation scores a trial is compared with to stop early (racing)."""
        if not self.racing or not self.full_evals:
            return None
        return self.scores_of(self.decide().choice)

    async def _record(self, trial: Trial) -> None:
        self.trials.append(trial)
        self._spent += len(trial.example_ids)
        self._pool.add(trial.choice, trial.scores)
        self.failures.update({f"trial:{trial.number}:{eid}": e for eid, e in trial.lm_failures.items()})
        await self.emit(
            TrialScored(trial.number, trial.choice, trial.score, len(trial.example_ids), trial.n_failed)
        )

    async def _trials(self) -> None:
        """The TPE trials, continuously, with the periodic evaluations beside them (see "Continuous
        trials" in the module docstring)."""
        assert self._sampler is not None
        window = _Window(first=len(self.trials))
        try:
            async with plain_errors_task_group() as group:
                while window.asked < min(window.first + max(1, self.parallel_trials), self.n_trials):
                    if not await self._start_trial(group, window):
                        break
                while window.told < window.asked:
                    await self._tell_next(window)
                    if window.evaluation is not None and window.evaluation.joins_after < window.told:
                        await self._join(window)
                    if window.told % self.full_eval_every == 0 and window.told < self.n_trials:
                        if not window.stopping:
                            window.evaluation = self._periodic_evaluation(group, window.told)
                        if self.stopped is not None:
                            window.cancel_running()  # nothing scores: the search stops here
                            break
                    if window.asked < self.n_trials and not window.stopping:
                        await self._start_trial(group, window)
                if window.evaluation is not None:
                    await self._join(window)
        except BaseException:
            # A run stopped by a limit returns the best found: what the evaluation finished counts.
            if window.evaluation is not None:
                self._merge(window.evaluation)
            raise
        if window.refusal is not None:
            raise window.refusal

    async def _start_trial(self, group: anyio.abc.TaskGroup, window: _Window) -> bool:
        """Ask the TPE for the next trial and start it, unless the search stops or the run's limits
        refuse it (then no trial starts any more, and those running are completed)."""
        number = window.asked
        if self.stopped is not None:
            window.stopping = True
            return False
        # The run's admission counts what the admitted steps beside it (the window's other trials, an
        # evaluation not yet joined) are still expected to spend; a resumed run under the same limit
        # refuses the same trial (the refusal is journaled, a journaled trial is free).
        try:
            size = min(self.minibatch_size, len(self.valset))
            self.admit_step(f"trial {number}", [("trial", str(number), size)])
        except LimitReached as refusal:
            window.stopping, window.refusal = True, refusal
            return False
        assert self._sampler is not None
        suggestion = self._sampler.ask(self._model_trial(number))
        assert suggestion.number == number, (suggestion.number, number)
        choice = await self._resolve(suggestion.params)
        window.asked += 1
        scope = window.running[number] = anyio.CancelScope()
        finished = window.finished[number] = anyio.Event()
        group.start_soon(self._run_in_window, window, scope, finished, number, choice, self._incumbent())
        return True

    def _model_trial(self, number: int) -> dict[str, int] | None:
        """After the TPE's covering trials, trial ``number``'s combination drawn from the pooled model
        (:func:`~aprompt._optimize.pooling.thompson_choice`, seeded by the seed and the number) instead of
        the TPE's suggestion; ``None`` leaves it to the TPE. The evidence is what the suggestion may see
        (see "Continuous trials"), so a resumed run draws the same."""
        assert self._sampler is not None
        cover = self._sampler.n_cover
        space = self._sampler.space
        if not self.pooled or self.proposal_hook is not None or cover is None or number < cover:
            return None
        if not all(isinstance(d, Categorical) for d in space.values()):
            return None
        scored: list[Trial | RungEval] = [*self.trials, *self.rungs]
        observations = [(r.choice, r.score, len(r.scores)) for r in scored if r.score is not None]
        held = [{k: int(v) for k, v in r.params.items()} for r in self._sampler.trials]
        avoid = {key_of(c) for c in held} | self._tested | self.raced_out
        sizes = {name: d.n_choices for name, d in space.items() if isinstance(d, Categorical)}
        return thompson_choice(observations, sizes, (self.seed, number, MODEL_TRIAL_STREAM), avoid)

    async def _run_in_window(
        self,
        window: _Window,
        scope: anyio.CancelScope,
        finished: anyio.Event,
        number: int,
        choice: dict[str, int],
        incumbent: Mapping[str, float] | None,
    ) -> None:
        with scope:
            window.done[number] = await self._trial(number, choice, incumbent)
            finished.set()

    async def _tell_next(self, window: _Window) -> None:
        """Wait for the next trial in number order, then tell the TPE and record it."""
        number = window.told
        await window.finished.pop(number).wait()
        trial = window.done.pop(number)
        del window.running[number]
        assert self._sampler is not None
        # Unscored trials are told as failures: an LM outage says nothing about the prompt.
        if trial.score is None:
            self._sampler.tell_failed(trial.number)
        else:
            self._sampler.tell(trial.number, trial.score)
        window.told += 1
        await self._record(trial)

    def _periodic_evaluation(self, group: anyio.abc.TaskGroup, point: int) -> _Evaluation | None:
        """Decide, from the evidence after ``point`` trials, the periodic evaluation there — a race
        within what the plan gave the evaluations so far, or (without racing) a full evaluation of the
        best untested combination — and start it beside the trials, followed by ``after_evaluation``;
        ``None`` when the search stops here."""
        if self.racing:
            self._points += 1
        if self.stopped is not None or self.stops_as_nothing_scores():
            return None
        step: Callable[[SearchLoop], Awaitable[object]] | None = None
        if not self.racing:
            choice = self.next_full_evaluation()
            if choice is not None:
                step = partial(SearchLoop.full_evaluation, choice=choice)
            allowance = len(self.valset)
        else:
            n = len(self.valset)
            plan = (1 + self._points) * n + len(self.trials) * min(self.minibatch_size, n)
            entrants = self.ranked_untested(MAX_ENTRANTS)
            allowance = max(0, plan - self._spent)
            if entrants:
                step = partial(run_race, entrants=entrants, allowance=allowance)
        evaluation = _Evaluation(
            fork=self._fork(),
            joins_after=point,
            allowance=allowance if step is not None else 0,
            full_evals=len(self.full_evals),
            rungs=len(self.rungs),
            spent=self._spent,
            candidates=self.candidates,
        )
        group.start_soon(self._evaluate_beside, evaluation, step)
        return evaluation

    async def _evaluate_beside(
        self, evaluation: _Evaluation, step: Callable[[SearchLoop], Awaitable[object]] | None
    ) -> None:
        try:
            if step is not None:
                await step(evaluation.fork)
            await self.after_evaluation(evaluation.fork)
        except BaseException as exc:
            refusal = _limit_refusal(exc)
            if refusal is None:
                raise
            # The search stops at the evaluation's join, a fixed point, not now.
            evaluation.refusal = refusal
        evaluation.finished.set()

    def _fork(self) -> SearchLoop:
        """A copy of the search for an evaluation beside the trials: it sees the evidence as it is now,
        and its own records only, whatever the trials record meanwhile; it never touches the TPE."""
        fork = copy.copy(self)
        fork.trials = list(self.trials)
        fork.full_evals = list(self.full_evals)
        fork.rungs = list(self.rungs)
        fork.raced_out = set(self.raced_out)
        fork._tested = set(self._tested)
        fork._pool = self._pool.copy()
        fork._reference_choices = list(self._reference_choices)
        fork._sampler = None
        fork._ahead = {}
        # Its steps are admitted one by one with the trials that may run beside them (a journaled step is
        # free), so a resumed run replays them even when the meter has reached a limit.
        fork.should_stop = lambda: None
        fork.admit_step = partial(_with_reserve, self.admit_step, self._window_runs(self.parallel_trials))
        return fork

    def _window_runs(self, trials: int) -> int:
        """Program runs of ``trials`` trials of the window (at least one)."""
        return max(1, trials) * min(self.minibatch_size, len(self.valset))

    async def _join(self, window: _Window) -> None:
        evaluation = window.evaluation
        assert evaluation is not None
        await evaluation.finished.wait()
        self._merge(evaluation)
        window.evaluation = None
        if evaluation.refusal is not None:
            window.stopping = True
            window.refusal = window.refusal or evaluation.refusal

    def _merge(self, evaluation: _Evaluation) -> None:
        """Add what the evaluation recorded (all of it, or what it finished when the run stopped) to
        the search, and the candidates ``after_evaluation`` added, in the order it added them."""
        if evaluation.merged:
            return
        evaluation.merged = True
        fork = evaluation.fork
        self.full_evals.extend(fork.full_evals[evaluation.full_evals :])
        for rung in fork.rungs[evaluation.rungs :]:
            self.rungs.append(rung)
            self._pool.add(rung.choice, rung.scores)
        self._spent += fork._spent - evaluation.spent
        self._tested |= fork._tested
        self.raced_out |= fork.raced_out
        self.races_started = fork.races_started
        self._pick = fork._pick
        self.stopped = self.stopped or fork.stopped
        for name, texts in fork.candidates.instructions.items():
            for text in texts[len(evaluation.candidates.instructions[name]) :]:
                self.add_instruction(name, text)

    def record_rung(self, rung: RungEval) -> None:
        """Add a race rung's scores to the evidence."""
        self.rungs.append(rung)
        self._spent += len(rung.example_ids)
        self._pool.add(rung.choice, rung.scores)
        self.failures.update(
            {f"race:{rung.race}:{rung.rung}:{eid}": e for eid, e in rung.lm_failures.items()}
        )

    async def _resolve(self, params: Mapping[str, Any]) -> dict[str, int]:
        choice = {key: int(value) for key, value in params.items()}
        if self.proposal_hook is not None:
            choice = await self.proposal_hook.resolve(self, choice)
        return choice

    async def _trial(
        self, number: int, choice: dict[str, int], incumbent: Mapping[str, float] | None
    ) -> Trial:
        trial = await self.memo(
            "trial",
            str(number),
            lambda: self._run_trial(number, choice, incumbent),
            trial_to_json,
            trial_from_json,
        )
        if dict(trial.choice) != choice:
            raise JournalError(
                f"the journal's trial {number} chose {dict(trial.choice)}, this run chose {choice}: "
                "the run_dir belongs to a different run; pass resume=False to start over"
            )
        batch = tuple(e.id for e in self._batch_of(number))
        first = first_stage_size(len(batch)) if incumbent is not None else None
        expected = batch[:first] if trial.stopped_early and first is not None else batch
        if trial.example_ids != expected:
            raise JournalError(
                f"the journal's trial {number} ran {len(trial.example_ids)} examples "
                f"({'stopped early' if trial.stopped_early else 'in full'}), this run's mini-batch differs: "
                "the run_dir belongs to a different run; pass resume=False to start over"
            )
        return trial

    def _batch_of(self, number: int) -> list[Example]:
        return minibatch(self.valset, self.minibatch_size, self.seed, number)

    async def _run_trial(
        self, number: int, choice: dict[str, int], incumbent: Mapping[str, float] | None
    ) -> Trial:
        started = time.monotonic()
        batch = self._batch_of(number)
        evaluation, stopped_early = await staged_evaluation(
            self.outage, partial(self._evaluate, choice), batch, incumbent, f"trial {number}"
        )
        batch = batch[: len(evaluation.results)]
        return Trial(
            number=number,
            choice=choice,
            example_ids=tuple(e.id for e in batch),
            scores=evaluation.scores,
            score=evaluation.mean,
            n_failed=evaluation.n_failed,
            n_unscored=evaluation.n_unscored,
            seconds=time.monotonic() - started,
            lm_failures=lm_failures_of(evaluation),
            stopped_early=stopped_early,
        )

    async def _run_full_evaluation(
        self, choice: Choice, known: Mapping[str, float], *, is_baseline: bool = False
    ) -> FullEval:
        todo = [e for e in self.valset if e.id not in known]
        evaluation = (
            await self.outage.evaluate(
                partial(self._evaluate, choice),
                todo,
                "the baseline's evaluation" if is_baseline else "a full evaluation",
            )
            if todo
            else Evaluation(())
        )
        if is_baseline:
            check_baseline(evaluation)
        ran = evaluation.scores
        scores = {
            e.id: known[e.id] if e.id in known else ran[e.id]
            for e in self.valset
            if e.id in known or e.id in ran
        }
        return FullEval(
            choice=dict(choice),
            # Nothing scored though the LM works: every example failed for this prompt alone.
            score=math.fsum(scores.values()) / len(scores) if scores else 0.0,
            scores=scores,
            n_failed=evaluation.n_failed,
            n_unscored=evaluation.n_unscored,
            after_trial=len(self.trials),
            lm_failures=lm_failures_of(evaluation),
            reused=len(known),
        )

    async def _handed_in(self, early: Callable[[], Awaitable[FullEval]], choice: Choice) -> FullEval:
        return attrs.evolve(await early(), choice=dict(choice), after_trial=len(self.trials))

    async def evaluate_in_full(self, choice: Choice, *, is_baseline: bool = False) -> FullEval:
        """Fully evaluate ``choice`` on the validation set without recording it (no journal, no event):
        an evaluation made before the search, handed in later through ``prefetched``."""
        return await self._run_full_evaluation(choice, {}, is_baseline=is_baseline)

    async def evaluate_choice(
        self, choice: Choice, examples: Sequence[Example], on_result: OnResult | None = None
    ) -> Evaluation:
        """Score ``choice``'s prompts on ``examples`` (no outage handling, no journal), telling
        ``on_result`` each example's result as it is scored."""
        return await self._evaluate(choice, examples, on_result)

    def run_ahead(self, group: anyio.abc.TaskGroup, choice: Choice, examples: Sequence[Example]) -> None:
        """Start running ``choice`` on ``examples`` in ``group``, ahead of the step that will run them:
        that step's first evaluation of ``choice`` takes these results instead of running them again
        (registered at once, so a step starting before the run does still finds it)."""
        head = self._ahead[key_of(choice)] = HeadStart(tuple(e.id for e in examples))
        group.start_soon(head.run, partial(self._evaluate_now, choice, examples))

    def drop_ahead(self) -> None:
        """Forget the runs started ahead that no step took (the race that started them ended)."""
        self._ahead.clear()

    async def _evaluate(
        self, choice: Choice, examples: Sequence[Example], on_result: OnResult | None = None
    ) -> Evaluation:
        head = self._ahead.pop(key_of(choice), None)
        ids = {e.id for e in examples}
        if head is not None and set(head.example_ids) <= ids:
            return await self._evaluate_after(head, choice, examples, on_result)
        return await self._evaluate_now(choice, examples, on_result)

    async def _evaluate_now(
        self, choice: Choice, examples: Sequence[Example], on_result: OnResult | None = None
    ) -> Evaluation:
        return await evaluate_reporting(
            self.program,
            examples,
            self.metric,
            prompts=self.candidates.prompts_for(choice),
            lm=self.lm,
            concurrency=self._limiter,
            on_result=on_result,
        )

    async def _evaluate_after(
        self, head: HeadStart, choice: Choice, examples: Sequence[Example], on_result: OnResult | None
    ) -> Evaluation:
        """``examples`` evaluated, those of ``head`` taken from it (each told to ``on_result`` as it comes
        in), the others run beside it: the evaluation one run of all of them returns."""
        taken = set(head.example_ids)
        rest = [e for e in examples if e.id not in taken]
        fresh: list[Evaluation] = []

        async def run_rest() -> None:
            fresh.append(await self._evaluate_now(choice, rest, on_result))

        async with plain_errors_task_group() as group:
            if rest:
                group.start_soon(run_rest)
            head.listen(on_result)
            ahead = await head.result()
        found = {r.example_id: r for r in (*ahead.results, *(fresh[0].results if fresh else ()))}
        return Evaluation(tuple(found[e.id] for e in examples))

    async def full_evaluation(
        self, choice: Choice, *, is_baseline: bool = False, known: Mapping[str, float] | None = None
    ) -> FullEval:
        """Fully evaluate ``choice``; ``known`` scores of it (example id -> score, from its trials and
        race rungs) are reused instead of run again."""
        _, step = self._admit_full_evaluation(choice, is_baseline, known, [])
        result = await step()
        await self._record_full_evaluation(result, is_baseline)
        return result

    async def full_evaluations(self, choices: Sequence[Choice]) -> list[FullEval]:
        """Fully evaluate ``choices`` at once, each reusing its known scores (its trials' and race
        rungs'); recorded (evidence, events, the pick) in the order given, as one after another.

        Each is admitted by the run's limits in turn, counting those admitted before it; one refused
        ends the admissions: those admitted are evaluated and recorded, then the refusal is raised (as
        when the refused one's turn comes after them).
        """
        steps: list[Callable[[], Awaitable[FullEval]]] = []
        admitted: list[tuple[str, str, int]] = []
        refusal: LimitReached | None = None
        for choice in choices:
            if self.stopped is not None or self.should_stop() is not None:
                break
            try:
                part, step = self._admit_full_evaluation(choice, False, self.scores_of(choice), admitted)
            except LimitReached as exc:
                refusal = exc
                break
            admitted.append(part)
            steps.append(step)
        results = await at_once_in_order(steps, partial(self._record_full_evaluation, is_baseline=False))
        if refusal is not None:
            raise refusal
        return results

    def _admit_full_evaluation(
        self,
        choice: Choice,
        is_baseline: bool,
        known: Mapping[str, float] | None,
        beside: Sequence[tuple[str, str, int]],
    ) -> tuple[tuple[str, str, int], Callable[[], Awaitable[FullEval]]]:
        """Admit ``choice``'s full evaluation beside the admitted parts ``beside`` (not started yet);
        returns its part and how to run it (journaled, not recorded)."""
        ids = {e.id for e in self.valset}
        reuse = {k: v for k, v in (known or {}).items() if k in ids}
        key = json.dumps(sorted(choice.items()))
        what = "the baseline's evaluation" if is_baseline else "a full evaluation"
        early = self.prefetched(self.candidates, choice) if self.prefetched and not reuse else None
        part = ("full_eval", key, 0 if early else len(self.valset) - len(reuse))
        # The parts beside are admitted and in flight, so free here: listing them first keeps what the
        # admission adds to its first part (a fork's reserve for the trials beside it) counted once.
        self.admit_step(what, [*beside, part])

        async def step() -> FullEval:
            result = await self.memo(
                "full_eval",
                key,
                partial(self._handed_in, early, choice)
                if early
                else lambda: self._run_full_evaluation(choice, reuse, is_baseline=is_baseline),
                full_eval_to_json,
                full_eval_from_json,
            )
            if result.reused != len(reuse):
                raise JournalError(
                    f"the journal's full evaluation of {dict(choice)} reused {result.reused} earlier "
                    f"scores, this run reuses {len(reuse)}: the run_dir belongs to a different run; pass "
                    "resume=False to start over"
                )
            return result

        return part, step

    async def _record_full_evaluation(self, result: FullEval, is_baseline: bool) -> None:
        self.full_evals.append(result)
        self._spent += len(result.scores) + result.n_unscored - result.reused
        self._tested.add(choice_key(result.choice))
        index = len(self.full_evals) - 1
        self.failures.update({f"full_eval:{index}:{eid}": e for eid, e in result.lm_failures.items()})
        await self.emit(
            FullEvaluation(result.choice, result.score, len(self.valset), result.n_failed, is_baseline)
        )
        # The pick is decided again from all evidence; no tie goes to the earlier evaluation.
        previous, self._pick = self._pick, self.decide()
        if previous is None or key_of(previous.choice) != key_of(self._pick.choice):
            await self.emit(NewBest(dict(self._pick.choice), self._full_score(self._pick.choice)))
