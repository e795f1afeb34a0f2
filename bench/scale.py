"""Scale-out benchmark: one ``budget="light"`` optimization of a CPU-heavy program, in-process and on a
local Ray cluster with 1 and 2 worker processes.

The program does ``--work`` seconds of pure-Python CPU work per run (a stand-in for retrieval over a local
index, a tool that executes code, a parser), then one LM call to a loopback fake server (answers from
``bench/simulated_lm.py``: some prompts really are better). In-process, the work holds the event loop, so
runs are serial; with ``RayExecutor`` they run in worker processes while the driver only schedules them,
relays their LM calls to its own client and scores them. Every configuration starts with no cache, so each
makes the same LM calls and returns the same program (checked).

Printed per configuration: wall time of ``optimize()`` (cluster start excluded, shown apart), speed-up,
program runs, and the driver's CPU time per program run (``time.process_time`` of this process).

    .venv/bin/python -m bench.scale              # ~10 minutes on 2 cores; writes bench/results/scale.md
    .venv/bin/python -m bench.scale --quick      # seconds; prints only
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

import aprompt
from aprompt.executors import ProgramOutcome, ProgramRun
from aprompt.testing.fake_openai import FakeOpenAIServer
from bench.report import RESULTS_DIR, command_line, environment, environment_line, markdown_table, write_text
from bench.simulated_lm import SimulatedLM, gold_answers

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ("billing", "bug", "account", "feature", "security")


class HeavyProgram:
    """``work`` seconds of CPU work (calibrated loops, no sleeping), then one predictor call."""

    def __init__(self, loops: int) -> None:
        self.loops = loops
        self.classify = aprompt.Predict("ticket -> team", instruction="Route the ticket to a team.")

    async def __call__(self, ticket: str) -> aprompt.Prediction:
        cpu_work(self.loops)
        return await self.classify(ticket=ticket)


def cpu_work(loops: int) -> int:
    total = 0
    for i in range(loops):
        total = (total * 31 + i) % 1_000_003
    return total


def loops_for(seconds: float) -> int:
    """Loops of :func:`cpu_work` that take about ``seconds`` of CPU here."""
    probe = 200_000
    started = time.process_time()
    cpu_work(probe)
    return max(1, int(probe * seconds / max(1e-6, time.process_time() - started)))


def tickets(n: int) -> list[aprompt.Example]:
    return [
        aprompt.Example(
            inputs={"ticket": f"Ticket {i}: a question about {TOPICS[i % len(TOPICS)]} number {i * 7 % 97}."},
            labels={"team": TOPICS[i % len(TOPICS)]},
            id=f"t{i}",
        )
        for i in range(n)
    ]


def right_team(example: aprompt.Example, prediction: Any) -> bool:
    return str(prediction.team).strip() == example.labels["team"]


@attrs.define
class CountingExecutor:
    """Counts the program runs ``inner`` (``None``: in-process) makes."""

    inner: Any = None
    runs: int = 0

    async def run_program(self, program: object, run: ProgramRun) -> ProgramOutcome:
        self.runs += 1
        if self.inner is None:
            return await aprompt.executors.execute_run(program, run)
        outcome: ProgramOutcome = await self.inner.run_program(program, run)
        return outcome


@attrs.frozen
class Measured:
    name: str
    seconds: float
    start_seconds: float
    runs: int
    driver_cpu: float
    score: float
    state: Any


async def optimize_once(
    name: str, workers: int | None, args: argparse.Namespace, loops: int, budget: Any
) -> Measured:
    examples = tickets(args.examples)
    gold = gold_answers((e.inputs["ticket"], e.labels["team"]) for e in examples)
    responder = SimulatedLM(gold, frozenset({"team"}), topic="ticket")
    async with (
        FakeOpenAIServer(responder=responder, record=False) as server,
        aprompt.OpenAICompatibleLM("sim", server.base_url, api_key="sk-bench") as lm,
    ):
        started = time.monotonic()
        ray_executor = None
        if workers is not None:
            from aprompt.executors import RayExecutor

            ray_executor = RayExecutor(workers=workers, runs_per_worker=2)
            await ray_executor.__aenter__()
        start_seconds = time.monotonic() - started
        try:
            counting = CountingExecutor(ray_executor)
            cpu, wall = time.process_time(), time.monotonic()
            result = await aprompt.optimize(
                HeavyProgram(loops), examples, right_team, lm=lm, budget=budget, seed=0, executor=counting
            )
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        finally:
            if ray_executor is not None:
                await ray_executor.__aexit__(None, None, None)
    state = aprompt.program_state(result.program)
    return Measured(
        name, wall, start_seconds, counting.runs, cpu / max(1, counting.runs), result.score, state
    )


async def run_all(args: argparse.Namespace) -> list[Measured]:
    loops = loops_for(args.work)
    budget: Any = "light" if not args.quick else {"n_candidates": 3, "n_trials": 4, "minibatch_size": 5}
    configurations: list[tuple[str, int | None]] = [("in-process", None), ("ray, 1 worker", 1)]
    configurations.append(("ray, 2 workers", 2))
    measured = []
    for name, workers in configurations:
        one = await optimize_once(name, workers, args, loops, budget)
        print(
            f"{name:>15}: {one.seconds:7.1f} s ({one.runs} program runs, driver CPU "
            f"{one.driver_cpu * 1000:.1f} ms per run; cluster start {one.start_seconds:.1f} s)",
            flush=True,
        )
        measured.append(one)
    return measured


def report(measured: Sequence[Measured], args: argparse.Namespace, argv: Sequence[str] | None) -> str:
    base = measured[1].seconds
    rows = [
        (
            m.name,
            f"{m.seconds:.1f}",
            f"{base / m.seconds:.2f}×",
            m.runs,
            f"{m.driver_cpu * 1000:.1f}",
            f"{m.score:.3f}",
        )
        for m in measured
    ]
    same = all(m.state == measured[0].state and m.score == measured[0].score for m in measured)
    table = markdown_table(
        ["configuration", "wall s", "speed-up over 1 worker", "program runs", "driver CPU ms/run", "score"],
        rows,
    )
    return "\n".join(
        [
            "# Scale-out: a CPU-heavy program on a local Ray cluster",
            "",
            f"`{command_line('scale', argv)}`",
            "",
            f'One `budget="light"` optimization of a program doing {args.work:g} s of CPU work per run '
            f"plus one LM call (loopback fake server), {args.examples} examples, seed 0, no cache. Wall "
            "time of `optimize()` only (starting the cluster's workers is apart). The same program and "
            f"score in every configuration: {same}.",
            "",
            table,
            "",
            environment_line(environment()),
        ]
    )


def main(argv: Sequence[str] | None = None) -> list[Measured]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--work", type=float, default=0.3, help="CPU seconds per program run")
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a tiny budget and no result file")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.work, args.examples = min(args.work, 0.005), min(args.examples, 20)
    import ray

    # Workers import this module (the program's class) from this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        measured = anyio.run(run_all, args)
    finally:
        ray.shutdown()
    text = report(measured, args, argv)
    print(text)
    if not args.quick:
        print(f"wrote {write_text(args.out_dir / 'scale.md', text)}")
    return measured


if __name__ == "__main__":
    main()
