"""How often the final pick replaces the baseline by luck when the combinations it weighs were chosen
by their validation scores (simulated scores, no LM).

    .venv/bin/python -m bench.pick_selection            # 2,000 runs per row (about a minute); writes
                                                        # bench/results/pick_selection.md
    .venv/bin/python -m bench.pick_selection --runs 200 --out -   # quick; prints only

The pick's level (:mod:`aprompt._optimize.final_pick`) bounds a false replacement of the baseline at 5 %
for the combinations it weighs. The search does not hand it arbitrary combinations: it fully evaluates
those whose trials (mini-batches of the same validation set) scored best, and the pick merges those trial
scores with the full evaluations. Here every combination is exactly as good as the baseline (each right on
an example with probability ``accuracy``, drawn once per combination and example, as a deterministic LM
answers), ``tried`` combinations get one trial each on a seeded mini-batch of ``batch`` validation
examples, the ``k`` best by trial mean are fully evaluated, and :func:`~aprompt._optimize.final_pick.pick`
decides on :func:`~aprompt._optimize.evidence_book.collect_evidence` of all of it. The control row picks the
``k`` at random instead: what the level is designed for. (The real search chooses its full evaluations
through races and the pooled model; this isolates the selection itself.)
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aprompt._optimize.evidence_book import collect_evidence
from aprompt._optimize.final_pick import key_of, pick

RESULTS = Path(__file__).parent / "results" / "pick_selection.md"
#: (combinations tried, mini-batch size, fully evaluated, validation examples, accuracy, selected by)
ROWS: tuple[tuple[int, int, int, int, float, str], ...] = (
    (20, 35, 1, 100, 0.6, "trial mean"),
    (20, 35, 3, 100, 0.6, "trial mean"),
    (20, 12, 3, 100, 0.6, "trial mean"),
    (60, 12, 3, 100, 0.6, "trial mean"),
    (20, 12, 3, 100, 0.2, "trial mean"),
    (20, 35, 3, 100, 0.6, "at random"),
    (20, 12, 3, 100, 0.6, "at random"),
)


def replaced(
    rng: np.random.Generator, tried: int, batch: int, k: int, n_val: int, accuracy: float, selection: str
) -> bool:
    """One simulated run: whether the pick returned a combination other than the baseline."""
    outcomes = (rng.random((tried + 1, n_val)) < accuracy).astype(float)
    ids = [f"v{i}" for i in range(n_val)]
    baseline = {"x": 0}
    evaluations: list[tuple[dict[str, int], dict[str, float], float | None]] = []
    trial_means = []
    for j in range(1, tried + 1):
        shown = rng.choice(n_val, size=batch, replace=False)
        scores = {ids[i]: outcomes[j, i] for i in shown}
        evaluations.append(({"x": j}, scores, float(np.mean(list(scores.values())))))
        trial_means.append((-evaluations[-1][2], j))  # type: ignore[operator]
    if selection == "trial mean":
        chosen = [j for _, j in sorted(trial_means)[:k]]
    else:
        chosen = [int(j) for j in rng.choice(np.arange(1, tried + 1), size=k, replace=False)]
    full = {key_of(baseline)}
    for j in (0, *chosen):
        scores = {ids[i]: outcomes[j, i] for i in range(n_val)}
        evaluations.append(({"x": j}, scores, float(np.mean(outcomes[j]))))
        full.add(key_of({"x": j}))
    return not pick(collect_evidence(evaluations, full), baseline).kept_baseline


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--out", default=str(RESULTS), help="where to write the table ('-': print only)")
    args = parser.parse_args(argv)
    given = shlex.join(sys.argv[1:] if argv is None else argv)
    command = f".venv/bin/python -m bench.pick_selection {given}".rstrip()
    lines = [
        "# The final pick's false replacements when its combinations were chosen by validation scores",
        "",
        f"command: `{command}`",
        "",
        f"{args.runs} runs per row; every combination exactly as good as the baseline; the design bound "
        f"is 5 %. Python {platform.python_version()}.",
        "",
        "| tried | mini-batch | fully evaluated | validation examples | accuracy | chosen by "
        "| baseline replaced |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for tried, batch, k, n_val, accuracy, selection in ROWS:
        rng = np.random.default_rng([tried, batch, k, n_val, int(accuracy * 100), selection == "at random"])
        hits = sum(replaced(rng, tried, batch, k, n_val, accuracy, selection) for _ in range(args.runs))
        lines.append(
            f"| {tried} | {batch} | {k} | {n_val} | {accuracy:.1f} | {selection} | {hits / args.runs:.1%} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return text


if __name__ == "__main__":
    main()
