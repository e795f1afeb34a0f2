"""Regret benchmark: how close the returned program comes to the best one, in a world with known truth.

The simulated world of ``tests/optimize/world.py`` (or ``--world no_gain``, where every proposal and demo set
makes the program worse, or ``--world equal``, where every combination is exactly as good as the
unoptimized program and only luck tells them apart): a two-stage program whose answers are right with a
probability set by the instruction and the demos in each stage's prompt (a hash of the prompt draws each
answer, so every run repeats exactly). Its true accuracy is known for every combination of candidates,
so for each run:

- **regret** = true accuracy of the best combination in the run's own grid (every instruction × demo set
  the run searched) − that of the returned program;
- **regret of the best evaluated** = the same for the best combination the run scored at all (a trial or a
  full evaluation);
- **regret of the best fully evaluated** = the same for the best combination with a full evaluation (only
  such a combination can be returned): what a perfect final pick would have reached, so regret minus this
  is the pick's share and this is the search's;
- **worse than the baseline**: the returned program's true accuracy is below the unoptimized program's;
- **replaced the baseline**: the run returned a program other than the unoptimized one (in ``--world
  equal`` every such run is a false replacement, which the final pick's level bounds at 5 %).
- **floors** (standard world only): the expected regret of two all-seeing picks that see every combination
  of the grid evaluated on the whole validation set (far more calls than any budget), one returning the
  highest mean, one each stage's choice of highest mean over the grid: what the validation set's size
  alone leaves (``validation_floors``). A budget's regret cannot be expected below them by picking on
  validation scores.

The world answers in-process (an LM object, no HTTP), so a run takes seconds. Runs use seeds 0..n−1,
training examples ``item-0 .. item-199`` and the preset's ``val_size`` validation examples after them.

``--systems aprompt,dspy`` also runs DSPy's MIPROv2 (``auto`` = the budget, seed = the run's seed, the same
examples) in an interpreter that has dspy (``--dspy-python``), against the same world answering DSPy's
prompt format over HTTP (``bench/dspy_world.py``, ``bench/regret_dspy.py``: its grid, evaluated programs
and returned program come from MIPROv2's own record), and prints both systems side by side. aprompt alone
is the default. DSPy's LM calls are counted at the server, after DSPy's own response cache (fresh for each
run); aprompt's are every call of its in-process LM, which has no cache. ``--dspy-no-cache`` counts DSPy's
calls the same way.

    .venv/bin/python -m bench.regret                  # 15 runs per budget (light, medium); writes
                                                      # bench/results/regret_latest.{md,json}
    .venv/bin/python -m bench.regret --runs 50        # more runs, tighter means
    .venv/bin/python -m bench.regret --world no_gain  # where nothing helps (tests/optimize/no_gain_world.py)
    .venv/bin/python -m bench.regret --world equal --budgets light --runs 400   # false replacements
    .venv/bin/python -m bench.regret --quick          # 2 tiny runs, seconds; prints only
    .venv/bin/python -m bench.regret --budgets light --max-lm-calls 1900   # under a limit below the plan
    .venv/bin/python -m bench.regret --budgets light --val-size 30 --max-lm-calls 1000
                                                      # a small validation set under a limit (a
                                                      # confirmation's runs kept, late races)
    .venv/bin/python -m bench.regret --seeds 0:100 --workers 2 --paired-with bench/results/other.json
                                                      # seeds 0..99 in 2 processes; the change against
                                                      # another run's json, paired by budget and seed
    .venv/bin/python -m bench.regret --seeds 0:10 --systems aprompt,dspy --dspy-python DSPY_VENV/bin/python
                                                      # aprompt and DSPy MIPROv2 on the same seeds
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import attrs
import numpy as np

import aprompt
from aprompt._optimize.candidates import Candidates
from aprompt.lm.types import Completion, Message, canonical_params
from aprompt.testing._wire import ChatRequest
from bench.regret_dspy import DEFAULT_THREADS, DSPyRun, one_dspy_run
from bench.report import (
    RESULTS_DIR,
    command_line,
    environment,
    environment_line,
    markdown_table,
    t_interval,
    write_json,
    write_text,
)
from tests.optimize.no_gain_world import EqualWorld, NoGainWorld
from tests.optimize.world import TwoStageProgram, World, demo_items_of, examples, metric, stage_probability

N_TRAIN = 200
#: A few trials on a small grid and valset: the shape of a run, in seconds.
QUICK_BUDGET: dict[str, Any] = {"n_candidates": 4, "val_size": 40, "n_trials": 6, "minibatch_size": 15}
BUDGETS = ("light", "medium")


class WorldLM:
    """The world as an in-process LM (the same replies as over HTTP: ``rollout`` is never sent)."""

    model = "world"
    capacity = 256  # as the HTTP client of tests/optimize/test_simulated_world.py

    def __init__(self, world: World) -> None:
        self.world = world
        self.calls = 0

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion:
        self.calls += 1
        request = ChatRequest(self.model, [dict(m) for m in messages], canonical_params(params), {})
        return Completion(self.world(request), model=self.model)


@attrs.frozen
class Run:
    """One optimization's outcome against the truth."""

    budget: str
    seed: int
    best_possible: float
    returned: float
    baseline: float
    best_evaluated: float
    lm_calls: int
    seconds: float
    pick: str | None  # the result's account of its final pick, where the result carries one
    #: Where the returned program misses the nearest best combination of the grid: per differing parameter,
    #: ``name: returned -> best (trials with the best's choice, their examples)``; "" when nothing is missed.
    missed: str = ""
    #: True accuracy of the best fully evaluated combination (``nan`` in runs recorded before it was kept).
    best_fully_evaluated: float = float("nan")
    #: The validation set's floors (see :func:`validation_floors`; ``nan`` for another world and in runs
    #: recorded before they were kept): the expected regret of returning the highest validation mean with
    #: every combination of the grid fully evaluated, and of returning each stage's choice of highest mean.
    floor_by_mean: float = float("nan")
    floor_by_stage: float = float("nan")

    @property
    def regret(self) -> float:
        return self.best_possible - self.returned

    @property
    def evaluated_regret(self) -> float:
        return self.best_possible - self.best_evaluated

    @property
    def fully_evaluated_regret(self) -> float:
        return self.best_possible - self.best_fully_evaluated

    @property
    def replaced_baseline(self) -> bool:
        """The run returned a program other than the unoptimized one (from its pick's account)."""
        return self.pick is not None and not self.pick.startswith("kept the unoptimized program")

    @property
    def worse_than_baseline(self) -> bool:
        return self.returned < self.baseline - 1e-12


def true_accuracy(candidates: Candidates, choice: Mapping[str, int], world: str = "world") -> float:
    prompts = candidates.prompts_for(dict(choice))
    if world in ("no_gain", "equal"):
        return WORLDS[world].accuracy(prompts)  # type: ignore[attr-defined, no-any-return]
    return World.expected_accuracy(
        {name: prompts[name].instruction for name in candidates.predictors},
        {name: demo_items_of([d.to_dict() for d in prompts[name].demos]) for name in candidates.predictors},
    )


def best_in_grid(candidates: Candidates, world: str = "world") -> float:
    space = candidates.parameters()
    names = list(space)
    return max(
        true_accuracy(candidates, dict(zip(names, combo, strict=True)), world)
        for combo in itertools.product(*(range(space[n].n_choices) for n in names))
    )


#: Monte Carlo draws of :func:`validation_floors` (their standard error is below 0.001 at this count).
FLOOR_DRAWS = 400


def validation_floors(
    candidates: Candidates, val_size: int, seed: int, world: str = "world", draws: int = FLOOR_DRAWS
) -> tuple[float, float]:
    """What the validation set alone allows: the expected regret of two all-seeing picks in ``world``.

    Both see every combination of the run's grid evaluated on all ``val_size`` validation examples, far
    more program runs than any budget pays. The first returns the combination of highest mean; the second
    each stage's choice whose mean over the whole grid is highest (it pools every combination sharing a
    choice, which the world's structure, one stage's accuracy times the other's, makes right in
    expectation). Neither can tell apart choices whose accuracies differ by less than the noise of
    ``val_size`` answers, which is what is left to them. The world's draws are reproduced in law: each
    stage prompt answers each example right with its probability (the world hashes the prompt), identical
    prompts alike, and the program is right when both stages are. ``nan`` outside the standard world.
    """
    if world != "world" or sorted(candidates.predictors) != ["answer", "extract"]:
        return float("nan"), float("nan")
    space = candidates.parameters()
    probability: dict[str, list[float]] = {}
    for stage in ("extract", "answer"):
        names = [name for name in space if name.startswith(f"{stage}.")]
        prompts: dict[tuple[object, ...], float] = {}
        for combo in itertools.product(*(range(space[name].n_choices) for name in names)):
            prompt = candidates.prompts_for(dict(zip(names, combo, strict=True)))[stage]
            demos = [d.to_dict() for d in prompt.demos]
            key = (prompt.instruction, repr(demos), prompt.reply_format)
            prompts.setdefault(key, stage_probability(stage, prompt.instruction, demo_items_of(demos)))
        probability[stage] = list(prompts.values())
    return floors_of(probability["extract"], probability["answer"], val_size, seed, draws)


def floors_of(
    first: Sequence[float], second: Sequence[float], val_size: int, seed: int, draws: int = FLOOR_DRAWS
) -> tuple[float, float]:
    """:func:`validation_floors` of a two-stage grid given each stage's distinct prompts' probabilities of
    a right answer (every pair of them is a combination, right when both stages are)."""
    extract, answer = np.array(first, dtype=float), np.array(second, dtype=float)
    truth = np.outer(extract, answer)
    best = float(truth.max())
    rng = np.random.default_rng(seed)
    by_mean, by_stage = [], []
    for _ in range(draws):
        right_x = (rng.random((val_size, extract.size)) < extract).astype(float)
        right_a = (rng.random((val_size, answer.size)) < answer).astype(float)
        means = right_x.T @ right_a / val_size
        # Ties go by a random order, not by the grid's.
        i, j = np.unravel_index(np.argmax(means + 1e-9 * rng.random(means.shape)), means.shape)
        by_mean.append(best - truth[i, j])
        rows, cols = means.mean(axis=1), means.mean(axis=0)
        row = int(np.argmax(rows + 1e-9 * rng.random(rows.shape)))
        col = int(np.argmax(cols + 1e-9 * rng.random(cols.shape)))
        by_stage.append(best - truth[row, col])
    return float(np.mean(by_mean)), float(np.mean(by_stage))


async def one_run(
    budget_name: str,
    budget: str | Mapping[str, Any],
    seed: int,
    world: str = "world",
    strategy: str = "mipro",
    max_lm_calls: int | None = None,
) -> Run:
    lm = WorldLM(WORLDS[world]())
    val_size = (
        budget.get("val_size", PRESET_VAL_SIZE[budget.get("preset", "light")])
        if isinstance(budget, Mapping)
        else PRESET_VAL_SIZE[budget]
    )
    started = time.monotonic()
    result = await aprompt.optimize(
        TwoStageProgram(),
        examples(0, N_TRAIN),
        metric,
        valset=examples(N_TRAIN, N_TRAIN + val_size),
        lm=lm,
        budget=budget,
        seed=seed,
        strategy=strategy,
        limits=aprompt.Limits(max_lm_calls=max_lm_calls) if max_lm_calls is not None else None,
    )
    seconds = time.monotonic() - started
    candidates = result.candidates
    evaluated = [t.choice for t in result.trials] + [f.choice for f in result.full_evals]
    pick = getattr(result, "pick", None)
    best_possible = best_in_grid(candidates, world)
    returned = true_accuracy(candidates, result.best_choice, world)
    floor_by_mean, floor_by_stage = validation_floors(candidates, val_size, seed, world)
    return Run(
        budget=budget_name,
        seed=seed,
        best_possible=best_possible,
        returned=returned,
        baseline=true_accuracy(candidates, candidates.baseline(), world),
        best_evaluated=max(true_accuracy(candidates, c, world) for c in evaluated),
        best_fully_evaluated=max(true_accuracy(candidates, f.choice, world) for f in result.full_evals),
        lm_calls=lm.calls,
        seconds=seconds,
        pick=None if pick is None else str(getattr(pick, "reason", pick)),
        missed=missed(candidates, result.best_choice, result.trials, best_possible, world)
        if returned < best_possible - 1e-12
        else "",
        floor_by_mean=floor_by_mean,
        floor_by_stage=floor_by_stage,
    )


def missed(
    candidates: Candidates,
    returned: Mapping[str, int],
    trials: Sequence[Any],
    best_possible: float,
    world: str = "world",
) -> str:
    """Which parameters of the returned choice differ from the nearest best combination of the grid, and
    how much trial evidence the best's choice of each had."""
    space = candidates.parameters()
    names = list(space)
    bests = [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(range(space[n].n_choices) for n in names))
        if true_accuracy(candidates, dict(zip(names, combo, strict=True)), world) >= best_possible - 1e-12
    ]
    nearest = min(bests, key=lambda b: (sum(b[n] != returned.get(n, 0) for n in names), sorted(b.items())))
    parts = []
    for name in names:
        if nearest[name] != returned.get(name, 0):
            with_it = [t for t in trials if t.choice.get(name, 0) == nearest[name]]
            examples = sum(len(t.scores) for t in with_it)
            parts.append(
                f"{name}: {returned.get(name, 0)} -> {nearest[name]} ({len(with_it)} trials, {examples} ex)"
            )
    return "; ".join(parts)


PRESET_VAL_SIZE = {"light": 100, "medium": 300}
#: ``world``: tests/optimize/world.py; ``no_gain``: tests/optimize/no_gain_world.py, where every proposal
#: and demo set makes the program worse (the baseline is the best in the grid); ``equal``: every combination
#: exactly as good as the baseline (a replacement of the baseline there is a false one).
WORLDS: dict[str, type[World]] = {"world": World, "no_gain": NoGainWorld, "equal": EqualWorld}


def summary_rows(runs: Sequence[Run]) -> list[list[object]]:
    rows: list[list[object]] = []
    for budget in dict.fromkeys(r.budget for r in runs):
        group = [r for r in runs if r.budget == budget]
        regrets = [r.regret for r in group]
        rows.append(
            [
                budget,
                len(group),
                f"{statistics.fmean(regrets):.3f}",
                f"{statistics.median(regrets):.3f}",
                f"{max(regrets):.3f}",
                f"{statistics.fmean(r.evaluated_regret for r in group):.3f}",
                f"{statistics.fmean(r.fully_evaluated_regret for r in group):.3f}",
                _mean_floor([r.floor_by_mean for r in group]),
                _mean_floor([r.floor_by_stage for r in group]),
                sum(r.worse_than_baseline for r in group),
                sum(r.replaced_baseline for r in group),
                f"{statistics.fmean(r.returned - r.baseline for r in group):.3f}",
                f"{statistics.fmean(r.lm_calls for r in group):,.0f}",
            ]
        )
    return rows


SUMMARY_HEADER = [
    "budget",
    "runs",
    "mean regret",
    "median regret",
    "max regret",
    "mean regret of the best evaluated",
    "mean regret of the best fully evaluated",
    "floor: all evaluated, highest mean",
    "floor: all evaluated, each stage's highest mean",
    "runs worse than the baseline",
    "runs that replaced the baseline",
    "mean gain over the baseline (true)",
    "mean LM calls",
]


def _mean_floor(values: Sequence[float]) -> str:
    known = [v for v in values if v == v]  # nan: another world, or a run recorded before floors were kept
    return f"{statistics.fmean(known):.4f}" if len(known) == len(values) and known else "—"


def system_rows(by_system: Mapping[str, Sequence[Run | DSPyRun]]) -> list[list[object]]:
    """One row per budget and system, the systems of a budget side by side."""
    rows: list[list[object]] = []
    budgets = dict.fromkeys(r.budget for runs in by_system.values() for r in runs)
    for budget in budgets:
        for system, runs in by_system.items():
            group = [r for r in runs if r.budget == budget]
            if not group:
                continue
            regrets = [r.regret for r in group]
            interval = t_interval(regrets)
            low, high = interval if interval is not None else (float("nan"), float("nan"))
            rows.append(
                [
                    budget,
                    system,
                    len(group),
                    f"{statistics.fmean(regrets):.4f} [{low:.4f}, {high:.4f}]",
                    f"{statistics.median(regrets):.3f}",
                    f"{statistics.fmean(r.evaluated_regret for r in group):.4f}",
                    f"{statistics.fmean(r.fully_evaluated_regret for r in group):.4f}",
                    sum(r.worse_than_baseline for r in group),
                    f"{statistics.fmean(r.returned - r.baseline for r in group):.3f}",
                    f"{statistics.fmean(r.lm_calls for r in group):,.0f}",
                ]
            )
    return rows


SYSTEM_HEADER = [
    "budget",
    "system",
    "runs",
    "mean regret [95 % interval]",
    "median regret",
    "mean regret of the best evaluated",
    "mean regret of the best fully evaluated",
    "runs worse than the baseline",
    "runs that replaced the baseline",
    "mean gain over the baseline (true)",
    "mean LM calls",
]


def dspy_run_rows(runs: Sequence[DSPyRun]) -> list[list[object]]:
    return [
        [
            r.budget,
            r.seed,
            f"{r.best_possible:.3f}",
            f"{r.returned:.3f}",
            f"{r.best_evaluated:.3f}",
            f"{r.best_fully_evaluated:.3f}",
            f"{r.baseline:.3f}",
            f"{r.regret:.3f}",
            f"{r.lm_calls:,}",
            f"{r.trials} / {r.full_evals}",
            f"{r.grid_size:,}",
            f"{r.seconds:.1f}",
        ]
        for r in runs
    ]


DSPY_RUN_HEADER = [
    "budget",
    "seed",
    "best in grid",
    "returned",
    "best evaluated",
    "best fully evaluated",
    "baseline",
    "regret",
    "LM calls",
    "trials / full evaluations",
    "grid",
    "seconds",
]


def run_rows(runs: Sequence[Run]) -> list[list[object]]:
    return [
        [
            r.budget,
            r.seed,
            f"{r.best_possible:.3f}",
            f"{r.returned:.3f}",
            f"{r.best_evaluated:.3f}",
            f"{r.best_fully_evaluated:.3f}",
            f"{r.baseline:.3f}",
            f"{r.regret:.3f}",
            f"{r.floor_by_mean:.3f}",
            f"{r.lm_calls:,}",
            f"{r.seconds:.1f}",
            (r.pick or "").replace("|", "/"),
            r.missed,
        ]
        for r in runs
    ]


RUN_HEADER = [
    "budget",
    "seed",
    "best in grid",
    "returned",
    "best evaluated",
    "best fully evaluated",
    "baseline",
    "regret",
    "floor (all evaluated, highest mean)",
    "LM calls",
    "seconds",
    "pick",
    "missed (nearest best's choice: trials, examples)",
]


def _budget_of(name: str, racing: bool, val_size: int | None = None) -> str | Mapping[str, Any]:
    budget: str | Mapping[str, Any] = QUICK_BUDGET if name == "quick" else name
    changes: dict[str, Any] = {}
    if not racing:
        changes["racing"] = False
    if val_size is not None:
        changes["val_size"] = val_size
    if changes:
        budget = {**budget, **changes} if isinstance(budget, Mapping) else {"preset": name, **changes}
    return budget


def _print_run(run: Run) -> None:
    print(
        f"{run.budget} seed {run.seed}: regret {run.regret:.3f} (best evaluated {run.evaluated_regret:.3f}, "
        f"best fully evaluated {run.fully_evaluated_regret:.3f}), "
        f"returned {run.returned:.3f}, baseline {run.baseline:.3f}, {run.lm_calls} calls, {run.seconds:.1f} s"
        + (f"; missed {run.missed}" if run.missed else ""),
        flush=True,
    )


def _one_run_sync(
    name: str,
    seed: int,
    world: str,
    strategy: str,
    racing: bool,
    max_lm_calls: int | None = None,
    val_size: int | None = None,
) -> Run:
    logging.getLogger("aprompt").setLevel(logging.WARNING)
    budget = _budget_of(name, racing, val_size)
    return anyio.run(one_run, name, budget, seed, world, strategy, max_lm_calls)


async def run_all(
    budgets: Sequence[str],
    seeds: Sequence[int],
    world: str,
    strategy: str = "mipro",
    racing: bool = True,
    max_lm_calls: int | None = None,
    val_size: int | None = None,
) -> list[Run]:
    runs = []
    for name in budgets:
        for seed in seeds:
            run = await one_run(name, _budget_of(name, racing, val_size), seed, world, strategy, max_lm_calls)
            _print_run(run)
            runs.append(run)
    return runs


async def run_dspy_all(
    budgets: Sequence[str], seeds: Sequence[int], dspy_python: str, threads: int, cache: bool = True
) -> list[DSPyRun]:
    """DSPy's MIPROv2 for every budget and seed, one at a time (see :mod:`bench.regret_dspy`)."""
    runs = []
    for name in budgets:
        for seed in seeds:
            run = await one_dspy_run(
                name,
                seed,
                dspy_python=dspy_python,
                n_train=N_TRAIN,
                val_size=PRESET_VAL_SIZE[name],
                threads=threads,
                cache=cache,
            )
            print(
                f"dspy {name} seed {seed}: regret {run.regret:.3f} "
                f"(best evaluated {run.evaluated_regret:.3f}, "
                f"best fully evaluated {run.fully_evaluated_regret:.3f}), returned {run.returned:.3f}, "
                f"baseline {run.baseline:.3f}, {run.lm_calls} calls, {run.seconds:.1f} s",
                flush=True,
            )
            runs.append(run)
    return runs


def _dspy_python(requested: str | None) -> str | None:
    """The interpreter that runs DSPy: the one asked for, else this one where dspy is installed."""
    if requested:
        return requested
    return sys.executable if importlib.util.find_spec("dspy") is not None else None


def run_parallel(
    budgets: Sequence[str],
    seeds: Sequence[int],
    world: str,
    strategy: str,
    racing: bool,
    workers: int,
    max_lm_calls: int | None = None,
    val_size: int | None = None,
) -> list[Run]:
    """The runs of :func:`run_all` in ``workers`` processes (each run is a pure function of its seed)."""
    jobs = [(name, seed) for name in budgets for seed in seeds]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        job = partial(
            _one_run_sync,
            world=world,
            strategy=strategy,
            racing=racing,
            max_lm_calls=max_lm_calls,
            val_size=val_size,
        )
        futures = [pool.submit(job, name, seed) for name, seed in jobs]
        for future in concurrent.futures.as_completed(futures):
            _print_run(future.result())
        return [future.result() for future in futures]


def paired_rows(runs: Sequence[Run], other: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    """This run's regret − another's, paired by budget and seed: mean, 95 % t-interval, lower/higher."""
    theirs = {(r["budget"], r["seed"]): r["best_possible"] - r["returned"] for r in other}
    rows: list[list[object]] = []
    for budget in dict.fromkeys(r.budget for r in runs):
        diffs = [
            r.regret - theirs[(budget, r.seed)]
            for r in runs
            if r.budget == budget and (budget, r.seed) in theirs
        ]
        if len(diffs) < 2:
            continue
        interval = t_interval(diffs)
        low, high = interval if interval is not None else (float("nan"), float("nan"))
        rows.append(
            [
                budget,
                len(diffs),
                f"{statistics.fmean(diffs):+.4f}",
                f"[{low:+.4f}, {high:+.4f}]",
                sum(d < -1e-12 for d in diffs),
                sum(d > 1e-12 for d in diffs),
            ]
        )
    return rows


PAIRED_HEADER = ["budget", "paired runs", "mean change in regret", "95 % interval", "lower", "higher"]


def main(argv: list[str] | None = None) -> list[Run]:
    """Run the benchmark; the library's log is quiet (WARNING) while it runs and as it was after."""
    library = logging.getLogger("aprompt")
    level = library.level
    library.setLevel(logging.WARNING)
    try:
        return _main(argv)
    finally:
        library.setLevel(level)  # run in a test's process, it must not silence the tests after it


def _main(argv: list[str] | None) -> list[Run]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs (seeds 0..n-1) per budget")
    parser.add_argument("--seeds", default=None, help="START:STOP, the seeds run (instead of --runs)")
    parser.add_argument("--workers", type=int, default=1, help="processes running the runs (default 1)")
    parser.add_argument(
        "--paired-with", type=Path, default=None, help="another run's json: print the change paired by seed"
    )
    parser.add_argument("--budgets", default=",".join(BUDGETS), help="comma-separated presets")
    parser.add_argument(
        "--quick", action="store_true", help="2 runs (or --seeds) of QUICK_BUDGET; prints only"
    )
    parser.add_argument("--out-dir", type=Path, default=None, help=f"where to write (default {RESULTS_DIR})")
    parser.add_argument("--world", choices=sorted(WORLDS), default="world", help="the simulated world")
    parser.add_argument("--name", default="regret_latest", help="file name stem of the results")
    parser.add_argument("--strategy", default="mipro", help="the aprompt strategy run (default mipro)")
    parser.add_argument(
        "--max-lm-calls",
        type=int,
        default=None,
        help="run aprompt under aprompt.Limits(max_lm_calls=N): a budget smaller than the plan",
    )
    parser.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="validation examples instead of the preset's (below 50, a capped run keeps a confirmation)",
    )
    parser.add_argument(
        "--no-racing", action="store_true", help="Budget.racing=False: one full evaluation per period"
    )
    parser.add_argument(
        "--systems", default="aprompt", help="comma-separated: aprompt, dspy (default aprompt)"
    )
    parser.add_argument(
        "--dspy-python", default=None, help="interpreter with dspy (default: this one, if it has it)"
    )
    parser.add_argument(
        "--dspy-threads", type=int, default=DEFAULT_THREADS, help="DSPy num_threads (default %(default)s)"
    )
    parser.add_argument(
        "--dspy-no-cache",
        action="store_true",
        help="no DSPy response cache: count every call it makes, as aprompt's are counted",
    )
    args = parser.parse_args(argv)
    budgets = [b for b in args.budgets.split(",") if b]
    unknown = [b for b in budgets if b not in PRESET_VAL_SIZE]
    if unknown:
        parser.error(f"unknown budget(s) {unknown}; use {sorted(PRESET_VAL_SIZE)}")
    if args.seeds is not None:
        start, _, stop = args.seeds.partition(":")
        seeds = list(range(int(start), int(stop)))
    else:
        seeds = list(range(2 if args.quick else args.runs))
    systems = [s for s in args.systems.split(",") if s]
    if not systems or set(systems) - {"aprompt", "dspy"}:
        parser.error(f"--systems takes aprompt and/or dspy, got {args.systems!r}")
    dspy_python = _dspy_python(args.dspy_python) if "dspy" in systems else None
    if "dspy" in systems and (
        args.quick or args.world != "world" or dspy_python is None or args.val_size is not None
    ):
        parser.error(
            "--systems dspy needs the standard world, a budget preset (no --val-size) and dspy "
            "(--dspy-python)"
        )
    if args.quick:
        budgets = ["quick"]
    command = command_line("regret", argv)
    print(f"command: {command}", flush=True)
    racing = not args.no_racing
    runs: list[Run] = []
    if "aprompt" in systems and args.workers > 1:
        limit = args.max_lm_calls
        runs = run_parallel(
            budgets, seeds, args.world, args.strategy, racing, args.workers, limit, args.val_size
        )
    elif "aprompt" in systems:
        runs = anyio.run(
            run_all, budgets, seeds, args.world, args.strategy, racing, args.max_lm_calls, args.val_size
        )
    dspy_runs: list[DSPyRun] = []
    if dspy_python is not None:
        dspy_runs = anyio.run(
            run_dspy_all, budgets, seeds, dspy_python, args.dspy_threads, not args.dspy_no_cache
        )
    summary = markdown_table(SUMMARY_HEADER, summary_rows(runs)) if runs else ""
    if dspy_runs:
        by_system: dict[str, Sequence[Run | DSPyRun]] = {"aprompt": runs, "dspy MIPROv2": dspy_runs}
        summary = "\n\n".join(
            part for part in (summary, markdown_table(SYSTEM_HEADER, system_rows(by_system))) if part
        )
    print("\n" + summary, flush=True)
    if args.paired_with is not None:
        other = json.loads(args.paired_with.read_text())["runs"]
        paired = f"Paired by seed with `{args.paired_with}` (this − that):\n\n" + markdown_table(
            PAIRED_HEADER, paired_rows(runs, other)
        )
        summary += "\n\n" + paired
        print(paired, flush=True)
    out_dir = args.out_dir if args.out_dir is not None or args.quick else RESULTS_DIR
    if out_dir is not None:
        env = environment()
        write_json(
            out_dir / f"{args.name}.json",
            {
                "command": command,
                "environment": env,
                "runs": [attrs.asdict(r) for r in runs],
                **({"dspy_runs": [attrs.asdict(r) for r in dspy_runs]} if dspy_runs else {}),
            },
        )
        text = "\n".join(
            [
                f"# Regret in the simulated world ({args.world})"
                + (f", strategy {args.strategy}" if args.strategy != "mipro" else ""),
                "",
                f"command: `{command}`",
                "",
                environment_line(env),
                "",
                summary,
                "",
                markdown_table(RUN_HEADER, run_rows(runs)) if runs else "",
                *(
                    ["", "DSPy MIPROv2:", "", markdown_table(DSPY_RUN_HEADER, dspy_run_rows(dspy_runs))]
                    if dspy_runs
                    else []
                ),
            ]
        )
        write_text(out_dir / f"{args.name}.md", text)
        print(f"\nwrote {out_dir / (args.name + '.md')}", flush=True)
    return runs


if __name__ == "__main__":
    main()
