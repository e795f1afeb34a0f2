"""Speed benchmark: one MIPRO optimization against a rate-limited, slow endpoint, by aprompt and by DSPy.

The endpoint (``bench/sim_server.py``, its own process, a fresh one per run so every run starts with an
empty rate-limit window) answers after 300–1,500 ms (long-tailed, ``--latency-scale`` multiplies it),
answers 429 with Retry-After beyond ``--rpm`` requests or ``--tpm`` tokens in any 60 s, and replies to
every prompt in the asking library's own format (``bench/simulated_lm.py``).

Both libraries run the same program on the same data with the same search: ``--candidates``
instruction candidates and demo sets per predictor, ``--trials`` mini-batch trials of ``--minibatch``
examples, a full evaluation every 5 trials. aprompt runs at its best settings: its client knows the
limits (``requests_per_minute`` / ``tokens_per_minute``) and ``--concurrency`` calls in flight; DSPy at
``--dspy-threads`` threads with ``--dspy-retries`` retries (it honours Retry-After) and no error cap.
Each starts with an empty response cache; aprompt then runs again on its warm cache (target: no HTTP
request at all).

The bound is the least time any client could take for the calls it made under the limit:
``max(calls ÷ request rate, tokens ÷ token rate) + one mean latency``.

    .venv/bin/python -m bench.throughput                 # ~10 minutes; writes bench/results/throughput.*
    .venv/bin/python -m bench.throughput --quick         # seconds; prints only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs

import aprompt
from bench.report import (
    RESULTS_DIR,
    command_line,
    environment,
    environment_line,
    markdown_table,
    write_json,
    write_text,
)
from bench.sim_server import mean_latency
from bench.tasks import DEFAULT_DATA_DIR, TASKS, Split, Task

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "simulated"
#: Runs in this order: ``aprompt-warm`` replays the cache ``aprompt`` filled; ``aprompt-no-limiter``
#: has its own cache and no client-side rate limiter (it relies on 429 + Retry-After, as DSPy does).
SYSTEMS = ("aprompt", "dspy", "aprompt-no-limiter", "aprompt-warm")


@attrs.frozen
class Settings:
    task: str
    data_dir: Path
    n_train: int
    n_val: int
    candidates: int
    trials: int
    minibatch: int
    rpm: float
    tpm: float
    latency_scale: float
    concurrency: int
    dspy_threads: tuple[int, ...]
    dspy_retries: int
    seed: int
    systems: tuple[str, ...]
    quick: bool
    out_dir: Path | None
    command: str


@attrs.frozen
class Measurement:
    """One system's run: wall time and what the server saw."""

    system: str
    seconds: float
    requests: int
    answered: int
    rate_limited: int
    gave_up: int
    prompt_tokens: int
    completion_tokens: int
    max_in_flight: int
    score: float | None = None
    note: str = ""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def bound_seconds(m: Measurement, settings: Settings, latency: float) -> float:
    """``max(calls ÷ request rate, tokens ÷ token rate) + one latency``, for the calls answered."""
    if m.answered == 0:
        return 0.0
    return max(m.answered / (settings.rpm / 60.0), m.tokens / (settings.tpm / 60.0)) + latency


@contextmanager
def sim_server(settings: Settings) -> Iterator[tuple[str, dict[str, Any]]]:
    """A fresh simulated endpoint in a subprocess; after the block, the dict holds its counts."""
    command = [sys.executable, "-m", "bench.sim_server", "--task", settings.task]
    command += ["--data-dir", str(settings.data_dir), "--rpm", str(settings.rpm), "--tpm", str(settings.tpm)]
    command += ["--latency-scale", str(settings.latency_scale), "--seed", str(settings.seed)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    stats: dict[str, Any] = {}
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"simulated endpoint did not start: {base_url!r}")
        yield base_url, stats
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if lines:
            stats.update(json.loads(lines[-1]))


def measure(
    system: str, seconds: float, stats: dict[str, Any], score: float | None, note: str = ""
) -> Measurement:
    return Measurement(
        system=system,
        seconds=round(seconds, 2),
        requests=stats.get("requests", 0),
        answered=stats.get("answered", 0),
        rate_limited=stats.get("rate_limited", 0),
        gave_up=stats.get("gave_up", 0),
        prompt_tokens=stats.get("prompt_tokens", 0),
        completion_tokens=stats.get("completion_tokens", 0),
        max_in_flight=stats.get("max_in_flight", 0),
        score=score,
        note=note,
    )


# -- aprompt -------------------------------------------------------------------------------------
async def run_aprompt(
    settings: Settings, task: Task, split: Split, base_url: str, cache_dir: Path, limited: bool
) -> float:
    """One optimization; returns its best validation score. ``limited``: the client paces itself to
    the endpoint's limits; else it relies on 429 + Retry-After alone (as DSPy does)."""
    with aprompt.ResponseCache.in_directory(cache_dir) as cache:
        lm = aprompt.OpenAICompatibleLM(
            MODEL,
            base_url,
            api_key="",
            max_concurrency=settings.concurrency,
            requests_per_minute=settings.rpm if limited else None,
            tokens_per_minute=settings.tpm if limited else None,
            cache=cache,
        )
        async with lm:
            result = await aprompt.optimize(
                task.program(),
                task.examples(split.train),
                task.metric,
                valset=task.examples(split.val),
                lm=lm,
                strategy="mipro",
                budget=aprompt_budget(settings),
                seed=settings.seed,
            )
    return result.score


def aprompt_budget(settings: Settings) -> dict[str, Any]:
    return {
        "n_candidates": settings.candidates,
        "n_trials": settings.trials,
        "minibatch_size": settings.minibatch,
        "full_eval_every": 5,
        "val_size": settings.n_val,
        "max_bootstrapped_demos": 4,
        "max_labeled_demos": 4,
    }


def measure_aprompt(
    settings: Settings, task: Task, split: Split, cache_dir: Path, system: str, *, limited: bool = True
) -> Measurement:
    with sim_server(settings) as (base_url, stats):
        started = time.monotonic()
        score = anyio.run(run_aprompt, settings, task, split, base_url, cache_dir, limited)
        seconds = time.monotonic() - started
    return measure(system, seconds, stats, score)


# -- DSPy ----------------------------------------------------------------------------------------
def measure_dspy(settings: Settings, task: Task, split: Split, threads: int) -> Measurement:
    from bench import dspy_side
    from bench.tasks import dspy_programs

    dspy_side.quiet()
    dspy_side.fresh_cache()
    with sim_server(settings) as (base_url, stats):
        task_lm = dspy_side.make_lm(base_url, MODEL, num_retries=settings.dspy_retries)
        prompt_lm = dspy_side.make_lm(base_url, MODEL, num_retries=settings.dspy_retries, temperature=1.0)
        started = time.monotonic()
        note, score = "", None
        try:
            compiled = dspy_side.compile_mipro(
                dspy_programs.PROGRAMS[task.name](),
                dspy_programs.examples(task, split.train),
                dspy_programs.examples(task, split.val),
                dspy_programs.metric(task),
                task_lm=task_lm,
                prompt_lm=prompt_lm,
                seed=settings.seed,
                num_threads=threads,
                auto=None,
                num_candidates=settings.candidates,
                num_trials=settings.trials,
                minibatch_size=settings.minibatch,
            )
            value = getattr(compiled, "score", None)
            score = float(value) / 100.0 if isinstance(value, int | float) else None
        except Exception as exc:
            note = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        seconds = time.monotonic() - started
    return measure(f"DSPy MIPROv2 ({threads} threads)", seconds, stats, score, note)


def dspy_available() -> bool:
    # Look for it without importing it (importing dspy takes seconds).
    return importlib.util.find_spec("dspy") is not None


# -- the run -------------------------------------------------------------------------------------
def run_all(settings: Settings) -> list[Measurement]:
    task = TASKS[settings.task]
    split = task.split(settings.data_dir, n_train=settings.n_train, n_val=settings.n_val, n_test=0)
    results = []
    with tempfile.TemporaryDirectory(prefix="aprompt-throughput-") as folder:
        cache_dir = Path(folder)
        for system in settings.systems:
            if system == "aprompt":
                m = measure_aprompt(
                    settings, task, split, cache_dir, f"aprompt ({settings.concurrency} concurrent)"
                )
            elif system == "aprompt-warm":
                m = measure_aprompt(settings, task, split, cache_dir, "aprompt, warm cache")
            elif system == "aprompt-no-limiter":
                name = f"aprompt ({settings.concurrency} concurrent, no client limiter)"
                m = measure_aprompt(settings, task, split, cache_dir / "no-limiter", name, limited=False)
            elif dspy_available():
                for threads in settings.dspy_threads:
                    report(results, measure_dspy(settings, task, split, threads))
                continue
            else:
                print("skipping DSPy: dspy is not installed (pip install -e '.[bench]')")
                continue
            report(results, m)
    return results


def report(results: list[Measurement], m: Measurement) -> None:
    results.append(m)
    print(
        f"{m.system}: {m.seconds:.1f}s, {m.requests} HTTP requests, {m.answered} answered, "
        f"{m.rate_limited} 429s, {m.gave_up} calls given up, {m.tokens} tokens {m.note}".rstrip(),
        flush=True,
    )


def render_markdown(settings: Settings, results: Sequence[Measurement], env: dict[str, Any]) -> str:
    latency = mean_latency(settings.latency_scale)
    ours = next((m for m in results if m.system.startswith("aprompt (")), None)
    # DSPy at its best: the fastest of the thread counts tried.
    theirs = min((m for m in results if m.system.startswith("DSPy")), key=lambda m: m.seconds, default=None)
    rows = []
    for m in results:
        bound = bound_seconds(m, settings, latency)
        rows.append(
            [
                m.system,
                f"{m.seconds:.1f}",
                f"{m.requests:,}",
                f"{m.answered:,}",
                f"{m.rate_limited:,}",
                f"{m.gave_up:,}",
                f"{m.tokens:,}",
                f"{bound:.1f}" if bound else "—",
                f"{m.seconds / bound:.2f}" if bound else "—",
                f"{m.score:.3f}" if m.score is not None else "—",
            ]
        )
    header = [
        "system",
        "wall s",
        "HTTP requests",
        "calls answered",
        "429s",
        "calls given up",
        "tokens",
        "bound s",
        "wall ÷ bound",
    ]
    lines = [
        "# Throughput benchmark: one MIPRO run against a rate-limited endpoint, aprompt vs DSPy MIPROv2",
        "",
        f"command: `{settings.command}`",
        "",
        f"Task `{settings.task}` ({TASKS[settings.task].description}); {settings.n_train} train / "
        f"{settings.n_val} validation examples; {settings.candidates} candidates per predictor, "
        f"{settings.trials} trials, mini-batches of {settings.minibatch}, a full evaluation every 5 trials; "
        f"seed {settings.seed}. Endpoint: simulated LM, latency 300–1,500 ms × {settings.latency_scale} "
        f"(mean {latency * 1000:.0f} ms), hard limit {settings.rpm:,.0f} requests/min and "
        f"{settings.tpm:,.0f} tokens/min (429 + Retry-After). aprompt: "
        f"max_concurrency={settings.concurrency}, requests_per_minute and tokens_per_minute set to the "
        f"limit; DSPy: num_threads={' or '.join(map(str, settings.dspy_threads))}, "
        f"num_retries={settings.dspy_retries}, max_errors unlimited. Bound = max(calls ÷ request rate, "
        "tokens ÷ token rate) + one mean latency, for the calls each system had answered. The server "
        "counts its limit over any trailing 60 s, so a client that bursts can put up to one minute's "
        "allowance through at once and beat this bound by up to 60 s; aprompt's limiter never bursts "
        "more than one second's allowance. Calls given up: prompts that got a 429 and never an answer "
        "(the client ran out of retries; DSPy then scores that example 0).",
        "",
        environment_line(env),
        "",
        markdown_table([*header, "best val score"], rows),
        "",
    ]
    if ours is not None:
        bound = bound_seconds(ours, settings, latency)
        verdict = "met" if bound and ours.seconds <= 1.1 * bound else "missed"
        lines.append(f"- aprompt: wall ÷ bound = {ours.seconds / bound:.2f} (target ≤ 1.10: {verdict}).")
    if ours is not None and theirs is not None:
        lines.append(
            f"- DSPy at its best ({theirs.system}) wall ÷ aprompt wall = {theirs.seconds / ours.seconds:.2f} "
            f"({theirs.seconds:.0f}s vs {ours.seconds:.0f}s)."
        )
    warm = next((m for m in results if m.system.endswith("warm cache")), None)
    if warm is not None:
        lines.append(
            f"- aprompt on its warm cache: {warm.seconds:.2f}s, {warm.requests} HTTP requests (target 0)."
        )
    for m in results:
        if m.note:
            lines.append(f"- {m.system}: {m.note}")
    return "\n".join(lines) + "\n"


def write_results(settings: Settings, results: Sequence[Measurement]) -> list[Path]:
    env = environment()
    text = render_markdown(settings, results, env)
    print()
    print(text)
    if settings.out_dir is None:
        return []
    latency = mean_latency(settings.latency_scale)
    data = {
        "command": settings.command,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(settings).items()},
        "environment": env,
        "mean_latency_s": latency,
        "results": [
            {**attrs.asdict(m), "tokens": m.tokens, "bound_s": bound_seconds(m, settings, latency)}
            for m in results
        ],
    }
    written = [
        write_json(settings.out_dir / "throughput.json", data),
        write_text(settings.out_dir / "throughput.md", text),
    ]
    print("wrote " + ", ".join(str(p) for p in written))
    return written


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="intent", choices=sorted(TASKS))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=6, help="instruction candidates and demo sets")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--minibatch", type=int, default=35)
    parser.add_argument("--rpm", type=float, default=300.0, help="endpoint limit: requests per minute")
    parser.add_argument("--tpm", type=float, default=120_000.0, help="endpoint limit: tokens per minute")
    parser.add_argument("--latency-scale", type=float, default=1.0, help="multiplies the 300–1500 ms latency")
    parser.add_argument("--concurrency", type=int, default=64, help="aprompt's max_concurrency")
    parser.add_argument("--dspy-threads", default="8,16", help="DSPy num_threads, comma-separated (each run)")
    parser.add_argument("--dspy-retries", type=int, default=8, help="DSPy LM num_retries")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, of {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run in seconds (prints only)")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: bench/results (none with --quick)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.val, args.candidates, args.trials, args.minibatch = 8, 8, 2, 2, 4
        args.latency_scale, args.rpm, args.tpm = 0.02, 6000.0, 3_000_000.0
        args.dspy_threads = str(args.dspy_threads).split(",")[0]
    systems = tuple(s for s in args.systems.split(",") if s)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    return Settings(
        task=args.task,
        data_dir=args.data_dir,
        n_train=args.train,
        n_val=args.val,
        candidates=args.candidates,
        trials=args.trials,
        minibatch=args.minibatch,
        rpm=args.rpm,
        tpm=args.tpm,
        latency_scale=args.latency_scale,
        concurrency=args.concurrency,
        dspy_threads=tuple(int(t) for t in str(args.dspy_threads).split(",") if t),
        dspy_retries=args.dspy_retries,
        seed=args.seed,
        systems=systems,
        quick=args.quick,
        out_dir=args.out_dir if args.out_dir is not None or args.quick else RESULTS_DIR,
        command=command_line("throughput", sys.argv[1:] if argv is None else argv),
    )


def main(argv: Sequence[str] | None = None) -> list[Measurement]:
    settings = parse_args(argv)
    results = run_all(settings)
    write_results(settings, results)
    return results


if __name__ == "__main__":
    main()
