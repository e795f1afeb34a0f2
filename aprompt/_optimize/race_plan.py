"""Planning a race's rungs: the validation set's shared race order, the rung sizes, a trial's first stage,
and how many racers an allowance of program runs pays for (see :mod:`aprompt._optimize.racing`)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from aprompt._optimize.examples import Example
from aprompt._optimize.paired_evidence import MIN_SHARED

if TYPE_CHECKING:
    from aprompt._optimize.search import SearchLoop

#: The rungs of a race before the whole validation set, as shares of it.
RUNG_SHARES = (0.25, 0.5)
#: The most combinations that enter one race.
MAX_ENTRANTS = 8
#: The fewest racers a periodic race is run with, where its allowance can wait (see
#: :mod:`aprompt._optimize.racing`).
MIN_PERIODIC_RACERS = 2
#: The share of a mini-batch run before a trial may stop early.
FIRST_STAGE_SHARE = 0.4


def race_order(valset: Sequence[Example], seed: int) -> list[Example]:
    """The validation set in the seeded order all races share (a rung is a prefix of it)."""
    return random.Random(f"{seed}:race").sample(list(valset), len(valset))


def rung_sizes(n: int) -> list[int]:
    """Examples in each rung, strictly growing, the last the whole validation set of ``n``."""
    return sorted({max(1, math.ceil(share * n)) for share in RUNG_SHARES if share * n < n} | {n})


def first_stage_size(batch_size: int) -> int | None:
    """Examples of a trial's first stage, or ``None`` when the mini-batch is too small to stop early on
    (a first stage below 10 examples could never be clearly losing)."""
    first = math.ceil(FIRST_STAGE_SHARE * batch_size)
    return first if MIN_SHARED <= first < batch_size else None


def affordable(increments: Sequence[Sequence[int]], allowance: int) -> int:
    """How many racers, in order, the current rung can take.

    ``increments`` holds per racer the program runs each remaining rung (the current one first) would
    cost it. Taking ``m`` racers plans successive halving: ``m`` in this rung, then half as many (rounded
    up) in each next one and one in the last, each rung paying for its most expensive racers; the most
    racers whose plan the allowance pays for. So whichever racers survive, one can still be completed.
    """
    taken = 0
    for m in range(1, len(increments) + 1):
        n_rungs = len(increments[0])
        cost = 0
        for j in range(n_rungs):
            k = 1 if j == n_rungs - 1 and j > 0 else math.ceil(m / 2**j)
            cost += sum(sorted((inc[j] for inc in increments[:m]), reverse=True)[:k])
        if cost > allowance:
            break
        taken = m
    return taken


def rung_increments(
    order: Sequence[Example], sizes: Sequence[int], rung: int, known: Mapping[str, float]
) -> list[int]:
    """The program runs each rung from ``rung`` on (the last: the full evaluation) costs a racer whose
    scores are ``known``: the examples of its part of the race ``order`` it lacks."""
    bounds = zip([0, *sizes[rung:-1]], sizes[rung:], strict=True)
    return [sum([e.id not in known for e in order[low:high]]) for low, high in bounds]


def racers_affordable(loop: SearchLoop, entrants: Sequence[Mapping[str, int]], allowance: int) -> int:
    """How many of ``entrants`` (most promising first) a race within ``allowance`` program runs would
    take into its first rung (:func:`affordable`)."""
    order = race_order(loop.valset, loop.seed)
    sizes = rung_sizes(len(loop.valset))
    increments = [rung_increments(order, sizes, 0, loop.scores_of(c)) for c in entrants[:MAX_ENTRANTS]]
    return affordable(increments, allowance) if increments else 0
