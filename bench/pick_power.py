"""Benchmark of the final pick with and without confirmation on training examples: how often it replaces
the program as written by luck (a null world), and how often it finds a better program (power).

    .venv/bin/python -m bench.pick_power           # 2,000 runs per row (about a minute); writes
                                                   # bench/results/pick_power.md
    .venv/bin/python -m bench.pick_power --runs 200 --out -   # quick; prints only

Each simulated run has the baseline and ``k`` fully evaluated combinations, each right on an example with
its own probability, scored on ``n_val`` validation examples; the pick is
:func:`aprompt._optimize.final_pick.pick`.
With confirmation, an undecided pick is confirmed as :mod:`aprompt._optimize.confirmation` does it: the pick
and its strongest fully evaluated challengers (:func:`~aprompt._optimize.confirmation.contenders`) are scored
on the first half of ``n_train`` fresh training examples; a challenger not ahead of the pick there, or that
could not become better by winning the rest, stops; the others and the pick are scored on the second half;
then the pick is decided again. Every number comes from these functions of aprompt on simulated scores (no
LM): what a confirmation with the true search's records would decide, where the search's combinations are as
good as the rows say.

- **null**: every combination as good as the baseline; a returned combination other than the baseline is a
  false replacement (the design bound is 5 %, Bonferroni-adjusted over the ``k`` combinations).
- **one better**: one combination better than all the others by ``gain``; the share of runs that return it.

The ``reference`` column says whether one of the ``k`` combinations is the hand-written reference, tested
before the others at its own share of the level (:func:`aprompt._optimize.paired_evidence.pick_levels`):
``better`` when the better combination is the reference, ``other`` when a combination as good as the
baseline is (and the better one is searched), ``-`` when there is none.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from aprompt._optimize.confirmation import contenders
from aprompt._optimize.final_pick import Evidence, FinalPick, key_of, pick
from aprompt._optimize.paired_evidence import (
    MIN_SHARED,
    could_become_better,
    loosest_level,
    paired_difference,
)

RESULTS = Path(__file__).parent / "results" / "pick_power.md"
#: (k fully evaluated combinations, baseline accuracy, gain of the one better combination or 0 for null,
#: which combination is the hand-written reference: "better", "other" or "-" for none)
ROWS: tuple[tuple[int, float, float, str], ...] = (
    (3, 0.2, 0.0, "-"),
    (9, 0.2, 0.0, "-"),
    (20, 0.2, 0.0, "-"),
    (9, 0.5, 0.0, "-"),
    (20, 0.5, 0.0, "-"),
    (3, 0.2, 0.0, "other"),
    (9, 0.2, 0.0, "other"),
    (9, 0.5, 0.0, "other"),
    (9, 0.05, 0.2, "-"),
    (20, 0.05, 0.2, "-"),
    (9, 0.3, 0.2, "-"),
    (20, 0.3, 0.2, "-"),
    (9, 0.3, 0.1, "-"),
    (9, 0.05, 0.2, "better"),
    (9, 0.3, 0.2, "better"),
    (9, 0.05, 0.2, "other"),
    (9, 0.3, 0.2, "other"),
)


class SimulatedRun:
    """One run's scores: combination ``j`` is right on each example with probability ``accuracy[j]``."""

    def __init__(
        self,
        rng: np.random.Generator,
        accuracy: Sequence[float],
        n_val: int,
        n_train: int,
        references: Sequence[int] = (),
    ) -> None:
        self.accuracy = accuracy
        self.choices = [{"x": j} for j in range(len(accuracy))]
        self.references = [self.choices[j] for j in references]
        self.val = [f"v{i}" for i in range(n_val)]
        self.train = [f"t{i}" for i in range(n_train)]
        # Every outcome drawn up front, so a combination's score on an example is the same whenever read.
        self.outcomes = rng.random((len(accuracy), n_val + n_train)) < np.asarray(accuracy)[:, None]
        self.scored: dict[int, dict[str, float]] = {
            j: self._scores(j, self.val) for j in range(len(accuracy))
        }

    def _scores(self, j: int, ids: Sequence[str]) -> dict[str, float]:
        offset = {f"v{i}": i for i in range(len(self.val))} | {
            f"t{i}": len(self.val) + i for i in range(len(self.train))
        }
        return {i: float(self.outcomes[j, offset[i]]) for i in ids}

    def decide(self) -> FinalPick:
        evidence = [
            Evidence(self.choices[j], s, sum(s.values()) / len(s), True) for j, s in self.scored.items()
        ]
        return pick(
            evidence,
            self.choices[0],
            min_shared=min(MIN_SHARED, len(self.val)),
            references=self.references,
        )

    def run_on(self, choice: Mapping[str, int], ids: Sequence[str]) -> dict[str, float]:
        scores = self._scores(choice["x"], ids)
        self.scored[choice["x"]].update(scores)
        return scores


def confirmed(run: SimulatedRun) -> FinalPick:
    """The pick after confirmation, in the two halves of :func:`aprompt._optimize.confirmation.confirm`."""
    current = run.decide()
    chosen = contenders(current, {key_of(c) for c in run.choices}, run.references)
    if len(chosen) < 2:
        return current
    half = math.ceil(len(run.train) / 2)
    first, rest = run.train[:half], run.train[half:]
    mine = run.run_on(chosen[0], first)
    level = loosest_level(len(run.references), len(run.choices) - 1 - len(run.references))
    live = []
    for challenger in chosen[1:]:
        theirs = run.run_on(challenger, first)
        ahead = paired_difference(theirs, mine).mean > 0.0
        optimistic = could_become_better(
            run.scored[challenger["x"]], run.scored[chosen[0]["x"]], len(rest), level, MIN_SHARED
        )
        if rest and ahead and optimistic:
            live.append(challenger)
    if live:
        for choice in (chosen[0], *live):
            run.run_on(choice, rest)
    return run.decide()


def share(
    k: int,
    base: float,
    gain: float,
    runs: int,
    confirm: bool,
    n_val: int,
    n_train: int,
    reference: str = "-",
) -> float:
    """Null (``gain`` 0): the share of runs returning any combination but the baseline; else the share
    returning the better one (index 1). ``reference``: which combination is the hand-written reference
    (``"better"``: index 1; ``"other"``: index 2, as good as the baseline; ``"-"``: none)."""
    rng = np.random.default_rng([k, int(base * 1000), int(gain * 1000)])
    references = {"better": (1,), "other": (2,), "-": ()}[reference]
    hits = 0
    for _ in range(runs):
        accuracy = [base] + [base + gain] + [base] * (k - 1)
        run = SimulatedRun(rng, accuracy, n_val, n_train, references)
        returned = (confirmed(run) if confirm else run.decide()).choice["x"]
        hits += returned != 0 if gain == 0.0 else returned == 1
    return hits / runs


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--val", type=int, default=30, help="validation examples")
    parser.add_argument("--train", type=int, default=26, help="fresh training examples per contender")
    parser.add_argument("--out", default=str(RESULTS), help="where to write the table ('-': print only)")
    args = parser.parse_args(argv)
    given = shlex.join(sys.argv[1:] if argv is None else argv)
    command = f".venv/bin/python -m bench.pick_power {given}".rstrip()
    lines = [
        "# Final pick with and without confirmation on training examples (simulated scores)",
        "",
        f"command: `{command}`",
        "",
        f"{args.runs} runs per row; {args.val} validation examples; {args.train} fresh training examples per "
        "contender, in two halves (as `aprompt/_optimize/confirmation.py` runs them); k fully evaluated "
        f"combinations besides the baseline. Python {platform.python_version()}.",
        "",
        "| world | k | reference | baseline accuracy | gain | without confirmation | with confirmation |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for k, base, gain, reference in ROWS:
        off = share(k, base, gain, args.runs, False, args.val, args.train, reference)
        on = share(k, base, gain, args.runs, True, args.val, args.train, reference)
        world = "null: replaced by luck" if gain == 0.0 else "one better: returned"
        lines.append(f"| {world} | {k} | {reference} | {base:.2f} | {gain:+.2f} | {off:.1%} | {on:.1%} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return text


if __name__ == "__main__":
    main()
