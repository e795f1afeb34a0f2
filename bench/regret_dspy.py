"""DSPy's MIPROv2 in the regret benchmark's simulated world: one run per budget and seed, against the truth.

The parent (this interpreter) serves the world over HTTP on 127.0.0.1 with the project's
:class:`~aprompt.testing.fake_openai.FakeOpenAIServer` and :class:`bench.dspy_world.DSPyWorld` (the world's
probabilities in DSPy's prompt format), and counts the LM calls there: after DSPy's own response cache
(fresh for each run), or, without it, every call the run makes. DSPy runs in its own interpreter
(``--dspy-python``; DSPy is never a dependency of aprompt) as ``python -m bench.regret_dspy_worker SPEC``
(:mod:`bench.regret_dspy_worker`), which sends one JSON line back describing what MIPROv2 considered and
returned.

What the truth is computed from, all of it DSPy's own record:

- the grid: the instruction candidates and demo sets MIPROv2 searched per predictor (the arguments of its
  ``_optimize_prompt_parameters``, kept by a subclass);
- evaluated: every program in the returned program's ``trial_logs`` (``mb_program``: a mini-batch trial;
  ``full_eval_program``: a full evaluation, the unoptimized program first);
- a predictor's demos are taken as DSPy's ChatAdapter sends them (``format_demos``: a labeled example that
  lacks the stage's output field is left out of that stage's prompt), so the items are those the world sees.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from aprompt.testing.fake_openai import FakeOpenAIServer
from bench.dspy_world import DSPyWorld
from tests.optimize.world import World

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("extract", "answer")
#: DSPy's threads per evaluation: the world answers at once, so threads only overlap DSPy's own work.
DEFAULT_THREADS = 16


@attrs.frozen
class DSPyRun:
    """One MIPROv2 run's outcome against the truth (the same measures as :class:`bench.regret.Run`)."""

    budget: str
    seed: int
    best_possible: float
    returned: float
    baseline: float
    best_evaluated: float
    best_fully_evaluated: float
    lm_calls: int
    seconds: float
    trials: int
    full_evals: int
    grid_size: int

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
    def worse_than_baseline(self) -> bool:
        return self.returned < self.baseline - 1e-12


# -- the parent: serve the world, run the worker, score its record ------------------------------------


def truth(program: Mapping[str, Mapping[str, Any]]) -> float:
    """True accuracy of a program given as ``{stage: {"instruction": str, "items": [int]}}``."""
    return World.expected_accuracy(
        {s: program[s]["instruction"] for s in STAGES}, {s: program[s]["items"] for s in STAGES}
    )


def best_in_grid(instructions: Mapping[str, Sequence[str]], demo_sets: Mapping[str, Sequence[Any]]) -> float:
    """The best true accuracy over every instruction × demo set of every stage."""
    per_stage = [
        [{"instruction": i, "items": d} for i, d in itertools.product(instructions[s], demo_sets[s])]
        for s in STAGES
    ]
    return max(truth(dict(zip(STAGES, combo, strict=True))) for combo in itertools.product(*per_stage))


def score_record(budget: str, seed: int, record: Mapping[str, Any], lm_calls: int) -> DSPyRun:
    """A :class:`DSPyRun` from the worker's record and the calls counted at the server."""
    evaluated = record["evaluated"]
    full = [e["program"] for e in evaluated if e["full"]]
    return DSPyRun(
        budget=budget,
        seed=seed,
        best_possible=best_in_grid(record["instructions"], record["demo_sets"]),
        returned=truth(record["returned"]),
        baseline=truth(record["baseline"]),
        best_evaluated=max(truth(e["program"]) for e in evaluated),
        best_fully_evaluated=max(truth(p) for p in full),
        lm_calls=lm_calls,
        seconds=record["seconds"],
        trials=sum(not e["full"] for e in evaluated),
        full_evals=len(full),
        grid_size=_grid_size(record),
    )


def _grid_size(record: Mapping[str, Any]) -> int:
    size = 1
    for stage in STAGES:
        size *= len(record["instructions"][stage]) * len(record["demo_sets"][stage])
    return size


async def one_dspy_run(
    budget: str,
    seed: int,
    *,
    dspy_python: str,
    n_train: int,
    val_size: int,
    threads: int = DEFAULT_THREADS,
    cache: bool = True,
) -> DSPyRun:
    """MIPROv2 at ``budget`` and ``seed`` in ``dspy_python``, against the world served here; ``cache``:
    DSPy's own in-memory response cache, fresh for the run (its default), or none, so that every call
    the run makes reaches the server and is counted (as aprompt's in-process LM counts every call)."""
    async with FakeOpenAIServer(responder=DSPyWorld(), record=False) as server:
        spec = {
            "base_url": server.base_url,
            "budget": budget,
            "seed": seed,
            "n_train": n_train,
            "val_size": val_size,
            "threads": threads,
            "cache": cache,
        }
        path = os.environ.get("PYTHONPATH", "")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), path] if path else [str(REPO_ROOT)]),
        }
        done = await anyio.run_process(
            [dspy_python, "-m", "bench.regret_dspy_worker", json.dumps(spec)],
            cwd=REPO_ROOT,
            env=env,
            check=False,
        )
        calls = server.answered
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.decode().strip().splitlines()[-15:]) or "no output"
        raise RuntimeError(f"the DSPy worker failed (exit {done.returncode}):\n{tail}")
    return score_record(budget, seed, json.loads(lines[-1]), calls)
