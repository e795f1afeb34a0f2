"""Client CPU per LM call of two trees, timed side by side: ``bench.throughput``'s aprompt run (one light
MIPRO optimization against the simulated endpoint) once per tree per round, the trees alternated, with
the machine's speed (``bench.report.python_reference_ms``) read before each round.

The same tree's CPU per call differs by a third between hours on a shared machine (1.02 ms at one hour,
1.40 ms at another, with the load average low at both), so a change is judged by the ratio within each
round, not by figures from different hours::

    PYTHONPATH=$PWD .venv/bin/python -m bench.cpu_side_by_side --baseline 4b2a9be --rounds 5

The baseline is a commit of this repository (``git archive`` into a temporary folder) or a folder holding
another tree (``--baseline-dir``); the candidate is this checkout, or ``--candidate-dir``. Each run is its
own process, started in its tree's folder with that folder on ``PYTHONPATH``. Prints each round and the
medians; writes nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs

from bench.report import python_reference_ms

ROOT = Path(__file__).resolve().parents[1]
_CPU = re.compile(r"\] aprompt, told the limits: .*client CPU ([0-9.]+) ms per call")


@attrs.frozen
class Round:
    """One round: the machine's speed, then each tree's CPU per call."""

    reference_ms: float
    baseline_ms: float
    candidate_ms: float

    @property
    def ratio(self) -> float:
        return self.candidate_ms / self.baseline_ms


def cpu_per_call(tree: Path, regime: str, quick: bool) -> float:
    """The client CPU per LM call ``bench.throughput`` reports for one aprompt run of ``tree``."""
    command = [sys.executable, "-m", "bench.throughput", "--systems", "aprompt", "--regimes", regime]
    with tempfile.TemporaryDirectory() as results:
        command += ["--quick"] if quick else ["--out-dir", results, "--name", "side_by_side"]
        done = subprocess.run(
            command,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
            check=False,
        )
    found = _CPU.findall(done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"bench.throughput in {tree} failed ({done.returncode}): {done.stderr[-2000:]}")
    return float(found[-1])


def checkout(commit: str, into: Path) -> Path:
    """The files of ``commit`` (its ``aprompt/`` and ``bench/``) written under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "aprompt", "bench"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def side_by_side(
    baseline: Path, candidate: Path, *, rounds: int, regime: str = "latency", quick: bool = False
) -> list[Round]:
    """``rounds`` rounds, each timing the baseline and then the candidate; printed as they come."""
    done: list[Round] = []
    for number in range(1, rounds + 1):
        reference = python_reference_ms()
        before = cpu_per_call(baseline, regime, quick)
        after = cpu_per_call(candidate, regime, quick)
        done.append(Round(reference, before, after))
        print(
            f"round {number}: fixed workload {reference:.2f} ms; baseline {before:.2f}, "
            f"candidate {after:.2f} ms per call; ratio {after / before:.2f}",
            flush=True,
        )
    return done


def summary(done: Sequence[Round]) -> str:
    """The medians of each tree and of the ratios, with the ratios' range."""
    ratios = [r.ratio for r in done]
    return (
        f"{len(done)} rounds: median CPU per call baseline "
        f"{statistics.median(r.baseline_ms for r in done):.3f} ms, candidate "
        f"{statistics.median(r.candidate_ms for r in done):.3f} ms; ratio median "
        f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}); fixed workload "
        f"{min(r.reference_ms for r in done):.2f}-{max(r.reference_ms for r in done):.2f} ms"
    )


def main(argv: Sequence[str] | None = None) -> list[Round]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cpu_side_by_side", description=__doc__.split("\n")[0]
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--baseline", help="a commit of this repository")
    which.add_argument(
        "--baseline-dir", type=Path, help="a folder holding the baseline's aprompt/ and bench/"
    )
    parser.add_argument("--candidate-dir", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--regime", choices=("rate", "latency", "tokens"), default="latency")
    parser.add_argument("--quick", action="store_true", help="tiny runs in seconds (their CPU is no figure)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        baseline = args.baseline_dir if args.baseline is None else checkout(args.baseline, Path(scratch))
        done = side_by_side(
            baseline.resolve(),
            args.candidate_dir.resolve(),
            rounds=args.rounds,
            regime=args.regime,
            quick=args.quick,
        )
    print(summary(done))
    return done


if __name__ == "__main__":
    main()
