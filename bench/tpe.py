"""Benchmark of aprompt's TPE: the cost of one ask + tell, and how good the points it finds are.

    python bench/tpe.py            # full run (under a minute); writes bench/results/tpe.md
    python bench/tpe.py --quick    # a few seconds; prints only, unless --out is given

Search quality is measured on the synthetic problems of ``tests/tpe/test_search_quality.py``: 4 parameters
of 12 choices with a known true score per point in [0.2, 0.8], observed with Gaussian noise of sd 0.08
(a 35-example mini-batch). Regret after n trials = best true score - best true score among the points
evaluated, averaged over seeds. Two tables: the curve of one 100-trial run per seed
(``n_trials_hint=100``), and the regret at the end of runs planned for exactly n trials
(``n_trials_hint=n``; only our TPE's start-up depends on the hint). Optuna's ``TPESampler(multivariate=True)``
joins the comparison when ``import optuna`` works; it is not a dependency of aprompt.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aprompt.tpe import (
    Categorical,
    Distribution,
    FloatRange,
    IntRange,
    TPESampler,
    TrialRecord,
)

N_PARAMS, N_CHOICES, NOISE_SD = 4, 12, 0.08
CHECKPOINTS = (10, 20, 40, 60, 100)
RESULTS = Path(__file__).parent / "results" / "tpe.md"

Params = dict[str, int]
Ask = Callable[[], tuple[object, Params]]
Tell = Callable[[object, float], None]
Factory = Callable[[int, int], tuple[Ask, Tell]]  # (seed, n_trials_hint) -> ask, tell


def true_scores(kind: str, seed: int) -> npt.NDArray[np.float64]:
    """The problems of tests/tpe/test_search_quality.py: additive effects, plus pair effects on
    parameters (0, 1) and (2, 3) for ``pairwise``; rescaled to [0.2, 0.8]."""
    rng = np.random.default_rng([2024, seed, kind == "pairwise"])
    axes = np.meshgrid(*[np.arange(N_CHOICES)] * N_PARAMS, indexing="ij")
    total = np.zeros((N_CHOICES,) * N_PARAMS)
    for d in range(N_PARAMS):
        total += rng.random(N_CHOICES)[axes[d]]
    if kind == "pairwise":
        for a, b in [(0, 1), (2, 3)]:
            total += rng.random((N_CHOICES, N_CHOICES))[axes[a], axes[b]]
    scaled: npt.NDArray[np.float64] = 0.2 + 0.6 * (total - total.min()) / (total.max() - total.min())
    return scaled


def categorical_space() -> dict[str, Distribution]:
    return {f"p{d}": Categorical(N_CHOICES) for d in range(N_PARAMS)}


def ours(seed: int, hint: int) -> tuple[Ask, Tell]:
    sampler = TPESampler(categorical_space(), seed=seed, n_trials_hint=hint)

    def ask() -> tuple[object, Params]:
        s = sampler.ask()
        return s.number, {k: int(v) for k, v in s.params.items()}

    def tell(number: object, value: float) -> None:
        assert isinstance(number, int)
        sampler.tell(number, value)

    return ask, tell


def random_search(seed: int, hint: int) -> tuple[Ask, Tell]:
    rng = np.random.default_rng([seed, 31337])

    def ask() -> tuple[object, Params]:
        return None, {f"p{d}": int(rng.integers(N_CHOICES)) for d in range(N_PARAMS)}

    return ask, lambda trial, value: None


def import_optuna() -> Any | None:
    """Optuna if it is installed (bench-only, never a dependency of aprompt), else ``None``."""
    try:
        optuna = importlib.import_module("optuna")
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def optuna_factory(optuna: Any) -> Factory:

    def make(seed: int, hint: int) -> tuple[Ask, Tell]:
        sampler = optuna.samplers.TPESampler(multivariate=True, seed=seed)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        choices = list(range(N_CHOICES))

        def ask() -> tuple[object, Params]:
            trial = study.ask()
            return trial, {f"p{d}": trial.suggest_categorical(f"p{d}", choices) for d in range(N_PARAMS)}

        return ask, lambda trial, value: study.tell(trial, value)

    return make


def regret_curve(make: Factory, kind: str, seed: int, n_trials: int, hint: int) -> list[float]:
    scores = true_scores(kind, seed)
    ask, tell = make(seed, hint)
    noise = np.random.default_rng([7, seed])
    best, curve = 0.0, []
    for _ in range(n_trials):
        trial, params = ask()
        true = float(scores[tuple(params[f"p{d}"] for d in range(N_PARAMS))])
        best = max(best, true)
        tell(trial, float(np.clip(true + noise.normal(0.0, NOISE_SD), 0.0, 1.0)))
        curve.append(float(scores.max()) - best)
    return curve


class Report:
    """Lines printed as they are produced and kept for the results file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)


def table_head(first: str, columns: list[str]) -> list[str]:
    return [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]


def quality_tables(
    report: Report, samplers: dict[str, Factory], seeds: range, checkpoints: tuple[int, ...]
) -> None:
    n_max = max(checkpoints)
    report.add(
        f"### Mean regret over {len(seeds)} seeds, one {n_max}-trial run per seed (lower is better)", ""
    )
    report.add(*table_head("problem, sampler", [f"@{n}" for n in checkpoints]))
    for kind in ("additive", "pairwise"):
        for name, make in samplers.items():
            curves = np.array([regret_curve(make, kind, s, n_max, n_max) for s in seeds])
            cells = " | ".join(f"{curves[:, n - 1].mean():.3f}" for n in checkpoints)
            report.add(f"| {kind}, {name} | {cells} |")
    report.add(
        "",
        f"### Mean regret at the end of runs planned for n trials (`n_trials_hint=n`), {len(seeds)} seeds",
        "",
    )
    report.add(*table_head("problem, sampler", [f"n={n}" for n in checkpoints]))
    for kind in ("additive", "pairwise"):
        finals = [np.mean([regret_curve(ours, kind, s, n, n)[-1] for s in seeds]) for n in checkpoints]
        report.add(f"| {kind}, aprompt TPE | " + " | ".join(f"{f:.3f}" for f in finals) + " |")
    report.add("", "Only aprompt's start-up uses the hint; the other samplers' figures are those above.")


def mixed_space() -> dict[str, Distribution]:
    return categorical_space() | {
        "k": IntRange(0, 16),
        "temperature": FloatRange(0.0, 1.5),
        "lr": FloatRange(1e-5, 1e-1, log=True),
    }


def random_history(space: dict[str, Distribution], n: int, seed: int) -> list[TrialRecord]:
    sampler = TPESampler(space, seed=seed, n_startup=n)  # start-up only: uniform points
    rng = np.random.default_rng(seed)
    for _ in range(n):
        sampler.tell(sampler.ask(), float(rng.random()))
    return list(sampler.trials)


def time_per_trial(space: dict[str, Distribution], n_observed: int, repeats: int) -> float:
    """Median seconds of one ask + tell with ``n_observed`` complete trials in the model."""
    sampler = TPESampler.from_history(space, random_history(space, n_observed, 0), seed=1, n_startup=0)
    rng = np.random.default_rng(1)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        suggestion = sampler.ask()
        sampler.tell(suggestion, float(rng.random()))
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def optuna_time_per_trial(optuna: Any, n_observed: int, repeats: int) -> float:

    choices = list(range(N_CHOICES))
    dists = {f"p{d}": optuna.distributions.CategoricalDistribution(choices) for d in range(N_PARAMS)}
    rng = np.random.default_rng(0)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(multivariate=True, seed=1)
    )
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={k: int(rng.integers(N_CHOICES)) for k in dists},
                distributions=dists,
                value=float(rng.random()),
            )
            for _ in range(n_observed)
        ]
    )
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        trial = study.ask(dists)
        study.tell(trial, float(rng.random()))
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def timing_table(report: Report, sizes: tuple[int, ...], repeats: int, optuna: Any | None) -> None:
    with_optuna = optuna is not None
    optuna_repeats = max(3, repeats // 5)
    of_optuna = f"; Optuna: of {optuna_repeats}" if with_optuna else ""
    report.add(f"### Time of one ask + tell (median of {repeats}{of_optuna})", "")
    columns = ["4 x Categorical(12)", "4 x Categorical(12) + IntRange + FloatRange + log FloatRange"]
    report.add(
        *table_head("observed trials", columns + (["Optuna, 4 x Categorical(12)"] if with_optuna else []))
    )
    for n in sizes:
        cat = time_per_trial(categorical_space(), n, repeats)
        mixed = time_per_trial(mixed_space(), n, repeats)
        row = f"| {n:,} | {cat * 1e3:.2f} ms | {mixed * 1e3:.2f} ms |"
        if with_optuna:
            row += f" {optuna_time_per_trial(optuna, n, optuna_repeats) * 1e3:.0f} ms |"
        report.add(row)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds; no Optuna")
    parser.add_argument("--out", type=Path, default=None, help=f"markdown file (full run default: {RESULTS})")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None or args.quick else RESULTS

    report = Report()
    command = " ".join(shlex.quote(a) for a in ["python", "bench/tpe.py", *sys.argv[1:]])
    report.add("# TPE benchmark", "", f"Command: `{command}`", "")
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}"
    report.add(f"Python {platform.python_version()}, numpy {np.__version__}, {machine}.")
    optuna = None if args.quick else import_optuna()
    if optuna is not None:
        report.add(
            f"Optuna {optuna.__version__}: included, TPESampler(multivariate=True) with its default "
            "10 start-up trials.",
            "",
        )
    else:
        why = "--quick" if args.quick else "`import optuna` failed; it is optional and bench-only"
        report.add(f"Optuna: skipped ({why}).", "")

    sizes: tuple[int, ...]
    checkpoints: tuple[int, ...]
    if args.quick:
        sizes, repeats, seeds, checkpoints = (100, 1000), 3, range(2), (10, 20)
    else:
        sizes, repeats, seeds, checkpoints = (100, 1000, 5000), 25, range(20), CHECKPOINTS
    timing_table(report, sizes, repeats, optuna)
    samplers: dict[str, Factory] = {"aprompt TPE": ours, "random search": random_search}
    if optuna is not None:
        samplers["Optuna TPE"] = optuna_factory(optuna)
    report.add("")
    quality_tables(report, samplers, seeds, checkpoints)

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(report.lines) + "\n")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
