"""Which untested combinations a search evaluates next: ranked by the pooled model of the trials and race
rungs (:mod:`aprompt._optimize.pooling`) for its periodic and final evaluations and races, or drawn from
it when every combination the evidence ranks is settled (``SearchLoop.ranked_untested``,
``SearchLoop.drawn_untested``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aprompt._optimize.final_pick import Key, key_of, mean_of
from aprompt._optimize.pooling import RACE_OPTIMISM, ScorePool, ranked_combinations, thompson_choice

#: Seeds the draws of a race's entrants apart from the trials' (``[seed, race, number, stream]``).
RACE_DRAW_STREAM = 2
#: Draws per entrant wanted before :func:`drawn_untested` settles for fewer distinct ones.
DRAW_ATTEMPTS = 4

#: Scored trials and race rungs as the pooled model takes them: (choice, mean, examples).
Observations = Sequence[tuple[Mapping[str, int], float, int]]


def ranked_untested(
    pool: ScorePool,
    observations: Observations,
    space: Mapping[str, int],
    excluded: set[Key],
    limit: int,
    *,
    pooled: bool,
) -> list[dict[str, int]]:
    """Up to ``limit`` combinations of ``space`` (choices per parameter) not in ``excluded``, best pooled
    estimate first, then by an optimistic bound (``RACE_OPTIMISM``: a choice with few trials gets a race);
    without ``pooled``, by the own mean of each combination in ``pool``."""
    if not pooled:
        return pool.ranked_untested(excluded, limit)
    own = {key: (mean_of(s), len(s)) for key, s in pool.scores.items() if s}
    return ranked_combinations(observations, own, space, excluded, limit, optimism=RACE_OPTIMISM)


def drawn_untested(
    observations: Observations, space: Mapping[str, int], avoid: set[Key], limit: int, *, seed: int, race: int
) -> list[dict[str, int]]:
    """Up to ``limit`` distinct combinations of ``space`` not in ``avoid``, each a Thompson draw from the
    pooled model (:func:`~aprompt._optimize.pooling.thompson_choice`, seeded by ``seed``, ``race`` and the
    draw's number); empty before any observation."""
    if not observations:
        return []
    avoid = set(avoid)
    drawn: list[dict[str, int]] = []
    for number in range(DRAW_ATTEMPTS * limit):
        if len(drawn) >= limit:
            break
        choice = thompson_choice(observations, space, (seed, race, number, RACE_DRAW_STREAM), avoid)
        if choice is not None and key_of(choice) not in avoid:
            avoid.add(key_of(choice))
            drawn.append(choice)
    return drawn
