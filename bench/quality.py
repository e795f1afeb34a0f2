"""Quality benchmark: how much each optimizer improves a program on the embedded local model, at what cost.

Per task (``bench/tasks``) and seed, side by side: the unoptimized program; the prompt a user would write by
hand (its instruction plus 3 training examples as demos: the bar to beat); each aprompt strategy asked for
(``aprompt:<name>`` for any name in ``aprompt._optimize.strategies.STRATEGIES``; by default
``bootstrap_random_search``, ``mipro_zero_shot`` and ``mipro``, ``budget="light"``); DSPy's
``MIPROv2(auto="light")`` and ``BootstrapFewShotWithRandomSearch`` (``dspy:bootstrap_rs``). All run on one
llama.cpp server (SmolLM2-135M on loopback), with the same train / validation data, and a held-out test
part no optimizer sees (200 examples by default, fewer only where a task has too few records). Every
request goes through one counting proxy, so LM calls and tokens are measured identically for both
libraries; each optimization starts with a fresh, empty response cache (aprompt's in memory, DSPy's in
memory), so calls it repeats itself are free for both and nothing carries over between runs.

Comparable calls: ``dspy:bootstrap_rs`` bootstraps at most 4 demos and shows at most 4 labeled ones per
predictor (aprompt's ``light`` budget and MIPROv2's), and its ``num_candidate_programs`` is set so that its
full validation evaluations (that number + 3: zero-shot, labeled-only, unshuffled) run as many programs on
the validation set as MIPROv2 light does by DSPy's own estimate (``minibatch_size × trials + |val| ×
(trials // 5 + 1)``, or ``|val| × trials`` when the valset is too small for mini-batches): see
:func:`bootstrap_rs_candidates`. Bootstrapping and proposal calls are not matched; the table reports the
calls each method really made. BootstrapFewShotWithRandomSearch takes no seed, so the seed shuffles its
training set. Equal calls: ``aprompt:<strategy>@calls=<method>`` runs the strategy under
``aprompt.Limits(max_lm_calls=N)``, N the calls ``<method>`` made on the same task and seed (listed
before it, or kept by ``--resume``); the run returns its best program when the cap is reached.

Reported per task and method: test accuracy (mean over seeds), its 95 % interval, optimization LM calls
(HTTP requests that reached the model, mean over seeds), prompt + completion tokens, and optimization wall
time. The interval is a t-interval over seeds (mean ± t(0.975, k-1)·sd/√k) where two or more seeds ran,
and otherwise (one seed, or an unoptimized program, which does not depend on the seed) a percentile
bootstrap over the test examples of the one run (2,000 resamples); the table says which.

Every finished run is appended to ``quality.json`` at once, so a long run can be stopped and continued
with ``--resume`` (same sizes and server settings; missing and failed runs are run, the rest kept).

    .venv/bin/python -m bench.quality                 # all tasks, seed 1; writes bench/results/quality.*
    .venv/bin/python -m bench.quality --seeds 1,2,3   # the issue's table: 3 seeds, 200 test examples
    .venv/bin/python -m bench.quality --seeds 1,2,3 --tasks negate,negate_twostep --resume
    .venv/bin/python -m bench.quality --methods aprompt:hand_few_shot,aprompt:mipro_reflective
    .venv/bin/python -m bench.quality --tasks intent --methods dspy:miprov2,aprompt:mipro@calls=dspy:miprov2
    .venv/bin/python -m bench.quality --quick         # 1 task, 6 examples per part, 2 trials; prints only
    .venv/bin/python -m bench.quality --rerender bench/results/quality.json   # table + plot from the JSON
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import attrs

import aprompt
from aprompt._optimize.strategies import STRATEGIES
from aprompt.lm.local import LOCAL_MODEL_NAME
from bench.counting_proxy import CountingProxy, Counts
from bench.local_model import warm_local_lm
from bench.report import (
    RESULTS_DIR,
    bootstrap_interval,
    command_line,
    environment,
    environment_line,
    markdown_table,
    mean_spread,
    t_interval,
    write_json,
    write_text,
)
from bench.tasks import DEFAULT_DATA_DIR, TASKS, Split, Task, split_records

#: The aprompt strategies run by default; any other name in ``STRATEGIES`` runs when asked for.
APROMPT_STRATEGIES = ("bootstrap_random_search", "mipro_zero_shot", "mipro")
DSPY_OPTIMIZERS = ("miprov2", "bootstrap_rs")
METHODS = (
    "aprompt:unoptimized",
    "aprompt:hand_few_shot",
    *(f"aprompt:{s}" for s in APROMPT_STRATEGIES),
    "dspy:unoptimized",
    *(f"dspy:{o}" for o in DSPY_OPTIMIZERS),
)
#: Not run by default: MIPROv2 with DSPy's stock adapter, which aborts on SmolLM2 (see
#: ``dspy_side.SingleFieldFallback``); the default DSPy methods use the fallback adapter.
STOCK_DSPY_METHODS = ("dspy:unoptimized_stock", "dspy:miprov2_stock")
ALL_METHODS = (*METHODS, *STOCK_DSPY_METHODS)
# The negation tasks first (SmolLM2 scores ~0 zero-shot and ~0.6 with 3 demos: optimization has room),
# then single-stage before multi-stage; SmolLM2 scores near 0 on intent_goal, so it tells the least and
# runs last.
DEFAULT_TASKS = "negate,negate_twostep,count,intent,count_listed,intent_goal"
#: Held-out test examples per task by default (fewer where a task has too few records).
DEFAULT_TEST = 200
QUICK_BUDGET = {
    "n_candidates": 2,
    "n_trials": 2,
    "minibatch_size": 4,
    "full_eval_every": 2,
    "max_bootstrapped_demos": 1,
    "max_labeled_demos": 1,
}


#: A method spec's suffix capping an aprompt strategy at another method's calls on the same task and
#: seed: ``aprompt:mipro@calls=dspy:miprov2`` runs ``aprompt:mipro`` with
#: ``limits=aprompt.Limits(max_lm_calls=N)``, N the calls that ``dspy:miprov2`` made (run it first).
CALLS_OF = "@calls="


def capped_parts(method: str) -> tuple[str, str | None]:
    """A method spec's own method and the method whose calls cap it (None when uncapped)."""
    own, marker, cap = method.partition(CALLS_OF)
    return own, cap if marker else None


def is_valid_method(method: str) -> bool:
    """A known method, or an aprompt strategy capped at the calls of a known optimizing method."""
    own, cap = capped_parts(method)
    if cap is None:
        return own in known_methods()
    strategies = {f"aprompt:{name}" for name in STRATEGIES}
    return own in strategies and cap in known_methods() and not is_unoptimized(cap)


def known_methods() -> tuple[str, ...]:
    """Every method name accepted: the fixed ones, and ``aprompt:<name>`` for every registered strategy
    (read at run time, so a strategy added to aprompt is a method here at once)."""
    registered = tuple(f"aprompt:{name}" for name in STRATEGIES)
    return tuple(dict.fromkeys((*ALL_METHODS, *registered)))


# Tiny mode skips the data and program summaries (each a few slow generations) in both libraries.
QUICK_GROUNDING = aprompt.Grounding(data_summary=False, program_summary=False)


@attrs.frozen
class Settings:
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    n_train: int
    n_val: int
    n_test: int
    parallel: int
    threads: int
    concurrency: int
    dspy_attempts: int
    quick: bool
    data_dir: Path
    out_dir: Path | None
    command: str
    resume: bool = False


@attrs.frozen
class Run:
    """One method on one task with one seed. Cost fields cover the optimization only (not the test run)."""

    task: str
    method: str
    seed: int | None
    test_score: float | None
    val_score: float | None
    lm_calls: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    failed_requests: int = 0
    library_lm_calls: int | None = None
    note: str = ""
    #: aprompt's final pick in one sentence (``result.pick.reason``): which program it returned and why.
    pick: str = ""
    #: The metric of every scored test example (for the bootstrap interval of a single run).
    test_scores: list[float] | None = None
    #: aprompt's LM calls per phase of the run (``result.phases``), in the order the phases started.
    phase_calls: dict[str, int] | None = None
    #: The returned program's instruction per predictor (aprompt runs), to read what it says.
    instructions: dict[str, str] | None = None
    #: Proposals dropped before the search (aprompt runs), each ``"predictor #index: reason"``.
    dropped: list[str] | None = None


def dspy_available() -> bool:
    # Look for it without importing it (importing dspy takes seconds).
    return importlib.util.find_spec("dspy") is not None


# -- aprompt -------------------------------------------------------------------------------------
def aprompt_lm(settings: Settings, base_url: str) -> aprompt.OpenAICompatibleLM:
    """A client on the proxy with its own empty in-memory cache, seeding sampled requests by rollout."""
    return aprompt.OpenAICompatibleLM(
        LOCAL_MODEL_NAME,
        base_url,
        api_key="",
        max_concurrency=settings.concurrency,
        timeout=600.0,
        cache=aprompt.ResponseCache.memory_only(1_000_000),
        seed_rollouts=True,  # the proposals drawn at temperature 1 repeat from run to run
    )


async def aprompt_test_scores(task: Task, program: object, split: Split, lm: aprompt.LM) -> list[float]:
    """The metric of every scored test example (one the LM never answered is left out, as in aprompt's
    own mean)."""
    evaluation = await aprompt.evaluate(program, task.examples(split.test), task.metric, lm=lm)
    return [r.score for r in evaluation.results if r.score is not None]


async def run_aprompt(
    settings: Settings,
    task: Task,
    split: Split,
    strategy: str,
    seed: int,
    proxy: CountingProxy,
    *,
    max_lm_calls: int | None = None,
    method: str | None = None,
) -> Run:
    """One aprompt strategy; with ``max_lm_calls``, under that hard limit (recorded as ``method``)."""
    budget: Any = {**QUICK_BUDGET, "val_size": settings.n_val} if settings.quick else "light"
    limits = aprompt.Limits(max_lm_calls=max_lm_calls) if max_lm_calls is not None else None
    label = method or f"aprompt:{strategy}"
    capped = f"at most {max_lm_calls} LM calls" if max_lm_calls is not None else ""
    async with aprompt_lm(settings, proxy.base_url) as lm:
        before, started = proxy.counts(), time.monotonic()
        try:
            result = await aprompt.optimize(
                task.program(),
                task.examples(split.train),
                task.metric,
                valset=task.examples(split.val),
                lm=lm,
                strategy=strategy,
                budget=budget,
                seed=seed,
                grounding=QUICK_GROUNDING if settings.quick else None,
                limits=limits,
            )
        except aprompt.RunLimitError as exc:  # the cap ran out before the program as written was scored
            seconds, spent = time.monotonic() - started, proxy.counts() - before
            failed = _run(task, label, seed, None, None, spent, seconds, None)
            return attrs.evolve(failed, note=f"{capped}: {exc}")
        seconds, spent = time.monotonic() - started, proxy.counts() - before
    async with aprompt_lm(settings, proxy.base_url) as lm:
        test = await aprompt_test_scores(task, result.program, split, lm)
    run = _run(task, label, seed, test, result.score, spent, seconds, result.usage.lm_calls)
    phases = sorted(result.phases, key=lambda p: p.started)
    stopped = f"stopped by {result.stopped_by}" if result.stopped_by else ""
    return attrs.evolve(
        run,
        note=", ".join(part for part in (capped, stopped) if part),
        pick=result.pick.reason if result.pick is not None else "",
        phase_calls={p.phase: p.usage.lm_calls for p in phases},
        instructions={name: p.instruction for name, p in aprompt.named_predictors(result.program)},
        dropped=[f"{name} #{index}: {reason}" for name, index, reason in result.dropped],
    )


#: Training examples a hand-written prompt shows as demos: what a user writes before optimizing.
HAND_DEMOS = 3


def hand_few_shot(task: Task, split: Split, seed: int) -> object:
    """The program with the prompt a user would write by hand: its own instruction plus ``HAND_DEMOS``
    training examples (a seeded draw) as demos of every predictor whose outputs they label (the last
    stage of a two-stage program, shown with the fields the examples have; an intermediate stage has
    no labels to show)."""
    program = task.program()
    drawn = random.Random(f"{seed}:hand").sample(task.examples(split.train), HAND_DEMOS)
    values = [{**e.inputs, **e.labels} for e in drawn]
    for _, predictor in aprompt.named_predictors(program):
        names = [*predictor.signature.input_names, *predictor.signature.output_names]
        if all(set(predictor.signature.output_names) <= set(v) for v in values):
            predictor.demos = [{name: v[name] for name in names if name in v} for v in values]
    return program


async def run_aprompt_hand_few_shot(
    settings: Settings, task: Task, split: Split, seed: int, proxy: CountingProxy
) -> Run:
    async with aprompt_lm(settings, proxy.base_url) as lm:
        test = await aprompt_test_scores(task, hand_few_shot(task, split, seed), split, lm)
    return _run(task, "aprompt:hand_few_shot", seed, test, None, Counts(), 0.0, 0)


async def run_aprompt_unoptimized(settings: Settings, task: Task, split: Split, proxy: CountingProxy) -> Run:
    async with aprompt_lm(settings, proxy.base_url) as lm:
        test = await aprompt_test_scores(task, task.program(), split, lm)
    return _run(task, "aprompt:unoptimized", None, test, None, Counts(), 0.0, 0)


# -- DSPy (runs in a worker thread; the proxy keeps serving on the event loop) ---------------------
def bootstrap_rs_candidates(n_val: int, n_predictors: int, *, quick: bool) -> int:
    """``num_candidate_programs`` for DSPy's BootstrapFewShotWithRandomSearch, so that its full
    validation evaluations (this number + 3) run as many programs on the validation set as DSPy's
    MIPROv2 does in the benchmark (``auto="light"``, or the quick budget), by MIPROv2's own estimate.

    MIPROv2 light: 6 candidates, a valset of at most 100, trials ``T = max(2·V·log2 6, 1.5·6)`` with
    ``V = 2 × predictors``, mini-batches of 35 only when the valset has more than 50 examples; it runs
    ``35·T + |val|·(T // 5 + 1)`` programs, or ``|val|·T`` without mini-batches.
    """
    if quick:
        val, trials, minibatch_size, minibatch = (
            n_val,
            QUICK_BUDGET["n_trials"],
            QUICK_BUDGET["minibatch_size"],
            True,
        )
    else:
        val = min(n_val, 100)
        trials = int(max(2 * 2 * n_predictors * math.log2(6), 1.5 * 6))
        minibatch_size, minibatch = 35, val > 50
    runs = minibatch_size * trials + val * (trials // 5 + 1) if minibatch else val * trials
    return max(1, math.floor(runs / max(1, val) + 0.5) - 3)


def run_dspy(
    settings: Settings, task: Task, split: Split, method: str, seed: int | None, proxy: CountingProxy
) -> Run:
    """One DSPy method: ``dspy:unoptimized``, ``dspy:miprov2`` or ``dspy:bootstrap_rs`` (``_stock``: with
    DSPy's stock adapter); ``seed`` is None for the unoptimized program."""
    from bench import dspy_side
    from bench.tasks import dspy_programs

    name = method.partition(":")[2]
    stock = name.endswith("_stock")
    optimizer = name.removesuffix("_stock")
    dspy_side.quiet()
    dspy_side.use_adapter(lenient=not stock)
    dspy_side.fresh_cache()
    task_lm = dspy_side.make_lm(proxy.base_url, LOCAL_MODEL_NAME)
    metric = dspy_programs.metric(task)
    program = dspy_programs.PROGRAMS[task.name]()
    compiled: Any | None = None
    val_score, note = None, ""
    before, started = proxy.counts(), time.monotonic()
    if seed is not None:
        compiled, note = compile_dspy(
            settings, task, split, seed, proxy.base_url, program, metric, task_lm, optimizer
        )
        program = compiled if compiled is not None else program
        val_score = dspy_val_score(compiled)
    seconds, spent = time.monotonic() - started, proxy.counts() - before
    test: list[float] | None = None
    if compiled is not None or seed is None:
        dspy_side.fresh_cache()
        test = dspy_side.evaluate(
            program,
            dspy_programs.examples(task, split.test),
            metric,
            lm=task_lm,
            num_threads=settings.concurrency,
        )
    run = _run(task, method, seed, test, val_score, spent, seconds if seed is not None else 0.0, None)
    return attrs.evolve(run, note=note)


def dspy_val_score(compiled: Any | None) -> float | None:
    """The validation score DSPy reports for its pick, in [0, 1]: MIPROv2's ``score``, or the best of
    BootstrapFewShotWithRandomSearch's ``candidate_programs`` (both in percent)."""
    score = getattr(compiled, "score", None)
    candidates = getattr(compiled, "candidate_programs", None)
    if not isinstance(score, int | float) and candidates:
        score = candidates[0].get("score")
    return float(score) / 100.0 if isinstance(score, int | float) else None


def compile_dspy(
    settings: Settings,
    task: Task,
    split: Split,
    seed: int,
    base_url: str,
    program: Any,
    metric: Any,
    task_lm: Any,
    optimizer: str = "miprov2",
) -> tuple[Any | None, str]:
    """MIPROv2 or BootstrapFewShotWithRandomSearch, retried with another seed when it raises (MIPROv2
    aborts when one instruction proposal cannot be parsed); returns the compiled program (None if every
    attempt failed) and a note."""
    from bench import dspy_side
    from bench.tasks import dspy_programs

    demos: dict[str, int] = (
        {k: QUICK_BUDGET[k] for k in ("max_bootstrapped_demos", "max_labeled_demos")}
        if settings.quick
        else {"max_bootstrapped_demos": 4, "max_labeled_demos": 4}  # aprompt's and MIPROv2's light
    )
    budget: dict[str, Any] = (
        {
            "auto": None,
            "num_candidates": QUICK_BUDGET["n_candidates"],
            "num_trials": QUICK_BUDGET["n_trials"],
            "minibatch_size": QUICK_BUDGET["minibatch_size"],
            **demos,
            "data_aware_proposer": False,
            "program_aware_proposer": False,
        }
        if settings.quick
        else {"auto": "light"}
    )
    n_programs = bootstrap_rs_candidates(len(split.val), task.n_stages, quick=settings.quick)
    errors = []
    for attempt in range(settings.dspy_attempts):
        dspy_side.fresh_cache()
        trainset = dspy_programs.examples(task, split.train)
        valset = dspy_programs.examples(task, split.val)
        try:
            if optimizer == "bootstrap_rs":
                compiled = dspy_side.compile_bootstrap_rs(
                    program.deepcopy(),
                    trainset,
                    valset,
                    metric,
                    task_lm=task_lm,
                    seed=seed + 1000 * attempt,
                    num_threads=settings.concurrency,
                    num_candidate_programs=n_programs,
                    **demos,
                )
            else:
                compiled = dspy_side.compile_mipro(
                    program.deepcopy(),
                    trainset,
                    valset,
                    metric,
                    task_lm=task_lm,
                    prompt_lm=dspy_side.make_lm(base_url, LOCAL_MODEL_NAME, temperature=1.0),
                    seed=seed + 1000 * attempt,
                    num_threads=settings.concurrency,
                    **budget,
                )
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            print(f"  DSPy {optimizer} attempt {attempt + 1} failed: {errors[-1]}", flush=True)
            continue
        notes = [f"{n_programs} candidate programs"] if optimizer == "bootstrap_rs" else []
        notes += [f"{attempt + 1} attempts ({'; '.join(errors)})"] if errors else []
        return compiled, ", ".join(notes)
    return None, f"failed {len(errors)} attempts: {'; '.join(errors)}"


def _run(
    task: Task,
    method: str,
    seed: int | None,
    test: Sequence[float] | None,
    val: float | None,
    spent: Counts,
    seconds: float,
    library_calls: int | None,
) -> Run:
    return Run(
        task=task.name,
        method=method,
        seed=seed,
        test_score=math.fsum(test) / len(test) if test else None,
        val_score=val,
        lm_calls=spent.requests,
        prompt_tokens=spent.prompt_tokens,
        completion_tokens=spent.completion_tokens,
        seconds=round(seconds, 2),
        failed_requests=spent.failed,
        library_lm_calls=library_calls,
        test_scores=list(test) if test is not None else None,
    )


# -- the run ---------------------------------------------------------------------------------------
async def run_method(
    settings: Settings,
    task: Task,
    split: Split,
    method: str,
    seed: int,
    proxy: CountingProxy,
    runs: Sequence[Run] = (),
) -> Run:
    """One method on one task and seed; a capped method takes its cap from ``runs`` (the runs so far)."""
    own, cap = capped_parts(method)
    if cap is not None:
        finished = (r for r in runs if r.test_score is not None)
        peer = next((r for r in finished if (r.task, r.method, r.seed) == (task.name, cap, seed)), None)
        if peer is None:
            note = f"no finished {cap} run on this task and seed to take the calls from: run it first"
            return attrs.evolve(_run(task, method, seed, None, None, Counts(), 0.0, 0), note=note)
        strategy = own.partition(":")[2]
        return await run_aprompt(
            settings, task, split, strategy, seed, proxy, max_lm_calls=peer.lm_calls, method=method
        )
    library, _, name = method.partition(":")
    if library == "dspy":
        seed_or_none = None if is_unoptimized(method) else seed
        return await anyio.to_thread.run_sync(
            partial(run_dspy, settings, task, split, method, seed_or_none, proxy)
        )
    if name == "unoptimized":
        return await run_aprompt_unoptimized(settings, task, split, proxy)
    if name == "hand_few_shot":
        return await run_aprompt_hand_few_shot(settings, task, split, seed, proxy)
    return await run_aprompt(settings, task, split, name, seed, proxy)


def is_unoptimized(method: str) -> bool:
    return method.partition(":")[2].startswith("unoptimized")


def done_runs(settings: Settings) -> list[Run]:
    """With ``--resume``: the runs of the saved ``quality.json`` made with the same settings (those
    that decide a result: data, sizes, server and client settings), to be kept and not run again."""
    path = settings.out_dir / "quality.json" if settings.out_dir is not None else None
    if not settings.resume or path is None or not path.exists():
        return []
    data = json.loads(path.read_text())
    deciding = ("n_train", "n_val", "n_test", "parallel", "threads", "concurrency", "quick")
    saved = data["settings"]
    changed = [k for k in deciding if saved.get(k) != getattr(settings, k)]
    if changed:
        raise SystemExit(f"--resume: {path} was made with other settings ({', '.join(changed)})")
    return [Run(**run) for run in data["runs"]]


def task_split(settings: Settings, task: Task) -> Split:
    """The task's fixed split: ``n_train`` and ``n_val`` examples, and ``n_test`` or as many as the task
    has left after those (a task too small for its train and validation parts is an error)."""
    records = task.records(settings.data_dir)
    left = len(records) - settings.n_train - settings.n_val
    if left < 1:
        raise SystemExit(
            f"task {task.name} has {len(records)} examples: too few for {settings.n_train} train and "
            f"{settings.n_val} validation examples and a test part"
        )
    n_test = min(settings.n_test, left)
    if n_test < settings.n_test:
        print(f"{task.name}: {n_test} test examples (all the task has left)", flush=True)
    return split_records(records, n_train=settings.n_train, n_val=settings.n_val, n_test=n_test)


async def run_all(settings: Settings) -> list[Run]:
    runs = done_runs(settings)
    done = {(r.task, r.method, r.seed) for r in runs if r.test_score is not None}
    # A failed run of a method asked for now is run again; runs of other methods are kept as they are.
    runs = [r for r in runs if (r.task, r.method, r.seed) in done or r.method not in settings.methods]
    if runs:
        print(f"resuming: keeping {len(runs)} runs from the saved results", flush=True)
    methods = [m for m in settings.methods if not needs_dspy(settings, m, done) or dspy_available()]
    skipped = sorted(set(settings.methods) - set(methods))
    if skipped:
        print(f"skipping {', '.join(skipped)}: dspy is not installed (pip install -e '.[bench]')")
    async with warm_local_lm(parallel=settings.parallel, threads=settings.threads) as (_, base_url):
        async with CountingProxy(base_url, max_connections=4 * settings.concurrency) as proxy:
            for task_name in settings.tasks:
                task = TASKS[task_name]
                split = task_split(settings, task)
                for method in methods:
                    # An unoptimized program at temperature 0 does not depend on the seed: run it once.
                    seeds = settings.seeds[:1] if is_unoptimized(method) else settings.seeds
                    for seed in seeds:
                        if (task.name, method, None if is_unoptimized(method) else seed) in done:
                            continue
                        run = await run_method(settings, task, split, method, seed, proxy, runs)
                        runs.append(run)
                        print(describe(run), flush=True)
                        write_results(settings, runs, final=False)
    return runs


def needs_dspy(settings: Settings, method: str, done: set[tuple[str, str, int | None]]) -> bool:
    """Whether running ``method`` now takes DSPy: a DSPy method with runs left to do, or a method capped
    at the calls of a DSPy method with runs left to do (kept runs, from ``--resume``, need nothing)."""

    def left(name: str) -> bool:
        seeds = (None,) if is_unoptimized(name) else settings.seeds
        return any((task, name, seed) not in done for task in settings.tasks for seed in seeds)

    own, cap = capped_parts(method)
    return (own.startswith("dspy:") and left(own)) or (
        cap is not None and cap.startswith("dspy:") and left(cap)
    )


def describe(run: Run) -> str:
    val = f"val {run.val_score:.3f}, " if run.val_score is not None else ""
    test = f"test {run.test_score:.3f}" if run.test_score is not None else "FAILED"
    note = f" ({run.note})" if run.note else ""
    return (
        f"{run.task:13} {run.method:33} seed {run.seed if run.seed is not None else '-'}: "
        f"{test}, {val}{run.lm_calls} LM calls, "
        f"{run.prompt_tokens + run.completion_tokens} tokens, {run.seconds:.0f}s{note}"
        + (f"\n    final pick: {run.pick}" if run.pick else "")
        + (
            "\n    LM calls by phase: " + ", ".join(f"{k} {v}" for k, v in run.phase_calls.items())
            if run.phase_calls
            else ""
        )
        + "".join(f"\n    instruction of {name}: {text!r}" for name, text in (run.instructions or {}).items())
        + (f"\n    proposals dropped: {len(run.dropped)}" if run.dropped else "")
    )


# -- results ---------------------------------------------------------------------------------------
def summarize(runs: Sequence[Run], order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per (task, method): means over seeds, and the test score's 95 % interval (see the module
    docstring); a task's rows in the order of ``order``, then any other method in the order it ran."""
    rows = []
    keys = list(dict.fromkeys((r.task, r.method) for r in runs))
    rank = {method: position for position, method in enumerate(order)}
    tasks = list(dict.fromkeys(task for task, _ in keys))
    keys.sort(key=lambda key: (tasks.index(key[0]), rank.get(key[1], len(rank))))
    for task, method in keys:
        group = [r for r in runs if r.task == task and r.method == method]
        tests = [r.test_score for r in group if r.test_score is not None]
        test_mean, test_sd = mean_spread(tests)
        vals = [r.val_score for r in group if r.val_score is not None]
        interval, over = test_interval(task, method, group)
        scored = [r for r in group if r.test_scores is not None]
        rows.append(
            {
                "task": task,
                "method": method,
                "n_seeds": len(group),
                "n_failed": len(group) - len(tests),
                "n_test": len(scored[0].test_scores or ()) if scored else None,
                "test_mean": test_mean,
                "test_sd": test_sd,
                "test_low": interval[0] if interval else None,
                "test_high": interval[1] if interval else None,
                "interval_over": over,
                "test_min": min(tests, default=None),
                "test_max": max(tests, default=None),
                "val_mean": mean_spread(vals)[0],
                "lm_calls": mean_spread([float(r.lm_calls) for r in group])[0],
                "tokens": mean_spread([float(r.prompt_tokens + r.completion_tokens) for r in group])[0],
                "seconds": mean_spread([r.seconds for r in group])[0],
            }
        )
    return rows


def test_interval(task: str, method: str, group: Sequence[Run]) -> tuple[tuple[float, float] | None, str]:
    """The 95 % interval of a row's test score and what it is over: a t-interval over the seeds that
    finished (two or more), else a percentile bootstrap over the test examples of the one run; both
    clipped to [0, 1]."""
    finished = [r for r in group if r.test_score is not None]
    interval: tuple[float, float] | None = None
    if len(finished) >= 2:
        interval = t_interval([r.test_score for r in finished if r.test_score is not None])
        over = f"{len(finished)} seeds (t)"
    elif finished and finished[0].test_scores:
        scores = finished[0].test_scores
        interval = bootstrap_interval(scores, seed=f"{task}:{method}")
        over = f"{len(scores)} examples (bootstrap)"
    else:
        return None, ""
    if interval is None:
        return None, ""
    return (max(0.0, interval[0]), min(1.0, interval[1])), over


def render_markdown(settings: Settings, rows: Sequence[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = [
        "# Quality benchmark: aprompt vs DSPy on the embedded local model",
        "",
        f"command: `{settings.command}`",
        "",
        f"SmolLM2-135M-Instruct (llama.cpp, {settings.parallel} slots, {settings.threads} threads) on "
        "loopback, "
        f"shared by both libraries through one counting proxy; {settings.n_train} train / {settings.n_val} "
        f"validation / {settings.n_test} test examples per task (fixed split; fewer test examples where a "
        f"task has too few, see the `test n` column); seeds "
        f"{', '.join(map(str, settings.seeds))}; client concurrency {settings.concurrency} (aprompt "
        f"max_concurrency, DSPy num_threads); budget: "
        + (
            "quick"
            if settings.quick
            else 'aprompt `budget="light"`, DSPy MIPROv2 `auto="light"`, DSPy '
            "BootstrapFewShotWithRandomSearch with 4 + 4 demos and as many validation runs as MIPROv2 light"
        )
        + ". LM calls, tokens and seconds are the optimization's, means over seeds (the test run is not "
        "counted); test = held-out accuracy, mean over seeds, with its 95 % interval: a t-interval over "
        "the seeds where two or more ran, else a percentile bootstrap over the test examples of the one "
        "run (an unoptimized program does not depend on the seed and runs once); `over` says which. "
        "`aprompt:hand_few_shot` is the instruction plus 3 training examples as demos (no optimization).",
        "",
        "`dspy:*` rows use DSPy's chat adapter plus one fallback (`bench/dspy_side.py`): a reply to a "
        "signature with a single output field that lacks DSPy's field markers is read whole, as "
        "aprompt's parser reads it. `dspy:*_stock` rows use DSPy's stock adapter, with which MIPROv2 "
        "aborts on this model when an instruction proposal cannot be parsed.",
        "",
        environment_line(env),
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [f"## {task}: {TASKS[task].description}", ""]
        table = []
        for row in (r for r in rows if r["task"] == task):
            table.append(
                [
                    row["method"],
                    test_cell(row),
                    interval_cell(row),
                    row["interval_over"] or "—",
                    row["n_test"] if row.get("n_test") is not None else "—",
                    f"{row['val_mean']:.3f}" if row["val_mean"] is not None else "—",
                    f"{row['lm_calls']:,.0f}",
                    f"{row['tokens']:,.0f}",
                    f"{row['seconds']:.0f}",
                    row["n_seeds"],
                ]
            )
        header = [
            "method",
            "test accuracy",
            "95 % interval",
            "over",
            "test n",
            "val (best)",
            "LM calls",
            "tokens",
            "wall s",
            "seeds",
        ]
        lines += [markdown_table(header, table), ""]
    return "\n".join(lines)


def test_cell(row: dict[str, Any]) -> str:
    if row["test_mean"] is None:
        return f"failed ({row['n_failed']} of {row['n_seeds']})"
    failed = f", {row['n_failed']} failed" if row["n_failed"] else ""
    return f"{row['test_mean']:.3f}{failed}"


def interval_cell(row: dict[str, Any]) -> str:
    if row.get("test_low") is None or row.get("test_high") is None:
        return "—"
    return f"{row['test_low']:.3f}–{row['test_high']:.3f}"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy against optimization LM calls, one panel per task (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return None
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(9.0, 4.2 * len(tasks)), 4.2), squeeze=False)
    # One marker and colour per method in every panel (the colour cycle would restart per panel).
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for axis, task in zip(axes[0], tasks, strict=True):
        for row in (r for r in rows if r["task"] == task and r["test_mean"] is not None):
            index = methods.index(row["method"])
            low, high = row.get("test_low"), row.get("test_high")
            axis.errorbar(
                row["lm_calls"],
                row["test_mean"],
                yerr=[[row["test_mean"] - low], [high - row["test_mean"]]] if low is not None else None,
                marker="o*sD^vXPxhp<>"[index % 13],
                color=f"C{index % 10}",
                linestyle="none",
                capsize=3,
                label=row["method"],
            )
        axis.set_title(task)
        shown = [r.get("test_high") or r["test_mean"] for r in rows if r["task"] == task and r["test_mean"]]
        axis.set_ylim(0.0, min(1.02, max(shown, default=0.0) + 0.05))
        axis.set_xlabel("optimization LM calls")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    # The legend of every panel together: a method missing from the first panel is still listed.
    legend: dict[str, Any] = {}
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(
    settings: Settings, runs: Sequence[Run], *, final: bool = True, env: dict[str, Any] | None = None
) -> list[Path]:
    """Write the JSON, the table and the plot (after every run too, so a stopped run keeps its rows)."""
    env = env or environment()
    rows = summarize(runs, settings.methods)
    text = render_markdown(settings, rows, env)
    if final:
        print()
        print(text)
    if settings.out_dir is None:
        return []
    data = {
        "command": settings.command,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(settings).items()},
        "environment": env,
        "summary": rows,
        "runs": [attrs.asdict(r) for r in runs],
    }
    written = [
        write_json(settings.out_dir / "quality.json", data),
        write_text(settings.out_dir / "quality.md", text),
    ]
    picture = plot(rows, settings.out_dir / "quality.png")
    if picture is not None:
        written.append(picture)
    if final:
        print("wrote " + ", ".join(str(p) for p in written))
    return written


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="BIG-bench task folders")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=(
            f"comma-separated, of {', '.join(known_methods())}; an aprompt strategy may carry "
            f"'{CALLS_OF}<method>' to cap its LM calls at that method's on the same task and seed "
            f"(e.g. aprompt:mipro{CALLS_OF}dspy:miprov2, after dspy:miprov2)"
        ),
    )
    parser.add_argument("--seeds", default="1", help="comma-separated optimizer seeds (e.g. 1,2,3)")
    parser.add_argument("--train", type=int, default=30, help="training examples per task")
    parser.add_argument("--val", type=int, default=30, help="validation examples per task")
    parser.add_argument(
        "--test",
        type=int,
        default=DEFAULT_TEST,
        help="held-out test examples per task (fewer where a task has too few)",
    )
    parser.add_argument("--parallel", type=int, default=4, help="llama.cpp server slots")
    # One thread short of the cores: llama.cpp's threads spin-wait for each other, and when one of them
    # loses its core to another process throughput collapses (measured here: 20x slower).
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="llama.cpp CPU threads"
    )
    parser.add_argument("--concurrency", type=int, default=0, help="client concurrency (default: --parallel)")
    parser.add_argument(
        "--dspy-attempts", type=int, default=2, help="MIPROv2 runs tried (new seed) when one raises"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny run: 1 task, 6 examples per part, 2 trials"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of the saved quality.json (same settings) and run only the rest",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="default: bench/results (none with --quick)"
    )
    args = parser.parse_args(argv)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = [t for t in tasks if t not in TASKS] + [m for m in methods if not is_valid_method(m)]
    if unknown:
        parser.error(f"unknown task or method: {', '.join(unknown)}")
    if args.quick:
        tasks = tasks[:1]
        args.train, args.val, args.test = min(args.train, 6), min(args.val, 6), min(args.test, 6)
    return Settings(
        tasks=tasks,
        methods=methods,
        seeds=tuple(int(s) for s in args.seeds.split(",") if s),
        n_train=args.train,
        n_val=args.val,
        n_test=args.test,
        parallel=args.parallel,
        threads=args.threads,
        concurrency=args.concurrency or args.parallel,
        dspy_attempts=args.dspy_attempts,
        quick=args.quick,
        data_dir=args.data_dir,
        out_dir=args.out_dir if args.out_dir is not None or args.quick else RESULTS_DIR,
        command=command_line("quality", sys.argv[1:] if argv is None else argv),
        resume=args.resume,
    )


def rerender(path: Path) -> list[Run]:
    """Rewrite the table and the plot from a saved ``quality.json`` (no LM calls), next to it."""
    data = json.loads(path.read_text())
    saved = dict(data["settings"])
    for key in ("tasks", "methods", "seeds"):
        saved[key] = tuple(saved[key])
    saved["data_dir"], saved["out_dir"] = Path(saved["data_dir"]), path.parent
    runs = [Run(**run) for run in data["runs"]]
    write_results(Settings(**saved), runs, env=data["environment"])
    return runs


def main(argv: Sequence[str] | None = None) -> list[Run]:
    if argv is None:
        argv = sys.argv[1:]
    if len(argv) == 2 and argv[0] == "--rerender":
        return rerender(Path(argv[1]))
    settings = parse_args(argv)
    runs = anyio.run(run_all, settings)
    write_results(settings, runs)
    return runs


if __name__ == "__main__":
    main()
