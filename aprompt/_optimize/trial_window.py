"""Continuous trials: the TPE trials of a search, with the periodic evaluations beside them.

``parallel_trials`` trials are in flight at a time, with no batch barrier: trial *n* is asked from the TPE
as soon as trial *n − parallel_trials* has been told, and trials are told strictly in number order (one
that finishes early waits for those before it). So trial *n*'s suggestion is a function of trials
*0 .. n − parallel_trials* (told) and of those between (pending: the TPE counts them as bad observations, a
constant liar), never of which finished first. The periodic evaluation at point *K* (once trial *K − 1* is
told) is decided from the evidence there — trials *0 .. K − 1* and the evaluations before — and runs beside
the trials that follow, on a copy of the search that sees only that evidence (``SearchLoop.fork``);
``after_evaluation`` follows it on the same copy. What it records (full evaluations, race rungs, the
candidates ``after_evaluation`` added) joins the search once trial *K* is told, before trial
*K + parallel_trials* is asked, which waits for it if needed: that is the first trial whose suggestion, or
whose stopping early (racing), can depend on it. Every decision thus depends on the seed and the results
(and the LM cache) only, whatever the timing, and a resumed run replays the same flow from its journal.

Each step (a trial, a race's rung, a full evaluation) is admitted by the run's limits before it starts,
counting the admitted steps beside it at their estimates (a trial until it is told, an evaluation's steps
until it joins: ``SearchLoop.hold_steps``, so no admission depends on which of them ended first), and a
journaled step for free; a
refusal is journaled, so a run stopped by a limit and resumed under the same limit replays what it did and
stops at the same step. Once a limit refuses a trial, or a step of the evaluation beside (from its join
on), no trial starts any more, those running are completed and recorded, and the search returns the best
found. Under a limit on calls, tokens or cost a trial is also refused, with
:class:`~aprompt.lm._limit_reached.BudgetKept`, once the budget would no longer keep one full
evaluation's runs beside it: the trials end there and the search goes on to its last race, which gets
the rest of the budget (``RunContext.admit_trial``); a periodic race takes no more than the budget pays
for beside the window's trials and that reserve. Both amounts are journaled (``RunSpending.decided``),
so a resume replays them.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import attrs

from aprompt._optimize.final_pick import Key, key_of
from aprompt._optimize.pooling import thompson_choice
from aprompt._optimize.racing import (
    MAX_ENTRANTS,
    MIN_PERIODIC_RACERS,
    TIME_MARGIN,
    later_race_sure,
    racers_affordable,
    run_race,
    rung_sizes,
    within_budget,
)
from aprompt._optimize.search_records import Trial
from aprompt._optimize.search_steps import journaled_trial
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm._limit_reached import BudgetKept, LimitReached
from aprompt.tpe import Categorical, TPESampler

if TYPE_CHECKING:
    from aprompt._optimize.search import SearchLoop

logger = logging.getLogger("aprompt")

#: Seeds the draws of the model's trials apart from the TPE's own (``[seed, number]``).
MODEL_TRIAL_STREAM = 1

#: A periodic evaluation's step, run on the search's copy: a race or a full evaluation.
_Step = Callable[["SearchLoop"], Awaitable[object]]


def _waits(loop: SearchLoop, entrants: Sequence[Mapping[str, int]], allowance: int, point: int) -> bool:
    """Whether a periodic race keeps its ``allowance`` for a later one: it would take fewer than
    ``MIN_PERIODIC_RACERS`` of the ``entrants``, and nothing can stop the run before a later race spends
    it (:func:`~aprompt._optimize.racing.later_race_sure`: no limit, or limits far above what the rest of
    the plan needs).

    A race of one is one full evaluation of the best-ranked combination, on mini-batches whose noise
    often ranks the best seen lower; the same runs spent later race several and keep the best. Under a
    limit that may stop the run first, each point spends what it has.
    """
    wanted = min(MIN_PERIODIC_RACERS, len(entrants))
    return racers_affordable(loop, entrants, allowance) < wanted and later_race_sure(loop, point)


@attrs.define
class _Evaluation:
    """A periodic evaluation running beside the trials, on ``fork``: what it records joins the search
    once trial ``joins_after`` is told."""

    fork: SearchLoop
    joins_after: int
    finished: anyio.Event = attrs.Factory(anyio.Event)
    merged: bool = False
    #: The run's limits refused one of its steps (the search stops at its join).
    refusal: LimitReached | None = None
    #: Its admitted steps, held at their estimates until it joins (``SearchLoop.hold_steps``).
    held: list[tuple[str, str]] = attrs.Factory(list)


def _held_admission(
    loop: SearchLoop,
    held: list[tuple[str, str]],
    reserve: int,
    what: str,
    parts: Sequence[tuple[str, str, int]],
) -> None:
    """Admit an evaluation's step with ``reserve`` program runs for the trials that may start beside it
    (under a limit, judged with the step but not committed with it: each trial commits its own when
    admitted), and hold it (at its estimate for the trials' admissions) until the evaluation joins."""
    if loop.admit_evaluation_step is not None:
        loop.admit_evaluation_step(what, parts, reserve)
    else:
        _with_reserve(loop.admit_step, reserve, what, parts)
    keys = [(kind, key) for kind, key, _ in parts]
    loop.hold_steps(keys)
    held.extend(keys)


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


async def _full_evaluation(fork: SearchLoop, choice: Mapping[str, int]) -> object:
    """The periodic evaluation without racing: ``choice``'s full evaluation, on the search's copy."""
    return await fork.full_evaluation(choice)


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


@attrs.define(eq=False)
class TrialWindow:
    """Runs the TPE trials of ``loop`` (whose sampler is set) continuously, with the periodic evaluations
    beside them; see the module docstring. The trials in flight are asked up to ``asked`` and told (in
    number order) up to ``told``.

    Example: ``await TrialWindow(loop).run()`` records trials ``len(loop.trials) .. loop.n_trials - 1``
    (fewer when the search stops, or a limit refuses a step: then raised once those running are recorded).
    """

    loop: SearchLoop
    first: int = attrs.field(init=False)
    asked: int = attrs.field(init=False)
    told: int = attrs.field(init=False)
    #: Per trial asked and not told: its cancel scope, the event set when it is done, and its record.
    running: dict[int, anyio.CancelScope] = attrs.field(factory=dict, init=False)
    finished: dict[int, anyio.Event] = attrs.field(factory=dict, init=False)
    done: dict[int, Trial] = attrs.field(factory=dict, init=False)
    evaluation: _Evaluation | None = attrs.field(default=None, init=False)
    #: No trial starts any more (the search stops, or a limit refused one: ``refusal``).
    stopping: bool = attrs.field(default=False, init=False)
    refusal: LimitReached | None = attrs.field(default=None, init=False)
    #: Periodic points passed with racing (the plan gives the evaluations a share of each).
    points: int = attrs.field(default=0, init=False)
    #: When the first trial this call ran started, and the examples those told since have scored: the
    #: search's pace, which tells how long the last evaluation will take under ``max_time``. A trial read
    #: back from the journal (``loop.replayed_trials``) took no time: it counts in none of them.
    _started: float | None = attrs.field(default=None, init=False)
    _examples_told: int = attrs.field(default=0, init=False)
    _ran_told: int = attrs.field(default=0, init=False)
    #: Seconds each trial this call ran took from its start: a race's rungs each wait like a trial.
    _trial_seconds: list[float] = attrs.field(factory=list, init=False)
    #: The sampler whose trials' combinations were read, how many, and their keys (``_held_keys``).
    _held: tuple[TPESampler | None, int, set[Key]] = attrs.field(factory=lambda: (None, 0, set()), init=False)

    def __attrs_post_init__(self) -> None:
        self.first = self.asked = self.told = len(self.loop.trials)

    async def run(self) -> None:
        """Run the trials up to ``n_trials`` and join the last evaluation beside them."""
        loop = self.loop
        try:
            async with plain_errors_task_group() as group:
                while self.asked < min(self.first + max(1, loop.parallel_trials), loop.n_trials):
                    if not await self._start_trial(group):
                        break
                while self.told < self.asked:
                    await self._tell_next()
                    if self.evaluation is not None and self.evaluation.joins_after < self.told:
                        await self._join()
                    if self.told % loop.full_eval_every == 0 and self.told < loop.n_trials:
                        if not self.stopping:
                            self.evaluation = self._periodic_evaluation(group, self.told)
                        if loop.stopped is not None:
                            self._cancel_running()  # nothing scores: the search stops here
                            break
                    if self.asked < loop.n_trials and not self.stopping:
                        await self._start_trial(group)
                if self.evaluation is not None:
                    await self._join()
        except BaseException:
            # A run stopped by a limit returns the best found: what the evaluation finished counts.
            if self.evaluation is not None:
                self._merge(self.evaluation)
            raise
        if self.refusal is not None:
            raise self.refusal

    def _sampler(self) -> TPESampler:
        # Read each time: a candidate joining with an evaluation rebuilds the loop's sampler.
        sampler = self.loop.sampler
        assert sampler is not None
        return sampler

    def _held_keys(self, sampler: TPESampler) -> set[Key]:
        """The combinations of every trial ``sampler`` holds, reading only those added since the last call
        (a sampler's trials are only ever added to; a rebuilt sampler is read from its start)."""
        held, read, keys = self._held
        if held is not sampler:
            read, keys = 0, set()
        fresh = sampler.asked_params(read)
        keys.update(key_of({k: int(v) for k, v in params.items()}) for params in fresh)
        self._held = (sampler, read + len(fresh), keys)
        return set(keys)

    def _cancel_running(self) -> None:
        for scope in self.running.values():
            scope.cancel()

    async def _start_trial(self, group: anyio.abc.TaskGroup) -> bool:
        """Ask the TPE for the next trial and start it, unless the search stops or the run's limits
        refuse it (then no trial starts any more, and those running are completed)."""
        loop = self.loop
        number = self.asked
        if loop.stopped is not None:
            self.stopping = True
            return False
        if loop.time_limited and loop.decided(f"time kept:{number}", self._time_short):
            # The rest of the time goes to the search's last evaluation: trials end, the run goes on.
            logger.info(
                "aprompt: max_time: trial %d not started, to keep the time the last evaluation needs", number
            )
            self.stopping = True
            loop.cut_short_by = "max_time"
            return False
        # The run's admission counts what the admitted steps beside it (the window's other trials, an
        # evaluation not yet joined) are still expected to spend; a resumed run under the same limit
        # refuses the same trial (the refusal is journaled, a journaled trial is free).
        try:
            size = min(loop.minibatch_size, len(loop.valset))
            # The first trial runs whatever it leaves: a last evaluation needs a trial's evidence to
            # choose what it evaluates.
            admit = loop.admit_trial if loop.admit_trial is not None and number > 0 else loop.admit_step
            admit(f"trial {number}", [("trial", str(number), size)])
            # Counted at its estimate until it is told, in number order (see SearchLoop.hold_steps).
            loop.hold_steps([("trial", str(number))])
        except BudgetKept as kept:
            # The rest of the budget goes to the search's last evaluation: trials end, the run goes on.
            logger.info("aprompt: %s", kept)
            self.stopping = True
            loop.cut_short_by = kept.limit
            return False
        except LimitReached as refusal:
            self.stopping, self.refusal = True, refusal
            return False
        suggestion = self._sampler().ask(self._model_trial(number))
        assert suggestion.number == number, (suggestion.number, number)
        choice = await loop.resolve(suggestion.params)
        self.asked += 1
        scope = self.running[number] = anyio.CancelScope()
        finished = self.finished[number] = anyio.Event()
        group.start_soon(self._run_trial, scope, finished, number, choice, loop.incumbent())
        return True

    def _time_short(self) -> int:
        """1 when the time left under ``max_time`` no longer pays for the trials in flight and a last race
        of one racer (with a margin), else 0; 0 before two trials this call ran are told. The runs go at
        the search's pace so far, and each of the race's rungs waits for its slowest run like a trial."""
        loop = self.loop
        pace = loop.runs_per_second
        if pace is None or self._ran_told < 2 or not self._trial_seconds:
            return 0
        n = len(loop.valset)
        batch = min(loop.minibatch_size, n)
        waits = len(rung_sizes(n)) * statistics.median(self._trial_seconds)
        needed = TIME_MARGIN * (waits + (n + (self.asked - self.told) * batch) / pace)
        return int(loop.seconds_left() < needed)

    def _model_trial(self, number: int) -> dict[str, int] | None:
        """After the TPE's covering trials, trial ``number``'s combination drawn from the pooled model
        (:func:`~aprompt._optimize.pooling.thompson_choice`, seeded by the seed and the number) instead of
        the TPE's suggestion; ``None`` leaves it to the TPE. The evidence is what the suggestion may see
        (see the module docstring), so a resumed run draws the same."""
        loop = self.loop
        sampler = self._sampler()
        cover = sampler.n_cover
        space = sampler.space
        if not loop.pooled or loop.proposal_hook is not None or cover is None or number < cover:
            return None
        if not all(isinstance(d, Categorical) for d in space.values()):
            return None
        avoid = self._held_keys(sampler) | loop.settled()
        sizes = {name: d.n_choices for name, d in space.items() if isinstance(d, Categorical)}
        return thompson_choice(loop.observations(), sizes, (loop.seed, number, MODEL_TRIAL_STREAM), avoid)

    async def _run_trial(
        self,
        scope: anyio.CancelScope,
        finished: anyio.Event,
        number: int,
        choice: dict[str, int],
        incumbent: Mapping[str, float] | None,
    ) -> None:
        with scope:
            started = time.monotonic()
            self.done[number] = await journaled_trial(self.loop, number, choice, incumbent)
            if number not in self.loop.replayed_trials:
                self._started = started if self._started is None else min(self._started, started)
                self._trial_seconds.append(time.monotonic() - started)
            finished.set()

    async def _tell_next(self) -> None:
        """Wait for the next trial in number order, then tell the TPE and record it."""
        number = self.told
        await self.finished.pop(number).wait()
        trial = self.done.pop(number)
        del self.running[number]
        self.loop.retire_steps([("trial", str(number))])
        sampler = self._sampler()
        # Unscored trials are told as failures: an LM outage says nothing about the prompt.
        if trial.score is None:
            sampler.tell_failed(trial.number)
        else:
            sampler.tell(trial.number, trial.score)
        self.told += 1
        loop = self.loop
        if number not in loop.replayed_trials:
            self._ran_told += 1
            self._examples_told += len(trial.scores) + trial.n_unscored
        if self._started is not None and self._examples_told:
            loop.runs_per_second = self._examples_told / max(1e-6, time.monotonic() - self._started)
        if self._trial_seconds:
            loop.trial_seconds = statistics.median(self._trial_seconds)
        await loop.record_trial(trial)

    def _periodic_evaluation(self, group: anyio.abc.TaskGroup, point: int) -> _Evaluation | None:
        """Decide, from the evidence after ``point`` trials, the periodic evaluation there — a race
        within what the plan gave the evaluations so far, or (without racing) a full evaluation of the
        best untested combination — and start it beside the trials, followed by ``after_evaluation``;
        ``None`` when the search stops here."""
        loop = self.loop
        if loop.racing:
            self.points += 1
        if loop.stopped is not None or loop.stops_as_nothing_scores():
            return None
        step: _Step | None = None
        if not loop.racing:
            choice = loop.next_full_evaluation()
            if choice is not None:
                step = partial(_full_evaluation, choice=choice)
        else:
            n = len(loop.valset)
            plan = (1 + self.points) * n + len(loop.trials) * min(loop.minibatch_size, n)
            entrants = loop.ranked_untested(MAX_ENTRANTS)
            allowance = max(0, plan - loop.spent)
            if loop.admit_trial is not None and allowance > 0:
                # Under a limit, no more than the budget pays for beside the window's trials and the
                # runs the trials keep for the last evaluation (journaled: a resumed run races the same).
                keep = loop.parallel_trials * min(loop.minibatch_size, n) + n + loop.confirmation_kept
                asked = allowance
                allowance = loop.decided(
                    f"periodic race runs:{point}", partial(within_budget, loop, allowance, keep)
                )
                if allowance < asked and loop.stopped is None and loop.cut_short_by is None:
                    # The race runs fewer programs than the plan gives it: the limit cut the run short
                    # of its plan, and the result says so (compared outside the journaled decision, so a
                    # resumed run says it too).
                    loop.cut_short_by = loop.binding_limit()
            if entrants and not _waits(loop, entrants, allowance, point):
                step = partial(run_race, entrants=entrants, allowance=allowance)
        # The fork's steps are admitted one by one with the trials that may run beside them (a journaled
        # step is free), so a resumed run replays them even when the meter has reached a limit.
        reserve = max(1, loop.parallel_trials) * min(loop.minibatch_size, len(loop.valset))
        held: list[tuple[str, str]] = []
        evaluation = _Evaluation(loop.fork(partial(_held_admission, loop, held, reserve)), point, held=held)
        group.start_soon(self._evaluate_beside, evaluation, step)
        return evaluation

    async def _evaluate_beside(self, evaluation: _Evaluation, step: _Step | None) -> None:
        try:
            if step is not None:
                await step(evaluation.fork)
            await self.loop.after_evaluation(evaluation.fork)
        except BaseException as exc:
            refusal = _limit_refusal(exc)
            if refusal is None:
                raise
            # The search stops at the evaluation's join, a fixed point, not now.
            evaluation.refusal = refusal
        evaluation.finished.set()

    async def _join(self) -> None:
        evaluation = self.evaluation
        assert evaluation is not None
        await evaluation.finished.wait()
        self._merge(evaluation)
        self.evaluation = None
        refusal = evaluation.refusal
        if isinstance(refusal, BudgetKept):
            # The budget could not pay for the evaluation's next step beside the trials: the trials end
            # and the run goes on to the search's last evaluation, on what is left.
            logger.info("aprompt: %s", refusal)
            self.stopping = True
            self.loop.cut_short_by = self.loop.cut_short_by or refusal.limit
        elif refusal is not None:
            self.stopping = True
            self.refusal = self.refusal or refusal

    def _merge(self, evaluation: _Evaluation) -> None:
        """Add what the evaluation recorded (all of it, or what it finished when the run stopped) to
        the search, once."""
        if not evaluation.merged:
            evaluation.merged = True
            self.loop.merge(evaluation.fork)
            self.loop.retire_steps(evaluation.held)
