"""Confirming an undecided final pick on training examples that the compared programs do not show as demos.

The final pick (:mod:`aprompt._optimize.final_pick`) compares programs on the validation set at a level
adjusted for every fully evaluated combination, so on a small validation set a real lead can stay below
it: 6 wins and no loss of 30 does not clear a bound adjusted nine ways. When the search ends with the pick
undecided — a fully evaluated *challenger* scored above the pick on their shared examples without the
evidence to replace it — the pick and its most promising fully evaluated challengers (at most
``MAX_CHALLENGERS``; the hand-written reference first while the pick is the baseline) are each run on
training examples that are not in the validation set, that the program does not show as a demo and
that none of its instructions was written from (a reflective proposal's failing runs): a seeded order
of them, at most as many as the validation set has, and at least ``SMALL_SET_CONFIRMATION`` where the
training set has them (:func:`confirmation_size`; fewer than
``MIN_SHARED`` shared examples are never evidence). The
scores join the evidence by example id, and the pick is decided again, at the same level, on the larger
set of examples each pair shares.

Why the examples are fair to both sides: a program's own demos are the examples it has seen (a
bootstrapped demo is a run it passed), and so are the failing runs a reflective instruction of its was
written from (their labels included), so they are left out of its runs and so out of every comparison it
is in; the other training examples are as new to it as the validation set. Each pair is compared on the
validation set plus the training examples neither shows, a set fixed by the pair, so choosing the
contenders by their validation scores does not bias the comparison, and the level stays adjusted for all
the fully evaluated combinations.

Each contender's runs are admitted by the run's limits and journaled (``"confirmation"``), and a resumed
run checks that it would run the same examples.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

from aprompt._errors import JournalError
from aprompt._optimize.candidates import Candidates, Choice, choice_key
from aprompt._optimize.concurrent_steps import at_once_in_order
from aprompt._optimize.examples import Example, inputs_key
from aprompt._optimize.final_pick import FinalPick, describe_choice
from aprompt._optimize.paired_evidence import MIN_SHARED, could_become_better, leads, loosest_level
from aprompt._optimize.search_records import (
    FullEval,
    full_eval_from_json,
    full_eval_of,
    full_eval_to_json,
)

if TYPE_CHECKING:
    from aprompt._optimize.search import SearchLoop

#: The journal's kind for a contender's runs on training examples.
CONFIRMATION_KIND = "confirmation"
#: Fully evaluated challengers confirmed beside the pick, most promising first.
MAX_CHALLENGERS = 2
#: The fewest training examples a contender runs in a confirmation: a validation set of a few examples
#: cannot show a program better (fewer than ``MIN_SHARED`` shared examples are no evidence), and a pair
#: that shares only ``MIN_SHARED`` shows only a large gain; 30 more show a gain of a quarter as a rule.
SMALL_SET_CONFIRMATION = 30


#: Below this many validation examples, a run under a limit on calls, tokens or cost keeps the runs of a
#: confirmation's first stage from its trials and its last race (:func:`runs_kept_for_confirmation`). The
#: pick's level is shared among the programs it weighs: with a reference and three searched programs a
#: lead with no loss needs 7 to 9 wins, which a program 20 points better shows on about 35 to 45
#: examples. On fewer, the pick is undecided in most runs, and only a confirmation settles it (intent_goal,
#: 30 validation examples, at DSPy MIPROv2's calls: a challenger 6–0 ahead of a program that scores 0 was
#: kept out, `bench/results/quality_intent_goal_confirmation_kept.md`); on more, the trials are worth
#: more than the reserve (the simulated world's capped runs, `bench/results/regret.md`).
CONFIRMATION_KEPT_BELOW = 50


def runs_kept_for_confirmation(trainset: Sequence[Example], valset: Sequence[Example]) -> int:
    """The program runs of a confirmation's first stage (every contender on the first half of as many
    fresh training examples as the validation set has), when the validation set is smaller than
    :data:`CONFIRMATION_KEPT_BELOW`; else 0. The second stage runs only for challengers still in the
    running, when the rest of the budget pays for it."""
    if len(valset) >= CONFIRMATION_KEPT_BELOW:
        return 0
    val_ids = {e.id for e in valset}
    fresh = sum(e.id not in val_ids for e in trainset)
    return (1 + MAX_CHALLENGERS) * _half_of(min(fresh, confirmation_size(len(valset))))


def confirmation_size(n_val: int) -> int:
    """The most training examples a contender runs: as many as the validation set has, and at least
    :data:`SMALL_SET_CONFIRMATION` (the training set permitting), so that on a small validation set the
    pick can find a program better on evidence rather than keep the baseline for want of it.

    Example::

        >>> confirmation_size(40), confirmation_size(3)
        (40, 30)
    """
    return max(n_val, SMALL_SET_CONFIRMATION)


def confirmation_calls(n_predictors: int, n_train: int, n_val: int) -> int:
    """The most LM calls a confirmation makes (one call per predictor per program run): every contender
    on as many training examples as it may run."""
    return (1 + MAX_CHALLENGERS) * min(n_train, confirmation_size(n_val)) * n_predictors


def contenders(
    current: FinalPick,
    fully_evaluated: set[tuple[tuple[str, int], ...]],
    references: Sequence[Mapping[str, int]] = (),
) -> list[dict[str, int]]:
    """The pick, then its most promising fully evaluated challengers; empty when none is undecided.

    While the pick is the baseline, a reference among the challengers goes first: it is tested against the
    baseline at its own share of the level (:func:`~aprompt._optimize.paired_evidence.pick_levels`), so
    its lead is the likeliest to be settled by the same runs."""
    challengers = [dict(c) for c in current.challengers if choice_key(c) in fully_evaluated]
    if not challengers:
        return []
    if current.kept_baseline:
        hand = {choice_key(r) for r in references}
        challengers.sort(key=lambda c: choice_key(c) not in hand)  # stable: otherwise most promising first
    return [dict(current.choice), *challengers[:MAX_CHALLENGERS]]


def shown_as_demos(candidates: Candidates, choice: Choice) -> set[str]:
    """Ids of the training examples ``choice``'s prompts show as demos (any predictor)."""
    shown: set[str] = set()
    for name in candidates.predictors:
        demo_set = candidates.demo_sets[name][choice.get(f"{name}.demos", 0)]
        shown.update(demo_set.source_ids)
    return shown


def seen_by(candidates: Candidates, choice: Choice) -> set[str]:
    """Ids of the training examples ``choice``'s prompts show as demos, or that one of its instructions
    was written from with their labels (``Candidates.seen``: a reflective proposal's failing runs)."""
    seen = shown_as_demos(candidates, choice)
    for name in candidates.predictors:
        seen.update(candidates.seen.get((name, choice.get(f"{name}.instruction", 0)), ()))
    return seen


def fresh_examples(
    trainset: Sequence[Example],
    valset: Sequence[Example],
    shown: set[str],
    seed: int,
) -> list[Example]:
    """The training examples a contender runs: not in ``valset``, not ``shown`` as its demos (nor a copy
    of one: the same inputs under another id, as a training set that repeats a row has), in a seeded
    order that is the same for every contender (so two contenders share all the examples neither shows),
    at most :func:`confirmation_size` of them."""
    val_ids = {e.id for e in valset}
    val_inputs = {inputs_key(e) for e in valset}
    order = [e for e in trainset if e.id not in val_ids and inputs_key(e) not in val_inputs]
    random.Random(f"{seed}:confirmation").shuffle(order)
    shown_inputs = {inputs_key(e) for e in trainset if e.id in shown}
    fresh = [e for e in order if e.id not in shown and inputs_key(e) not in shown_inputs]
    return fresh[: confirmation_size(len(valset))]


async def confirm(
    loop: SearchLoop, current: FinalPick, record: Callable[[FullEval], Awaitable[None]]
) -> None:
    """Run ``current``'s contenders on their fresh training examples in two stages, handing each run's
    record (journaled) to ``record`` as it completes; nothing when the pick is not undecided or no
    training example is fresh.

    The first stage runs the first half of each contender's examples. A challenger stops there when it
    is not ahead of the pick on the fresh examples they share, or when it could not be shown better even
    if it won every example of its second half it shares with the pick
    (:func:`~aprompt._optimize.paired_evidence.could_become_better`); the second stage runs the rest for the
    pick and the challengers left, when any is. Stopping a challenger early can only keep the pick, so it
    spends fewer calls without making a lucky lead likelier to pass (a real lead behind on the first half
    by chance is the price).

    Raises:
        LimitReached: the run's limits cannot pay for a stage (what earlier stages ran is recorded).
    """
    plans = []
    for choice in contenders(current, loop.tested, loop.reference_choices):
        examples = fresh_examples(loop.confirmation, loop.valset, seen_by(loop.candidates, choice), loop.seed)
        if examples:
            plans.append((choice, examples))
    if len(plans) < 2 or choice_key(plans[0][0]) != choice_key(current.choice):
        return  # nothing to compare the pick with on fresh examples
    first = await _stage(loop, 0, [(c, examples[: _half(examples)]) for c, examples in plans], record)
    pick_choice, pick_examples = plans[0]
    pick_scores = {**loop.scores_of(pick_choice), **first[0].scores}
    pick_rest = {e.id for e in pick_examples[_half(pick_examples) :]}
    # The pick weighs every fully evaluated one but the baseline; a challenger that could not be found
    # better even at the loosest level the pick may use stops.
    references = {choice_key(r) for r in loop.reference_choices} & loop.tested
    level = loosest_level(len(references), len(loop.tested) - 1 - len(references))
    min_shared = min(MIN_SHARED, len(loop.valset))
    live = []
    for (choice, examples), ran in zip(plans[1:], first[1:], strict=True):
        more = sum(e.id in pick_rest for e in examples[_half(examples) :])
        mine = {**loop.scores_of(choice), **ran.scores}
        ahead = leads(ran.scores, first[0].scores)
        if more and ahead and could_become_better(mine, pick_scores, more, level, min_shared):
            live.append((choice, examples[_half(examples) :]))
    if live and loop.should_stop() is None:  # a time limit reached stops here, with the first half in
        await _stage(loop, 1, [(pick_choice, pick_examples[_half(pick_examples) :]), *live], record)


def _half(examples: Sequence[Example]) -> int:
    return _half_of(len(examples))


def _half_of(n: int) -> int:
    return math.ceil(n / 2)


async def _stage(
    loop: SearchLoop,
    stage: int,
    plans: Sequence[tuple[dict[str, int], Sequence[Example]]],
    record: Callable[[FullEval], Awaitable[None]],
) -> list[FullEval]:
    plans = [(choice, examples) for choice, examples in plans if examples]
    loop.admit_step(
        "confirming the pick on training examples",
        [(CONFIRMATION_KIND, _key(choice, stage), len(examples)) for choice, examples in plans],
    )
    steps = [partial(_journaled, loop, choice, stage, examples) for choice, examples in plans]
    return await at_once_in_order(steps, record)


async def _journaled(
    loop: SearchLoop, choice: dict[str, int], stage: int, examples: Sequence[Example]
) -> FullEval:
    record = await loop.memo(
        CONFIRMATION_KIND,
        _key(choice, stage),
        partial(_run, loop, choice, examples),
        full_eval_to_json,
        full_eval_from_json,
    )
    ran = set(record.scores) | set(record.lm_failures)
    if not ran <= {e.id for e in examples} or len(record.scores) + record.n_unscored != len(examples):
        raise JournalError(
            f"the journal's confirmation of {describe_choice(choice)} ran other training examples than "
            "this run would: the run_dir belongs to a different run; pass resume=False to start over"
        )
    return record


def confirmation_note(
    confirmations: Sequence[FullEval],
    chosen: Choice,
    scores_of: Callable[[Choice], Mapping[str, float]],
) -> str:
    """How the confirmation decided: the returned program against the pick it replaced, or, when the
    pick held, against its strongest challenger (the first contenders are the pick before, then its
    challengers), counted on the validation and training examples both were scored on."""
    before = confirmations[0].choice
    training = {eid for record in confirmations for eid in record.scores}
    if choice_key(chosen) != choice_key(before):
        other, verdict = before, f"it replaced {describe_choice(before)} (the pick on the validation set)"
    elif len(confirmations) > 1:
        other, verdict = confirmations[1].choice, "no challenger's lead held there"
    else:  # stopped before a challenger ran
        return f"the confirmation on training examples stopped after {describe_choice(before)} ran"
    mine, theirs = scores_of(chosen), scores_of(other)
    shared = mine.keys() & theirs.keys()
    higher = sum(mine[k] > theirs[k] for k in shared)
    lower = sum(mine[k] < theirs[k] for k in shared)
    n_train = len(shared & training)
    against = "" if other == before else f" (against {describe_choice(other)})"
    return (
        f"confirmed on {n_train} training examples neither program shows as a demo: {verdict}; on those "
        f"and {len(shared) - n_train} validation examples it scored higher on {higher}, lower on "
        f"{lower}{against}"
    )


def _key(choice: Choice, stage: int) -> str:
    return json.dumps([sorted(choice.items()), stage])


async def _run(loop: SearchLoop, choice: Mapping[str, int], examples: Sequence[Example]) -> FullEval:
    evaluation = await loop.outage.evaluate(
        partial(loop.evaluate_choice, choice), examples, "confirming the pick on training examples"
    )
    return full_eval_of(choice, evaluation.scores, evaluation, len(loop.trials))
