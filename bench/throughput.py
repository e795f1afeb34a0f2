"""Speed benchmark: one light MIPRO optimization against a simulated, rate-limited endpoint, by aprompt and
by DSPy MIPROv2, in three regimes: the request rate binds, latency binds, the token rate binds.

The endpoint (``bench/sim_server.py``, its own process, a fresh one per run so every run starts with an
empty rate-limit window) answers after a log-normal latency (median 0.6 s, σ 0.5; ``--latency capped``
gives the older 0.3 s + capped tail), answers 429 with Retry-After beyond the regime's requests or tokens
in any 60 s (in whole seconds, and ``retry-after-ms``), sends OpenAI's ``x-ratelimit-*`` headers with
every answer, replies to every prompt in the
asking library's own format (``bench/simulated_lm.py``), and logs every request's arrival and finish.

Both libraries run the light plan (aprompt ``budget="light"``, DSPy ``auto="light"``: 6 candidates per
predictor; on one predictor DSPy makes 10 mini-batch trials of 35, aprompt 29 of 12; ~690 calls) on the
same program and data, each
with its own empty response cache. Per regime:

- ``aprompt``: its defaults, told the limits (``requests_per_minute`` / ``tokens_per_minute``);
- ``aprompt-untold``: its defaults, not told (429 + Retry-After and the rate-limit headers alone);
- ``dspy``: MIPROv2 at each of ``--dspy-threads`` threads with ``--dspy-retries`` retries (LiteLLM's
  retries honour Retry-After) and no error cap, in its own process (``--dspy-python``).

For each: wall seconds; the bound ``max(calls ÷ RPM, tokens ÷ TPM) + one median latency`` for the calls
it had answered, and wall ÷ bound; HTTP requests, 429s, calls lost (prompts refused and never answered),
repeats (identical requests answered more than once), requests in flight (mean and max, from the
server's log), and client CPU per answered call (the client process's CPU time around the optimization;
on both sides the clock starts after the libraries are imported, anyio's backend loaded and the imports'
garbage collected, costs a process pays once, not per call).
The timeline of requests in flight goes to ``bench/results/<name>.png``.

``--local`` instead runs one light aprompt optimization on the embedded model (llama.cpp, 16 train / 12
validation examples unless told) and prints the fraction of the search phase during which the model
server was processing a request, read from its ``/slots`` at ~20 Hz (``bench/results/throughput_local.md``).

    .venv/bin/python -m bench.throughput                 # ~30 minutes; writes bench/results/throughput.*
    .venv/bin/python -m bench.throughput --quick         # seconds; prints only
    .venv/bin/python -m bench.throughput --local         # minutes, on the embedded model
    .venv/bin/python -m bench.throughput --systems aprompt --regimes latency --profile /tmp/prof
                                                         # cProfile of each aprompt run: /tmp/prof.*.prof

A profiled run's client CPU includes the profiler's own overhead (roughly doubling it): time CPU
without ``--profile``.
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import gc
import importlib.util
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import httpx

import aprompt
from bench.report import (
    RESULTS_DIR,
    command_line,
    environment,
    environment_line,
    git_commit,
    markdown_table,
    write_json,
    write_text,
)
from bench.sim_server import LATENCY_MODELS, median_latency
from bench.tasks import DEFAULT_DATA_DIR, TASKS, Split, Task

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "simulated"
SYSTEMS = ("aprompt", "aprompt-untold", "dspy")
#: Client CPU per answered call the issue asks for at most.
CPU_GOAL_MS = 1.0
#: The step of the in-flight samples kept in the JSON results.
SAMPLE_STEP_S = 0.1


@attrs.frozen
class Regime:
    """The endpoint's limits and the wall ÷ bound the issue asks for under them."""

    name: str
    rpm: float
    tpm: float
    goal: float
    binds: str


REGIMES: Mapping[str, Regime] = {
    "rate": Regime("rate", 600.0, 300_000.0, 1.05, "the request rate"),
    "latency": Regime("latency", 3000.0, 1_500_000.0, 1.15, "latency"),
    # ~200 tokens per aprompt call, ~410 per DSPy call: tokens ÷ TPM is ~10-17 × calls ÷ RPM, and a
    # run needs well over one minute's allowance (the server's window lets the first minute burst).
    "tokens": Regime("tokens", 3000.0, 60_000.0, 1.05, "the token rate"),
}
#: ``--quick``: the limits × 10 and the latency × 0.02, so each run takes a second or two.
QUICK_LIMIT_FACTOR = 10.0
QUICK_LATENCY_SCALE = 0.02
QUICK_BUDGET: Mapping[str, Any] = {
    "n_candidates": 2,
    "n_trials": 2,
    "minibatch_size": 4,
    "max_bootstrapped_demos": 2,
    "max_labeled_demos": 2,
}


@attrs.frozen
class Settings:
    task: str
    data_dir: Path
    n_train: int
    n_val: int
    regimes: tuple[Regime, ...]
    latency: str
    latency_scale: float
    concurrency: int | None
    dspy_threads: tuple[int, ...]
    dspy_retries: int
    dspy_python: str | None
    seed: int
    systems: tuple[str, ...]
    quick: bool
    local: bool
    local_parallel: int
    out_dir: Path | None
    name: str
    label: str
    command: str
    #: ``--profile``: where each aprompt run's cProfile statistics go (``<profile>.<regime>.<system>.prof``).
    profile: Path | None = None

    @property
    def median_latency(self) -> float:
        return median_latency(self.latency_scale, self.latency)


@attrs.frozen
class Outcome:
    """What the client saw of its run (times are ``time.monotonic()``, shared with the server's log)."""

    started: float
    seconds: float
    cpu_s: float
    score: float | None = None
    search_started: float | None = None
    note: str = ""


@attrs.frozen
class Measurement:
    """One system's run in one regime: the client's wall and CPU time, and what the server saw."""

    regime: str
    system: str
    seconds: float
    bound_s: float
    cpu_s: float
    requests: int
    answered: int
    rate_limited: int
    lost: int
    repeats: int
    prompt_tokens: int
    completion_tokens: int
    max_in_flight: int
    mean_in_flight: float
    #: Seconds from the client's start to the search phase's start (aprompt only).
    search_starts_s: float | None = None
    score: float | None = None
    note: str = ""
    #: Requests in flight every ``SAMPLE_STEP_S`` seconds from the client's start.
    in_flight: tuple[int, ...] = attrs.field(default=(), repr=False)
    #: The exact step function ``(times, counts)`` of requests in flight, for the plot (not saved).
    steps: tuple[tuple[float, ...], tuple[int, ...]] = attrs.field(default=((), ()), repr=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def ratio(self) -> float | None:
        return self.seconds / self.bound_s if self.bound_s else None

    @property
    def cpu_ms_per_call(self) -> float | None:
        return 1000.0 * self.cpu_s / self.answered if self.answered else None


def bound_seconds(answered: int, tokens: int, regime: Regime, rate_scale: float, latency: float) -> float:
    """``max(calls ÷ request rate, tokens ÷ token rate) + one median latency``, for the calls answered."""
    if answered == 0:
        return 0.0
    per_second = rate_scale / 60.0
    return max(answered / (regime.rpm * per_second), tokens / (regime.tpm * per_second)) + latency


def in_flight_series(log: Sequence[Sequence[float]], origin: float) -> tuple[list[float], list[int]]:
    """The step function of requests in flight: ``(times, counts)``, each count holding from its time to
    the next; times in seconds from ``origin``."""
    events = sorted([(s - origin, 1) for s, _, _ in log] + [(f - origin, -1) for _, f, _ in log])
    times, counts, level = [0.0], [0], 0
    for t, step in events:
        level += step
        if times[-1] == t:
            counts[-1] = level
        else:
            times.append(t)
            counts.append(level)
    return times, counts


def sample_series(times: Sequence[float], counts: Sequence[int], end: float, step: float) -> list[int]:
    """The step function's value every ``step`` seconds from 0 to ``end``."""
    samples = []
    for k in range(int(end / step) + 1):
        i = bisect.bisect_right(times, k * step) - 1
        samples.append(counts[i] if i >= 0 else 0)
    return samples


def mean_in_flight(log: Sequence[Sequence[float]], start: float, end: float) -> float:
    """Requests in flight averaged over ``[start, end]``: the time requests spent at the server ÷ wall."""
    if end <= start:
        return 0.0
    busy = sum(max(0.0, min(f, end) - max(s, start)) for s, f, _ in log)
    return busy / (end - start)


@contextmanager
def sim_server(settings: Settings, regime: Regime, log_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A fresh simulated endpoint in a subprocess; after the block, the dict holds its counts and its
    request log is in ``log_path``."""
    factor = QUICK_LIMIT_FACTOR if settings.quick else 1.0
    command = [sys.executable, "-m", "bench.sim_server", "--task", settings.task]
    command += ["--data-dir", str(settings.data_dir)]
    command += ["--rpm", str(regime.rpm * factor), "--tpm", str(regime.tpm * factor)]
    command += ["--latency", settings.latency, "--latency-scale", str(settings.latency_scale)]
    command += ["--seed", str(settings.seed), "--log", str(log_path)]
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
        out, _ = process.communicate(timeout=60)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if lines:
            stats.update(json.loads(lines[-1]))


def measure(settings: Settings, regime: Regime, system: str, run: Callable[[str], Outcome]) -> Measurement:
    """Run ``run(base_url) -> Outcome`` against a fresh endpoint and read the server's side."""
    with tempfile.TemporaryDirectory(prefix="aprompt-throughput-") as folder:
        log_path = Path(folder) / "requests.json"
        with sim_server(settings, regime, log_path) as (base_url, stats):
            outcome: Outcome = run(base_url)
        log = json.loads(log_path.read_text()) if log_path.exists() else []
    end = outcome.started + outcome.seconds
    times, counts = in_flight_series(log, outcome.started)
    answered = stats.get("answered", 0)
    tokens = stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)
    factor = QUICK_LIMIT_FACTOR if settings.quick else 1.0
    return Measurement(
        regime=regime.name,
        system=system,
        seconds=round(outcome.seconds, 2),
        bound_s=round(bound_seconds(answered, tokens, regime, factor, settings.median_latency), 2),
        cpu_s=round(outcome.cpu_s, 3),
        requests=stats.get("requests", 0),
        answered=answered,
        rate_limited=stats.get("rate_limited", 0),
        lost=stats.get("gave_up", 0),
        repeats=stats.get("repeats", 0),
        prompt_tokens=stats.get("prompt_tokens", 0),
        completion_tokens=stats.get("completion_tokens", 0),
        max_in_flight=stats.get("max_in_flight", 0),
        mean_in_flight=round(mean_in_flight(log, outcome.started, end), 2),
        search_starts_s=(
            round(outcome.search_started - outcome.started, 2) if outcome.search_started is not None else None
        ),
        score=outcome.score,
        note=outcome.note,
        in_flight=tuple(sample_series(times, counts, outcome.seconds, SAMPLE_STEP_S)),
        steps=(tuple(times), tuple(counts)),
    )


# -- aprompt -------------------------------------------------------------------------------------
def aprompt_budget(settings: Settings) -> str | dict[str, Any]:
    return {**QUICK_BUDGET, "val_size": settings.n_val} if settings.quick else "light"


async def optimize_task(
    task: Task, split: Split, lm: aprompt.LM, settings: Settings, on_event: Callable[[Any], None]
) -> aprompt.OptimizeResult[Any]:
    """The benchmark's optimization: a light MIPRO run of ``task`` on its split, events to ``on_event``."""
    return await aprompt.optimize(
        task.program(),
        task.examples(split.train),
        task.metric,
        valset=task.examples(split.val),
        lm=lm,
        strategy="mipro",
        budget=aprompt_budget(settings),
        seed=settings.seed,
        on_event=on_event,
    )


async def optimize_aprompt(
    settings: Settings, task: Task, split: Split, lm: aprompt.LM, *, progress: bool = False
) -> tuple[float, dict[str, float]]:
    """One optimization; returns its best validation score and when each phase started (monotonic);
    ``progress`` prints each phase's start."""
    phases: dict[str, float] = {}
    started = time.monotonic()

    def on_event(event: aprompt.Event) -> None:
        if isinstance(event, aprompt.PhaseStarted):
            phases.setdefault(event.phase, time.monotonic())
            if progress:
                print(f"  {time.monotonic() - started:7.1f}s  {event.phase} starts", flush=True)
        elif isinstance(event, aprompt.PhaseFinished):
            phases[f"{event.phase}:end"] = time.monotonic()

    result = await optimize_task(task, split, lm, settings, on_event)
    return result.score, phases


def aprompt_client(
    settings: Settings, regime: Regime, base_url: str, told: bool
) -> aprompt.OpenAICompatibleLM:
    """The client at its defaults: only the limits (when told) and ``--concurrency`` (when given) set."""
    options: dict[str, Any] = {}
    if settings.concurrency is not None:
        options["max_concurrency"] = settings.concurrency
    if told:
        factor = QUICK_LIMIT_FACTOR if settings.quick else 1.0
        options["requests_per_minute"] = regime.rpm * factor
        options["tokens_per_minute"] = regime.tpm * factor
    return aprompt.OpenAICompatibleLM(MODEL, base_url, api_key="", **options)


def run_aprompt(
    settings: Settings, regime: Regime, task: Task, split: Split, told: bool, base_url: str
) -> Outcome:
    async def run() -> tuple[float, dict[str, float]]:
        async with aprompt_client(settings, regime, base_url, told) as lm:
            return await optimize_aprompt(settings, task, split, lm)

    # anyio imports its backend on a process's first run (~40 ms of CPU, once per process, not per call):
    # done before the clock starts, as DSPy's side imports DSPy and builds its LMs before its clock.
    anyio.run(anyio.lowlevel.checkpoint)
    # The objects importing the libraries left count toward the collector's next full collection, which
    # scans the whole heap (~40-70 ms here): collected before the clock, on both sides, as a process that
    # imported once and runs on would have done, so that neither run pays its imports' collection.
    gc.collect()
    # CPU time, not wall: what the client spends, whatever the machine's load.
    profiler = cProfile.Profile(time.process_time) if settings.profile is not None else None
    started, cpu = time.monotonic(), time.process_time()
    score: float | None = None
    phases: dict[str, float] = {}
    note = ""
    if profiler is not None:
        profiler.enable()
    try:
        score, phases = anyio.run(run)
    except Exception as exc:
        note = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    finally:
        if profiler is not None:
            profiler.disable()
    if profiler is not None and settings.profile is not None:
        save_profile(profiler, Path(f"{settings.profile}.{regime.name}.{'told' if told else 'untold'}.prof"))
    return Outcome(
        started,
        time.monotonic() - started,
        time.process_time() - cpu,
        score,
        phases.get("search"),
        note,
    )


def save_profile(profiler: cProfile.Profile, path: Path, top: int = 25) -> None:
    """Write ``profiler``'s statistics to ``path`` and print its ``top`` functions by own time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(path))
    print(f"profile: {path}", flush=True)
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


# -- DSPy ----------------------------------------------------------------------------------------
def dspy_python(requested: str | None) -> str | None:
    """The interpreter that runs DSPy: the one asked for, else this one where dspy is installed."""
    if requested:
        return requested
    # Look for it without importing it (importing dspy takes seconds).
    return sys.executable if importlib.util.find_spec("dspy") is not None else None


def run_dspy(settings: Settings, threads: int, base_url: str) -> Outcome:
    """MIPROv2 in its own process (so its CPU time and threads are its own); see :func:`dspy_worker`."""
    assert settings.dspy_python is not None
    spec = {
        "base_url": base_url,
        "task": settings.task,
        "data_dir": str(settings.data_dir),
        "n_train": settings.n_train,
        "n_val": settings.n_val,
        "threads": threads,
        "retries": settings.dspy_retries,
        "seed": settings.seed,
        "quick": settings.quick,
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    launched = time.monotonic()
    done = subprocess.run(
        [settings.dspy_python, "-m", "bench.throughput", "--dspy-worker", json.dumps(spec)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return Outcome(launched, time.monotonic() - launched, 0.0, note=f"DSPy process failed: {tail}")
    return Outcome(**json.loads(lines[-1]))


def dspy_worker(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run one MIPROv2 compile as ``spec`` says (in the DSPy interpreter); returns an :class:`Outcome`'s
    fields."""
    from bench import dspy_side
    from bench.tasks import dspy_programs

    dspy_side.quiet()
    dspy_side.fresh_cache()
    task = TASKS[spec["task"]]
    split = task.split(Path(spec["data_dir"]), n_train=spec["n_train"], n_val=spec["n_val"], n_test=0)
    retries, url = int(spec["retries"]), str(spec["base_url"])
    task_lm = dspy_side.make_lm(url, MODEL, num_retries=retries)
    prompt_lm = dspy_side.make_lm(url, MODEL, num_retries=retries, temperature=1.0)
    quick = bool(spec["quick"])
    gc.collect()  # as on aprompt's side: the imports' full collection is not the run's
    started, cpu = time.monotonic(), time.process_time()
    note, score = "", None
    try:
        compiled = dspy_side.compile_mipro(
            dspy_programs.PROGRAMS[task.name](),
            dspy_programs.examples(task, split.train),
            dspy_programs.examples(task, split.val),
            dspy_programs.metric(task),
            task_lm=task_lm,
            prompt_lm=prompt_lm,
            seed=int(spec["seed"]),
            num_threads=int(spec["threads"]),
            auto=None if quick else "light",
            num_candidates=QUICK_BUDGET["n_candidates"] if quick else None,
            num_trials=QUICK_BUDGET["n_trials"] if quick else None,
            minibatch_size=QUICK_BUDGET["minibatch_size"] if quick else 35,
            max_bootstrapped_demos=QUICK_BUDGET["max_bootstrapped_demos"] if quick else 4,
            max_labeled_demos=QUICK_BUDGET["max_labeled_demos"] if quick else 4,
        )
        value = getattr(compiled, "score", None)
        score = float(value) / 100.0 if isinstance(value, int | float) else None
    except Exception as exc:
        note = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    seconds, cpu_s = time.monotonic() - started, time.process_time() - cpu
    return {"started": started, "seconds": seconds, "cpu_s": cpu_s, "score": score, "note": note}


# -- the run -------------------------------------------------------------------------------------
def run_all(settings: Settings) -> list[Measurement]:
    task = TASKS[settings.task]
    split = task.split(settings.data_dir, n_train=settings.n_train, n_val=settings.n_val, n_test=0)
    if "dspy" in settings.systems and settings.dspy_python is None:
        print("skipping DSPy: dspy is not installed here (pip install -e '.[bench]', or --dspy-python)")
    results: list[Measurement] = []
    for regime in settings.regimes:
        for system in settings.systems:
            if system in ("aprompt", "aprompt-untold"):
                told = system == "aprompt"
                name = "aprompt, told the limits" if told else "aprompt, not told the limits"
                run = partial(run_aprompt, settings, regime, task, split, told)
                report(results, measure(settings, regime, name, run))
            elif settings.dspy_python is not None:
                for threads in settings.dspy_threads:
                    name = f"DSPy MIPROv2, {threads} threads"
                    report(results, measure(settings, regime, name, partial(run_dspy, settings, threads)))
    return results


def report(results: list[Measurement], m: Measurement) -> None:
    results.append(m)
    ratio = f"{m.ratio:.2f}" if m.ratio is not None else "—"
    cpu = f"{m.cpu_ms_per_call:.2f}" if m.cpu_ms_per_call is not None else "—"
    print(
        f"[{m.regime}] {m.system}: {m.seconds:.1f}s, bound {m.bound_s:.1f}s, wall ÷ bound {ratio}, "
        f"{m.requests} HTTP requests, {m.answered} answered, {m.rate_limited} 429s, {m.lost} calls lost, "
        f"{m.repeats} repeats, {m.mean_in_flight:.1f} in flight on average (max {m.max_in_flight}), "
        f"client CPU {cpu} ms per call {m.note}".rstrip(),
        flush=True,
    )


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render_markdown(
    settings: Settings, results: Sequence[Measurement], env: Mapping[str, Any], commit: str
) -> str:
    title = "# Throughput benchmark: one light MIPRO run on a simulated endpoint, aprompt vs DSPy MIPROv2"
    factor = QUICK_LIMIT_FACTOR if settings.quick else 1.0
    limits = "; ".join(
        f"`{r.name}` ({r.binds} binds): {r.rpm * factor:,.0f} requests/min, {r.tpm * factor:,.0f} tokens/min"
        for r in settings.regimes
    )
    plan = (
        "the quick plan (2 candidates, 2 trials of 4)"
        if settings.quick
        else (
            'the light plan (aprompt `budget="light"`, DSPy `auto="light"`: 6 candidates; aprompt 29 trials '
            "of 12, DSPy 10 of 35)"
        )
    )
    concurrency = f"max_concurrency={settings.concurrency}" if settings.concurrency else "default concurrency"
    latency = (
        "log-normal latency, median 600 ms, σ 0.5"
        if settings.latency == "lognormal"
        else "latency 300 ms + a log-normal tail, capped at 1.5 s"
    )
    lines = [
        title + (f" ({settings.label})" if settings.label else ""),
        "",
        f"command: `{settings.command}`; aprompt at commit {commit}",
        "",
        f"Task `{settings.task}` ({TASKS[settings.task].description}); {settings.n_train} train / "
        f"{settings.n_val} validation examples; {plan}; seed {settings.seed}. Endpoint: simulated LM, "
        f"{latency}, × {settings.latency_scale} (median {settings.median_latency * 1000:.0f} ms); limits "
        f"per regime, over any trailing 60 s (429 + Retry-After, `x-ratelimit-*` headers): {limits}. "
        f"aprompt: {concurrency}, told the limits (requests_per_minute / tokens_per_minute) or not; no "
        f"cache given. DSPy: num_threads={' or '.join(map(str, settings.dspy_threads))}, "
        f"num_retries={settings.dspy_retries}, max_errors unlimited, in its own process.",
        "",
        "Bound = max(calls ÷ RPM, tokens ÷ TPM) + one median latency, for the calls each run had answered; "
        "the server's window lets a client burst a full minute's allowance at once, so a run can beat it. "
        "Calls lost: prompts refused (429) and never answered. Repeats: identical requests answered more "
        "than once. In flight: requests at the server, from its log. Client CPU: the client process's CPU "
        "time over the optimization ÷ calls answered (anyio's backend imported before, as DSPy is on its "
        "side, and on both sides the imports' garbage collected before the clock). Search starts: seconds "
        "until aprompt's search phase.",
        "",
        environment_line(env),
        "",
    ]
    header = [
        "regime",
        "system",
        "wall s",
        "bound s",
        "wall ÷ bound",
        "goal",
        "HTTP requests",
        "answered",
        "429s",
        "calls lost",
        "repeats",
        "mean in flight",
        "max in flight",
        "search starts s",
        "client CPU ms/call",
        "val score",
    ]
    goals = {r.name: r.goal for r in settings.regimes}
    rows = [
        [
            m.regime,
            m.system,
            f"{m.seconds:.1f}",
            f"{m.bound_s:.1f}" if m.bound_s else "—",
            _cell(m.ratio, 2),
            f"≤ {goals[m.regime]:.2f}",
            f"{m.requests:,}",
            f"{m.answered:,}",
            f"{m.rate_limited:,}",
            f"{m.lost:,}",
            f"{m.repeats:,}",
            f"{m.mean_in_flight:.1f}",
            f"{m.max_in_flight}",
            _cell(m.search_starts_s, 1),
            _cell(m.cpu_ms_per_call, 2),
            _cell(m.score, 3),
        ]
        for m in results
    ]
    lines += [markdown_table(header, rows, align="ll" + "r" * (len(header) - 2)), ""]
    lines += [f"- {line}" for line in goal_lines(settings, results)]
    lines += [f"- {m.regime}, {m.system}: {m.note}" for m in results if m.note]
    return "\n".join(lines) + "\n"


def goal_lines(settings: Settings, results: Sequence[Measurement]) -> list[str]:
    """The issue's goals beside the figures (printed, never asserted)."""
    lines = []
    for regime in settings.regimes:
        ours = next(
            (m for m in results if m.regime == regime.name and m.system.startswith("aprompt, told")), None
        )
        if ours is None or ours.ratio is None:
            continue
        verdict = "met" if ours.ratio <= regime.goal else "missed"
        line = f"{regime.name}: aprompt told the limits, wall ÷ bound {ours.ratio:.2f} "
        line += f"(goal ≤ {regime.goal}: {verdict})"
        theirs = [m for m in results if m.regime == regime.name and m.system.startswith("DSPy") and m.ratio]
        if theirs:
            best = min(theirs, key=lambda m: m.seconds)
            line += f"; DSPy at its best ({best.system}) {_cell(best.ratio, 2)}, "
            line += f"{best.seconds / ours.seconds:.2f} × aprompt's wall"
        lines.append(line + ".")
    aprompt_runs = [m for m in results if m.system.startswith("aprompt")]
    lost = sum(m.lost for m in aprompt_runs)
    lines.append(f"calls lost by aprompt over all runs: {lost} (goal 0: {'met' if lost == 0 else 'missed'}).")
    cpu = [m.cpu_ms_per_call for m in aprompt_runs if m.cpu_ms_per_call is not None]
    if cpu:
        verdict = "met" if max(cpu) <= CPU_GOAL_MS else "missed"
        lines.append(
            f"aprompt client CPU per call: {min(cpu):.2f}–{max(cpu):.2f} ms "
            f"(goal ≤ {CPU_GOAL_MS:g} ms: {verdict})."
        )
    return lines


def plot_timeline(settings: Settings, results: Sequence[Measurement], path: Path) -> Path | None:
    """Requests in flight over time, one panel per regime, every system's run in it."""
    if importlib.util.find_spec("matplotlib") is None:
        print("no timeline plot: matplotlib is not installed")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in settings.regimes if any(m.regime == r.name for m in results)]
    if not regimes:
        return None
    figure, axes = plt.subplots(len(regimes), 1, figsize=(11, 3.4 * len(regimes)), squeeze=False)
    factor = QUICK_LIMIT_FACTOR if settings.quick else 1.0
    for ax, regime in zip(axes[:, 0], regimes, strict=True):
        for m in (m for m in results if m.regime == regime.name):
            times, counts = m.steps
            ratio = f", {m.ratio:.2f} × bound" if m.ratio else ""
            (line,) = ax.step(
                times, counts, where="post", lw=0.9, label=f"{m.system} ({m.seconds:.0f}s{ratio})"
            )
            if m.search_starts_s is not None:
                ax.axvline(m.search_starts_s, ls=":", lw=0.9, color=line.get_color())
        ax.set_title(
            f"{regime.name}: {regime.binds} binds ({regime.rpm * factor:,.0f} RPM, "
            f"{regime.tpm * factor:,.0f} TPM); dotted: aprompt's search starts",
            fontsize=10,
        )
        ax.set_ylabel("requests in flight")
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the client started")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_results(settings: Settings, results: Sequence[Measurement]) -> list[Path]:
    env = environment()
    commit = git_commit(REPO_ROOT)
    text = render_markdown(settings, results, env, commit)
    print()
    print(text)
    if settings.out_dir is None:
        return []
    data = {
        "command": settings.command,
        "commit": commit,
        "label": settings.label,
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(settings, recurse=True).items()
        },
        "environment": env,
        "median_latency_s": settings.median_latency,
        "in_flight_sample_step_s": SAMPLE_STEP_S,
        "results": [
            {
                **{k: v for k, v in attrs.asdict(m).items() if k not in ("in_flight", "steps")},
                "tokens": m.tokens,
                "wall_over_bound": m.ratio,
                "cpu_ms_per_call": m.cpu_ms_per_call,
                # One string, so the JSON stays short: requests in flight every SAMPLE_STEP_S seconds.
                "in_flight": ",".join(map(str, m.in_flight)),
            }
            for m in results
        ],
    }
    written = [
        write_json(settings.out_dir / f"{settings.name}.json", data),
        write_text(settings.out_dir / f"{settings.name}.md", text),
    ]
    plot = plot_timeline(settings, results, settings.out_dir / f"{settings.name}.png")
    if plot is not None:
        written.append(plot)
    print("wrote " + ", ".join(str(p) for p in written))
    return written


# -- the embedded model --------------------------------------------------------------------------
#: ``--local``: how often the model server's slots are read (llama.cpp's ``/slots``, ``is_processing``).
SLOTS_POLL_S = 0.05
#: ``--local``: train / validation examples unless ``--train`` / ``--val`` say otherwise (a light run on
#: a CPU-only 135M model in a few minutes).
LOCAL_TRAIN, LOCAL_VAL = 16, 12
#: An idle stretch starting this soon after a trial was scored is counted as a gap between trials.
TRIAL_GAP_S = 0.3


@attrs.frozen
class LocalMeasurement:
    """One light optimization on the embedded model, seen from the model server's slots."""

    seconds: float
    search_s: float
    #: Fraction of the search's slot readings with at least one slot processing a request.
    busy_in_search: float
    #: Slots processing, on average over the search's readings, ÷ the server's slots.
    slots_in_search: float
    busy_overall: float
    readings: int
    requests: int
    #: CPU time of the event loop's thread (the client: aprompt, httpx, the optimizer) over the run.
    client_cpu_s: float
    score: float | None
    #: Idle stretches in the search (no slot processing): count, seconds in all, the longest, and the
    #: seconds of those that began within TRIAL_GAP_S of a trial being scored.
    idle_stretches: int = 0
    idle_s: float = 0.0
    longest_idle_s: float = 0.0
    idle_after_trial_s: float = 0.0


def busy_fraction(readings: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """The fraction of the readings ``(time, slots processing)`` in ``[start, end]`` with one or more."""
    inside = [n for t, n in readings if start <= t <= end and n >= 0]
    return sum(n > 0 for n in inside) / len(inside) if inside else 0.0


def idle_stretches(
    readings: Sequence[tuple[float, int]], start: float, end: float
) -> list[tuple[float, float]]:
    """``(from, to)`` of each run of readings in ``[start, end]`` with no slot processing: from its first
    idle reading to the next busy one (or ``end``)."""
    stretches, began = [], None
    for t, n in readings:
        if not start <= t <= end or n < 0:
            continue
        if n == 0 and began is None:
            began = t
        elif n > 0 and began is not None:
            stretches.append((began, t))
            began = None
    if began is not None:
        stretches.append((began, end))
    return stretches


# Reads the slots in its own process, so that the readings cost the client nothing: one line per
# reading, ``<time.monotonic()> <slots processing, -1 for a failed read>``, until terminated.
_SLOTS_POLLER = """
import http.client, json, sys, time
host, port, step = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
connection = http.client.HTTPConnection(host, port, timeout=5)
while True:
    try:
        connection.request("GET", "/slots")
        slots = json.loads(connection.getresponse().read())
        processing = sum(1 for slot in slots if slot.get("is_processing"))
    except (OSError, ValueError, TypeError, AttributeError, http.client.HTTPException):
        connection.close()
        processing = -1
    print(time.monotonic(), processing, flush=True)
    time.sleep(step)
"""


@contextmanager
def slots_poller(base_url: str, readings: list[tuple[float, int]]) -> Iterator[None]:
    """Read the server's ``/slots`` every SLOTS_POLL_S seconds in a subprocess while the block runs;
    after it, ``readings`` holds ``(time, slots processing)``, -1 for a failed read."""
    url = httpx.URL(base_url)
    command = [sys.executable, "-c", _SLOTS_POLLER, str(url.host), str(url.port), str(SLOTS_POLL_S)]
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, text=True)
        try:
            yield
        finally:
            process.terminate()
            process.wait(timeout=30)
            out.seek(0)
            for line in out:
                parts = line.split()
                if len(parts) == 2:
                    readings.append((float(parts[0]), int(parts[1])))


async def run_local(settings: Settings) -> LocalMeasurement:
    """One light optimization on the embedded model with the client ``local_lm`` gives, while the
    server's slots are read at ~20 Hz."""
    task = TASKS[settings.task]
    split = task.split(settings.data_dir, n_train=settings.n_train, n_val=settings.n_val, n_test=0)
    options: dict[str, Any] = {}
    if settings.concurrency is not None:
        options["max_concurrency"] = settings.concurrency
    readings: list[tuple[float, int]] = []
    phases: dict[str, float] = {}
    scored: list[float] = []
    local = aprompt.local_lm(n_parallel=settings.local_parallel, ctx_per_slot=4096, **options)
    async with local as lm:
        assert local.base_url is not None
        with slots_poller(local.base_url, readings):
            started, cpu = time.monotonic(), time.thread_time()

            def on_event(event: aprompt.Event) -> None:
                if isinstance(event, aprompt.PhaseStarted):
                    phases.setdefault(event.phase, time.monotonic())
                    print(f"  {time.monotonic() - started:7.1f}s  {event.phase} starts", flush=True)
                elif isinstance(event, aprompt.PhaseFinished):
                    phases[f"{event.phase}:end"] = time.monotonic()
                elif isinstance(event, aprompt.TrialScored):
                    scored.append(time.monotonic())

            result = await optimize_task(task, split, lm, settings, on_event)
            ended, client_cpu = time.monotonic(), time.thread_time() - cpu
        requests = lm.usage.requests
    search = (phases.get("search", ended), phases.get("search:end", ended))
    inside = [n for t, n in readings if search[0] <= t <= search[1] and n >= 0]
    idle = idle_stretches(readings, *search)
    after_trial = [(s, f) for s, f in idle if any(0.0 <= s - t <= TRIAL_GAP_S + SLOTS_POLL_S for t in scored)]
    return LocalMeasurement(
        seconds=round(ended - started, 1),
        search_s=round(search[1] - search[0], 1),
        busy_in_search=busy_fraction(readings, *search),
        slots_in_search=sum(inside) / len(inside) / settings.local_parallel if inside else 0.0,
        busy_overall=busy_fraction(readings, started, ended),
        readings=len(inside),
        requests=requests,
        client_cpu_s=round(client_cpu, 2),
        score=result.score,
        idle_stretches=len(idle),
        idle_s=round(sum(f - s for s, f in idle), 2),
        longest_idle_s=round(max((f - s for s, f in idle), default=0.0), 2),
        idle_after_trial_s=round(sum(f - s for s, f in after_trial), 2),
    )


def main_local(settings: Settings) -> LocalMeasurement:
    load = os.getloadavg()
    m = anyio.run(run_local, settings)
    verdict = "met" if m.busy_in_search >= 0.9 else "missed"
    per_call = f"{1000 * m.client_cpu_s / m.requests:.2f} ms" if m.requests else "—"
    text = "\n".join(
        [
            "# Throughput on the embedded model (llama.cpp): how busy the search keeps the server",
            "",
            f"command: `{settings.command}`; aprompt at commit {git_commit(REPO_ROOT)}",
            "",
            f"Task `{settings.task}`, {settings.n_train} train / {settings.n_val} validation examples, "
            f"{'the quick plan' if settings.quick else 'budget=light'}, {settings.local_parallel} server "
            f"slots, the client `local_lm` gives ({settings.concurrency or settings.local_parallel} in "
            f"flight). Busy: the server's `/slots` read every {1000 * SLOTS_POLL_S:.0f} ms "
            "(`is_processing`). Load average "
            f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} at the start. {environment_line(environment())}",
            "",
            f"- run: {m.seconds:.1f}s, {m.requests} requests, best val score {_cell(m.score, 3)}",
            f"- server busy (≥ 1 slot processing) during the search ({m.search_s:.1f}s, {m.readings} "
            f"readings): {100 * m.busy_in_search:.1f} % (goal ≥ 90 %: {verdict}); slots processing on "
            f"average: {100 * m.slots_in_search:.1f} % of {settings.local_parallel}; busy over the whole "
            f"run: {100 * m.busy_overall:.1f} %",
            f"- idle in the search: {m.idle_stretches} stretches, {m.idle_s:.2f}s in all (longest "
            f"{m.longest_idle_s:.2f}s), of which {m.idle_after_trial_s:.2f}s began within "
            f"{TRIAL_GAP_S:g}s of a trial being scored",
            f"- client CPU (the event loop's thread): {m.client_cpu_s:.2f}s, {per_call} per request",
        ]
    )
    print(text)
    if settings.out_dir is not None:
        write_text(settings.out_dir / f"{settings.name}_local.md", text)
        write_json(
            settings.out_dir / f"{settings.name}_local.json",
            {"command": settings.command, "load_average": load, **attrs.asdict(m)},
        )
    return m


# -- the command line ----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="intent", choices=sorted(TASKS))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--train", type=int, default=None, help=f"default 100 ({LOCAL_TRAIN} with --local)")
    parser.add_argument("--val", type=int, default=None, help=f"default 100 ({LOCAL_VAL} with --local)")
    parser.add_argument(
        "--regimes", default=",".join(REGIMES), help=f"comma-separated, of {', '.join(REGIMES)}"
    )
    parser.add_argument(
        "--latency", default="lognormal", choices=LATENCY_MODELS, help="the endpoint's latency"
    )
    parser.add_argument("--latency-scale", type=float, default=1.0, help="multiplies every latency")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="aprompt's max_concurrency (default: its own)"
    )
    parser.add_argument(
        "--dspy-threads", default="16,64", help="DSPy num_threads, comma-separated (each run)"
    )
    parser.add_argument("--dspy-retries", type=int, default=20, help="DSPy LM num_retries")
    parser.add_argument(
        "--dspy-python", default=None, help="interpreter with dspy (default: this one, if it has it)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--quick", action="store_true", help="tiny runs in seconds (prints only)")
    parser.add_argument(
        "--local", action="store_true", help="the embedded model's busy fraction instead (slow)"
    )
    parser.add_argument("--local-parallel", type=int, default=4, help="llama.cpp server slots (--local)")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: bench/results (none with --quick)"
    )
    parser.add_argument("--name", default="throughput", help="results file name, without extension")
    parser.add_argument("--label", default="", help="a label for the results' title, e.g. 'before'")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile each aprompt run: PROFILE.<regime>.<system>.prof"
    )
    args = parser.parse_args(argv)
    args.train = args.train if args.train is not None else LOCAL_TRAIN if args.local else 100
    args.val = args.val if args.val is not None else LOCAL_VAL if args.local else 100
    if args.quick:
        args.train, args.val = 8, 8
        args.latency_scale = QUICK_LATENCY_SCALE
        args.dspy_threads = str(args.dspy_threads).split(",")[0]
    systems = tuple(s for s in args.systems.split(",") if s)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    regimes = tuple(r for r in args.regimes.split(",") if r)
    if set(regimes) - set(REGIMES):
        parser.error(f"unknown regime(s): {', '.join(sorted(set(regimes) - set(REGIMES)))}")
    return Settings(
        task=args.task,
        data_dir=args.data_dir,
        n_train=args.train,
        n_val=args.val,
        regimes=tuple(REGIMES[r] for r in regimes),
        latency=args.latency,
        latency_scale=args.latency_scale,
        concurrency=args.concurrency,
        dspy_threads=tuple(int(t) for t in str(args.dspy_threads).split(",") if t),
        dspy_retries=args.dspy_retries,
        dspy_python=dspy_python(args.dspy_python) if "dspy" in systems else None,
        seed=args.seed,
        systems=systems,
        quick=args.quick,
        local=args.local,
        local_parallel=args.local_parallel,
        out_dir=args.out_dir if args.out_dir is not None or args.quick else RESULTS_DIR,
        name=args.name,
        label=args.label,
        command=command_line("throughput", sys.argv[1:] if argv is None else argv),
        profile=args.profile,
    )


def main(argv: Sequence[str] | None = None) -> list[Measurement]:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--dspy-worker"]:
        # The DSPy side of one run, in the interpreter that has dspy: one JSON line for the parent.
        print(json.dumps(dspy_worker(json.loads(args[1]))), flush=True)
        return []
    settings = parse_args(args)
    if settings.local:
        main_local(settings)
        return []
    results = run_all(settings)
    write_results(settings, results)
    return results


if __name__ == "__main__":
    main()
