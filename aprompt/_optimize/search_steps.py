"""The search's steps of its own: a trial on its seeded mini-batch, and a full evaluation on the validation
set (a race's rungs are :mod:`aprompt._optimize.racing`'s).

Each is admitted by the run's limits, run, journaled (``"trial"``, ``"full_eval"``) and checked against the
journal when a resumed run replays it; the loop records it (``SearchLoop.record_trial``,
``SearchLoop.record_full_evaluation``). A step is complete before it is journaled: examples an LM outage
left unscored are run again once the LM answers (:mod:`aprompt._optimize.outage`); only those that fail
while the LM works stay unscored (``lm_failures``).

A full evaluation a strategy made ahead of the search (``SearchLoop.prefetched``) is handed in instead of
run again, and journaled like the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import attrs

from aprompt._errors import JournalError
from aprompt._optimize.candidates import Choice
from aprompt._optimize.concurrent_steps import at_once_in_order
from aprompt._optimize.evaluate import Evaluation
from aprompt._optimize.examples import Example
from aprompt._optimize.race_plan import first_stage_size
from aprompt._optimize.search_records import (
    FullEval,
    Trial,
    check_baseline,
    full_eval_from_json,
    full_eval_of,
    full_eval_to_json,
    lm_failures_of,
    minibatch,
    trial_from_json,
    trial_to_json,
)
from aprompt._optimize.staged_trial import staged_evaluation
from aprompt.lm._limit_reached import LimitReached

if TYPE_CHECKING:
    from aprompt._optimize.search import SearchLoop

#: A step admitted by the run's limits: (journal kind, key, program runs); see ``SearchLoop.admit_step``.
Part = tuple[str, str, int]


async def journaled_trial(
    loop: SearchLoop, number: int, choice: dict[str, int], incumbent: Mapping[str, float] | None
) -> Trial:
    """Trial ``number`` of ``choice`` (journaled, not recorded), stopped early when clearly losing to
    ``incumbent``'s scores (racing)."""
    ran = False

    def run() -> Awaitable[Trial]:
        nonlocal ran
        ran = True
        return _run_trial(loop, number, choice, incumbent)

    trial = await loop.memo("trial", str(number), run, trial_to_json, trial_from_json)
    if not ran:  # read back from the journal: its event says so (a display's pace leaves it out)
        loop.replayed_trials.add(number)
    if dict(trial.choice) != choice:
        raise JournalError(
            f"the journal's trial {number} chose {dict(trial.choice)}, this run chose {choice}: "
            "the run_dir belongs to a different run; pass resume=False to start over"
        )
    batch = tuple(e.id for e in _batch_of(loop, number))
    first = first_stage_size(len(batch)) if incumbent is not None else None
    expected = batch[:first] if trial.stopped_early and first is not None else batch
    if trial.example_ids != expected:
        raise JournalError(
            f"the journal's trial {number} ran {len(trial.example_ids)} examples "
            f"({'stopped early' if trial.stopped_early else 'in full'}), this run's mini-batch differs: "
            "the run_dir belongs to a different run; pass resume=False to start over"
        )
    return trial


def _batch_of(loop: SearchLoop, number: int) -> list[Example]:
    return minibatch(loop.valset, loop.minibatch_size, loop.seed, number)


async def _run_trial(
    loop: SearchLoop, number: int, choice: dict[str, int], incumbent: Mapping[str, float] | None
) -> Trial:
    started = time.monotonic()
    batch = _batch_of(loop, number)
    evaluation, stopped_early = await staged_evaluation(
        loop.outage, partial(loop.evaluate_choice, choice), batch, incumbent, f"trial {number}"
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


async def full_evaluation(
    loop: SearchLoop,
    choice: Choice,
    *,
    is_baseline: bool = False,
    known: Mapping[str, float] | None = None,
) -> FullEval:
    """Fully evaluate ``choice`` and record it; ``known`` scores of it (example id -> score, from its
    trials and race rungs) are reused instead of run again."""
    _, step = _admit_full_evaluation(loop, choice, is_baseline, known, [])
    result = await step()
    await loop.record_full_evaluation(result, is_baseline)
    return result


async def full_evaluations(loop: SearchLoop, choices: Sequence[Choice]) -> list[FullEval]:
    """Fully evaluate ``choices`` at once, each reusing its known scores (its trials' and race rungs');
    recorded (evidence, events, the pick) in the order given, as one after another.

    Each is admitted by the run's limits in turn, counting those admitted before it; one refused ends the
    admissions: those admitted are evaluated and recorded, then the refusal is raised (as when the
    refused one's turn comes after them).
    """
    steps: list[Callable[[], Awaitable[FullEval]]] = []
    admitted: list[Part] = []
    refusal: LimitReached | None = None
    for choice in choices:
        if loop.stopped is not None or loop.should_stop() is not None:
            break
        try:
            part, step = _admit_full_evaluation(loop, choice, False, loop.scores_of(choice), admitted)
        except LimitReached as exc:
            refusal = exc
            break
        admitted.append(part)
        steps.append(step)
    results = await at_once_in_order(steps, partial(loop.record_full_evaluation, is_baseline=False))
    if refusal is not None:
        raise refusal
    return results


def _admit_full_evaluation(
    loop: SearchLoop,
    choice: Choice,
    is_baseline: bool,
    known: Mapping[str, float] | None,
    beside: Sequence[Part],
) -> tuple[Part, Callable[[], Awaitable[FullEval]]]:
    """Admit ``choice``'s full evaluation beside the admitted parts ``beside`` (not started yet); returns
    its part and how to run it (journaled, not recorded)."""
    ids = {e.id for e in loop.valset}
    reuse = {k: v for k, v in (known or {}).items() if k in ids}
    # Keyed by the trials recorded too: a call with a raised limit runs more trials first, then
    # evaluates a combination an earlier call evaluated at another point, on other known scores.
    key = f"{len(loop.trials)}:{json.dumps(sorted(choice.items()))}"
    what = "the baseline's evaluation" if is_baseline else "a full evaluation"
    early = loop.prefetched(loop.candidates, choice) if loop.prefetched and not reuse else None
    part = ("full_eval", key, 0 if early else len(loop.valset) - len(reuse))
    # The parts beside are admitted and in flight, so free here: listing them first keeps what the
    # admission adds to its first part (a fork's reserve for the trials beside it) counted once.
    loop.admit_step(what, [*beside, part])

    async def step() -> FullEval:
        result = await loop.memo(
            "full_eval",
            key,
            partial(_handed_in, loop, early, choice)
            if early
            else lambda: run_full_evaluation(loop, choice, reuse, is_baseline=is_baseline),
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


async def run_full_evaluation(
    loop: SearchLoop, choice: Choice, known: Mapping[str, float], *, is_baseline: bool = False
) -> FullEval:
    """Fully evaluate ``choice`` on ``loop``'s validation set, reusing the ``known`` scores (not
    journaled, not recorded)."""
    todo = [e for e in loop.valset if e.id not in known]
    evaluation = (
        await loop.outage.evaluate(
            partial(loop.evaluate_choice, choice),
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
        e.id: known[e.id] if e.id in known else ran[e.id] for e in loop.valset if e.id in known or e.id in ran
    }
    return full_eval_of(choice, scores, evaluation, len(loop.trials), len(known))


async def _handed_in(loop: SearchLoop, early: Callable[[], Awaitable[FullEval]], choice: Choice) -> FullEval:
    return attrs.evolve(await early(), choice=dict(choice), after_trial=len(loop.trials))
