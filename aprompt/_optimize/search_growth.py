"""Growing a running search's space: a candidate instruction added mid-run (``SearchLoop.add_instruction``),
the TPE rebuilt over the grown space from its own history, choices named by every searched parameter, and
what a copy of the search (``SearchLoop.fork``) added, joined back in its order (``SearchLoop.merge``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import attrs

from aprompt._optimize.candidates import Candidates
from aprompt.tpe import Categorical, TPESampler


@attrs.frozen
class Origin:
    """Where ``SearchLoop.fork`` made a copy: the search's records and candidates then."""

    full_evals: int
    rungs: int
    spent: int
    candidates: Candidates


def with_instruction(
    candidates: Candidates, name: str, instruction: str, seen: Iterable[str] = ()
) -> tuple[Candidates, int]:
    """``candidates`` with ``instruction`` added for predictor ``name`` (written from the training examples
    ``seen``, ``Candidates.seen``), and its index."""
    instructions = {k: tuple(v) for k, v in candidates.instructions.items()}
    instructions[name] = (*instructions[name], instruction)
    index = len(instructions[name]) - 1
    written_from = dict(candidates.seen)
    if seen := frozenset(seen):
        written_from[(name, index)] = seen
    return attrs.evolve(candidates, instructions=instructions, seen=written_from), index


def regrown(sampler: TPESampler, space: dict[str, Categorical], *, seed: int, n_trials: int) -> TPESampler:
    """``sampler`` rebuilt over the grown ``space`` from its own history, so earlier trials keep their
    weight and the suggestions stay a function of the seed and the trials; a trial recorded before a
    parameter was searched chose index 0."""
    history = [
        attrs.evolve(record, params={key: record.params.get(key, 0) for key in space})
        for record in sampler.trials
    ]
    return TPESampler.from_history(space, history, seed=seed, n_trials_hint=n_trials)


def named(choice: Mapping[str, int], names: Iterable[str]) -> Mapping[str, int]:
    """``choice`` naming every parameter of ``names``, those it leaves out at index 0 (itself when it names
    them all)."""
    names = list(names)
    if all(name in choice for name in names):
        return choice
    return {**dict.fromkeys(names, 0), **choice}


def added_instructions(origin: Candidates, grown: Candidates) -> Iterator[tuple[str, str, frozenset[str]]]:
    """The instructions ``grown`` has beyond ``origin`` (the candidates a copy of the search started
    from), in the order they were added per predictor: ``(predictor, instruction, seen)``."""
    for name, texts in grown.instructions.items():
        start = len(origin.instructions[name])
        for index, text in enumerate(texts[start:], start=start):
            yield name, text, frozenset(grown.seen.get((name, index), ()))
