"""Confirming an undecided final pick on training examples that the compared programs do not show as demos.

The final pick (:mod:`aprompt._optimize.final_pick`) compares programs on the validation set at a level
adjusted for every fully evaluated combination, so on a small validation set a real lead can stay below
it: 6 wins and no loss of 30 does not clear a bound adjusted nine ways. When the search ends with the pick
undecided — a fully evaluated *challenger* scored above the pick on their shared examples without the
evidence to replace it — the pick and its most promising fully evaluated challengers (at most
``MAX_CHALLENGERS``) are each run on training examples that are not in the validation set and that the
program does not show as a demo: a seeded order of them, at most as many as the validation set has. The
scores join the evidence by example id, and the pick is decided again, at the same level, on the larger
set of examples each pair shares.

Why the examples are fair to both sides: a program's own demos are the examples it has seen (a
bootstrapped demo is a run it passed), so they are left out of its runs and so out of every comparison it
is in; the other training examples are as new to it as the validation set. Each pair is compared on the
validation set plus the training examples neither shows, a set fixed by the pair, so choosing the
contenders by their validation scores does not bias the comparison, and the level stays adjusted for all
the fully evaluated combinations.

Each contender's runs are admitted by the run's limits and journaled (``"confirmation"``), and a resumed
run checks that it would run the same examples.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

from aprompt._errors import JournalError
from aprompt._optimize.candidates import Candidates, Choice, choice_key
from aprompt._optimize.concurrent_steps import at_once_in_order
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import FinalPick, describe_choice
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


def contenders(current: FinalPick, fully_evaluated: set[tuple[tuple[str, int], ...]]) -> list[dict[str, int]]:
    """The pick, then its most promising fully evaluated challengers; empty when none is undecided."""
    challengers = [dict(c) for c in current.challengers if choice_key(c) in fully_evaluated]
    if not challengers:
        return []
    return [dict(current.choice), *challengers[:MAX_CHALLENGERS]]


def shown_as_demos(candidates: Candidates, choice: Choice) -> set[str]:
    """Ids of the training examples ``choice``'s prompts show as demos (any predictor)."""
    shown: set[str] = set()
    for name in candidates.predictors:
        demo_set = candidates.demo_sets[name][choice.get(f"{name}.demos", 0)]
        shown.update(demo_set.source_ids)
    return shown


def fresh_examples(
    trainset: Sequence[Example],
    valset: Sequence[Example],
    shown: set[str],
    seed: int,
) -> list[Example]:
    """The training examples a contender runs: not in ``valset``, not ``shown`` as its demos, in a seeded
    order that is the same for every contender (so two contenders share all the examples neither shows),
    at most ``len(valset)`` of them."""
    val_ids = {e.id for e in valset}
    order = [e for e in trainset if e.id not in val_ids]
    random.Random(f"{seed}:confirmation").shuffle(order)
    return [e for e in order if e.id not in shown][: len(valset)]


async def confirm(loop: SearchLoop, current: FinalPick) -> list[FullEval]:
    """Run ``current``'s contenders on their fresh training examples; returns their records (journaled,
    not recorded), or nothing when the pick is not undecided or no training example is fresh.

    Raises:
        LimitReached: the run's limits cannot pay for a contender's runs (those admitted before it are
            not run either: the pick stays the one decided on the validation set).
    """
    choices = contenders(current, loop.tested)
    plans = []
    for choice in choices:
        examples = fresh_examples(
            loop.confirmation, loop.valset, shown_as_demos(loop.candidates, choice), loop.seed
        )
        if examples:
            plans.append((choice, examples))
    if len(plans) < 2 or choice_key(plans[0][0]) != choice_key(current.choice):
        return []  # nothing to compare the pick with on fresh examples
    loop.admit_step(
        "confirming the pick on training examples",
        [(CONFIRMATION_KIND, _key(choice), len(examples)) for choice, examples in plans],
    )
    steps = [partial(_journaled, loop, choice, examples) for choice, examples in plans]
    return await at_once_in_order(steps, _nothing)


async def _nothing(record: FullEval) -> None:
    return None


async def _journaled(loop: SearchLoop, choice: dict[str, int], examples: Sequence[Example]) -> FullEval:
    record = await loop.memo(
        CONFIRMATION_KIND,
        _key(choice),
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
    else:
        other, verdict = confirmations[1].choice, "no challenger's lead held there"
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


def _key(choice: Choice) -> str:
    return json.dumps(sorted(choice.items()))


async def _run(loop: SearchLoop, choice: Mapping[str, int], examples: Sequence[Example]) -> FullEval:
    evaluation = await loop.outage.evaluate(
        partial(loop.evaluate_choice, choice), examples, "confirming the pick on training examples"
    )
    return full_eval_of(choice, evaluation.scores, evaluation, len(loop.trials))
