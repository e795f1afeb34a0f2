"""Every benchmark script imports and runs in its tiny mode, so the benchmarks never rot.

The DSPy parts run only where ``dspy`` is installed (the ``bench`` extra); the quality benchmark needs
the embedded model and is marked ``local_model``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import scipy.stats

import aprompt
from aprompt._optimize.strategies import STRATEGIES
from aprompt.testing.fake_openai import ServerRateLimit
from bench.report import bootstrap_interval, t_interval, t_quantile_975
from bench.sim_server import SimServer, latency_model, median_latency, request_log
from bench.simulated_lm import SimulatedLM, aprompt_output_fields, dspy_output_fields
from bench.tasks import TASKS, split_records
from bench.tasks.metrics import choice_accuracy, count_accuracy, sentence_match

BENCH_SCRIPTS = [
    "bench.quality",
    "bench.throughput",
    "bench.sim_server",
    "bench.lm_client",
    "bench.tpe",
    "bench.regret",
    "bench.reply_format",
    "bench.parse_retries",
    "bench.scale",
    "bench.proposals",
    "bench.pick_selection",
    "bench.cpu_breakdown",
    "bench.cpu_side_by_side",
]
HAS_DSPY = importlib.util.find_spec("dspy") is not None


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("module", BENCH_SCRIPTS)
def test_every_bench_script_imports(module: str) -> None:
    assert hasattr(importlib.import_module(module), "main")


def test_the_splits_are_disjoint_fixed_and_independent_of_the_train_size() -> None:
    records = TASKS["count"].records()
    small = split_records(records, n_train=10, n_val=10, n_test=20)
    large = split_records(records, n_train=50, n_val=10, n_test=20)
    assert small.test == large.test and small.val == large.val
    ids = [r.id for part in (large.train, large.val, large.test) for r in part]
    assert len(ids) == len(set(ids)) == 80


def test_every_task_builds_examples_whose_gold_answer_scores_one() -> None:
    for task in TASKS.values():
        records = task.records()[:20]
        for example in task.examples(records):
            assert task.score(example.labels[task.answer_name], example.labels[task.answer_name]) == 1.0


def test_the_scorers_accept_the_same_answer_written_differently() -> None:
    assert choice_accuracy("Add to playlist.", ["add_to_playlist"]) == 1.0
    assert choice_accuracy("play_music", ["add_to_playlist"]) == 0.0
    assert count_accuracy("There are seven.", ["7"]) == 1.0
    assert count_accuracy(7, ["seven", "7"]) == 1.0
    assert count_accuracy("none given", ["7"]) == 0.0


def test_the_sentence_scorer_forgives_case_spacing_and_a_final_period_only() -> None:
    gold = ["the nurse does not play tennis"]
    assert sentence_match("The nurse  does not play tennis.", gold) == 1.0
    assert sentence_match(" the nurse does not play tennis ", gold) == 1.0
    assert sentence_match("the nurse does not play the tennis", gold) == 0.0
    assert sentence_match("the nurse doesn't play tennis", gold) == 0.0
    assert sentence_match("the nurse does not play tennis!", gold) == 0.0


def test_the_negation_tasks_read_sentences_and_their_negations() -> None:
    for name, stages in (("negate", 1), ("negate_twostep", 2)):
        task = TASKS[name]
        example = task.examples(task.records()[1:2])[0]
        assert example.inputs == {"sentence": "the nurse plays tennis"}
        assert example.labels == {"negated": "the nurse does not play tennis"}
        predictors = aprompt.named_predictors(task.program())
        assert len(predictors) == task.n_stages == stages
        assert predictors[-1][1].signature.output_names == ("negated",)


def test_the_simulated_lm_answers_each_library_in_its_own_format() -> None:
    lm = SimulatedLM({"Play jazz": "play_music"}, frozenset({"intent"}))
    aprompt_system = "Do it.\n\nReply in exactly this format, each field on its own line, in this order:\n"
    aprompt_system += "Intent: <one of: play_music, get_weather>"
    reply = lm.reply(
        [{"role": "system", "content": aprompt_system}, {"role": "user", "content": "Utterance: Play jazz"}]
    )
    assert reply.startswith("Intent: ") and reply.split(": ")[1] in {"play_music", "get_weather"}
    dspy_system = (
        "Your input fields are:\n1. `utterance` (str):\nYour output fields are:\n"
        "1. `reasoning` (str): \n2. `intent` (Literal['play_music', 'get_weather']): the intent\n"
        "All interactions will be structured in the following way"
    )
    reply = lm.reply([{"role": "system", "content": dspy_system}, {"role": "user", "content": "Play jazz"}])
    assert reply.startswith("[[ ## reasoning ## ]]\n") and reply.endswith("[[ ## completed ## ]]")
    assert "[[ ## intent ## ]]\n" in reply
    assert [f.name for f in dspy_output_fields(dspy_system)] == ["reasoning", "intent"]
    assert [f.kind for f in aprompt_output_fields(aprompt_system)] == ["choice"]


def test_the_throughput_benchmark_runs_every_regime_in_quick_mode(tmp_path: Path) -> None:
    throughput = importlib.import_module("bench.throughput")
    systems = "aprompt,aprompt-untold,dspy" if HAS_DSPY else "aprompt,aprompt-untold"
    results = throughput.main(["--quick", "--systems", systems, "--out-dir", str(tmp_path)])
    assert {m.regime for m in results} == {"rate", "latency", "tokens"}
    for m in results:
        assert m.answered > 0 and m.lost == 0 and m.bound_s > 0, m
        assert m.mean_in_flight > 0 and max(m.in_flight) <= m.max_in_flight, m
        assert m.cpu_s > 0, m
    told = [m for m in results if m.system == "aprompt, told the limits"]
    assert len(told) == 3 and all(m.rate_limited == 0 and m.search_starts_s is not None for m in told)
    if HAS_DSPY:
        assert any(m.system.startswith("DSPy") for m in results)
    data = json.loads((tmp_path / "throughput.json").read_text())
    assert data["command"].startswith(".venv/bin/python -m bench.throughput --quick")
    assert len(data["results"]) == len(results) and data["commit"]
    assert (tmp_path / "throughput.md").read_text().startswith("# Throughput benchmark")
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cpu_breakdown_times_collections_compiles_and_sleeps_inside_each_run(tmp_path: Path) -> None:
    # In its own process: it instruments anyio.run, the collector, re's compiler and the selector.
    command = [sys.executable, "-m", "bench.cpu_breakdown", "--quick", "--systems", "aprompt"]
    done = subprocess.run(
        [*command, "--regimes", "latency", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert re.search(r"CPU of the optimization: [1-9]\d* ms", done.stdout), done.stdout[-2000:]
    for generation in (0, 1, 2):
        assert f"collections, generation {generation}: " in done.stdout
    assert re.search(r"regular expressions compiled: \d+", done.stdout)
    # The quick run's calls take ~12 ms at the simulated server (its median): the loop sleeps meanwhile.
    assert re.search(r"event-loop sleeps over 1 ms: [1-9]\d*, \d+\.\d ms on average", done.stdout)
    assert re.search(r"event-loop sleeps per answered call: \d\.\d\d", done.stdout)


def test_the_side_by_side_cpu_benchmark_alternates_a_commit_and_this_checkout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    side_by_side = importlib.import_module("bench.cpu_side_by_side")
    rounds = side_by_side.main(["--baseline", "HEAD", "--rounds", "2", "--quick"])
    assert len(rounds) == 2
    for done in rounds:
        assert done.reference_ms > 0 and done.baseline_ms > 0 and done.candidate_ms > 0
        assert done.ratio == done.candidate_ms / done.baseline_ms
    printed = capsys.readouterr().out
    assert printed.count("round ") == 2 and "2 rounds: median CPU per call baseline" in printed


@pytest.mark.local_model
def test_the_throughput_benchmark_measures_how_busy_search_keeps_the_local_model(tmp_path: Path) -> None:
    throughput = importlib.import_module("bench.throughput")
    throughput.main(["--local", "--quick", "--out-dir", str(tmp_path)])
    data = json.loads((tmp_path / "throughput_local.json").read_text())
    assert data["requests"] > 0 and data["search_s"] > 0
    assert 0.0 < data["busy_in_search"] <= 1.0 and 0.0 < data["busy_overall"] <= 1.0


def test_the_throughput_bound_is_the_binding_limit_plus_one_median_latency() -> None:
    throughput = importlib.import_module("bench.throughput")
    rate, tokens = throughput.REGIMES["rate"], throughput.REGIMES["tokens"]
    # 600 calls at 600/min: 60 s; 100k tokens at 300k/min: 20 s.
    assert throughput.bound_seconds(600, 100_000, rate, 1.0, 0.6) == pytest.approx(60.6)
    # 690 calls at 3,000/min: 13.8 s; 100k tokens at 60k/min: 100 s.
    assert throughput.bound_seconds(690, 100_000, tokens, 1.0, 0.6) == pytest.approx(100.6)
    assert throughput.bound_seconds(0, 0, rate, 1.0, 0.6) == 0.0


def test_requests_in_flight_are_read_from_the_servers_request_log() -> None:
    throughput = importlib.import_module("bench.throughput")
    log = [(10.0, 12.0, 200), (11.0, 13.0, 200), (11.0, 11.5, 429)]
    times, counts = throughput.in_flight_series(log, origin=10.0)
    assert (times, counts) == ([0.0, 1.0, 1.5, 2.0, 3.0], [1, 3, 2, 1, 0])
    assert throughput.sample_series(times, counts, end=3.0, step=0.5) == [1, 1, 3, 2, 1, 1, 0]
    # 2 + 2 + 0.5 request-seconds over 4 s.
    assert throughput.mean_in_flight(log, 10.0, 14.0) == pytest.approx(1.125)
    # Slot readings (time, slots processing): busy in 3 of the 5 readings inside [0, 4].
    readings = [(0.0, 1), (1.0, 0), (2.0, 2), (3.0, 0), (4.0, 1), (9.0, 4)]
    assert throughput.busy_fraction(readings, 0.0, 4.0) == pytest.approx(0.6)


def test_the_simulated_endpoint_latency_is_log_normal_with_median_600_ms_and_sigma_0_5() -> None:
    draw = latency_model(1.0)
    rng = random.Random(3)
    logs = [math.log(draw(rng)) for _ in range(20_000)]
    assert math.exp(statistics.median(logs)) == pytest.approx(0.6, rel=0.02)
    assert statistics.stdev(logs) == pytest.approx(0.5, rel=0.03)
    capped = [latency_model(2.0, "capped")(rng) for _ in range(2_000)]
    assert 0.6 <= min(capped) and max(capped) <= 3.0
    assert median_latency(2.0) == pytest.approx(1.2)


@pytest.mark.anyio
async def test_the_simulated_endpoint_sends_rate_limit_headers_and_logs_each_arrival_and_finish() -> None:
    server = SimServer(
        responder=lambda request: "Answer: ok", latency=0.01, rate_limit=ServerRateLimit(2, None)
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with server, httpx.AsyncClient(timeout=10.0) as client:
        answers = [await client.post(f"{server.base_url}/chat/completions", json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["1", "0", "0"]
    assert {a.headers["x-ratelimit-limit-requests"] for a in answers} == {"2"}
    assert int(answers[2].headers["retry-after"]) >= 50  # whole seconds, as LiteLLM reads it
    assert 50_000 < int(answers[2].headers["retry-after-ms"]) <= 60_000
    assert answers[2].headers["x-ratelimit-reset-requests"].endswith("s")
    log = request_log(server)
    assert [status for _, _, status in log] == [200, 200, 429]
    assert all(started <= finished for started, finished, _ in log)
    assert log[0][1] - log[0][0] >= 0.01 and log[0][1] <= log[1][0]


def test_the_regret_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    regret = importlib.import_module("bench.regret")
    runs = regret.main(["--quick", "--out-dir", str(tmp_path)])
    assert [r.seed for r in runs] == [0, 1]
    for run in runs:
        assert (
            run.best_possible
            >= run.best_evaluated
            >= run.best_fully_evaluated
            >= run.returned
            >= run.baseline
            > 0
        )
        assert run.lm_calls > 0 and run.pick
        assert 0 <= run.floor_by_stage <= run.best_possible - run.baseline
        assert 0 <= run.floor_by_mean <= run.best_possible - run.baseline
    data = json.loads((tmp_path / "regret_latest.json").read_text())
    assert data["command"].startswith(".venv/bin/python -m bench.regret --quick")
    text = (tmp_path / "regret_latest.md").read_text()
    assert (
        text.startswith("# Regret in the simulated world (world)") and "runs worse than the baseline" in text
    )


def test_the_regret_floors_are_the_chance_that_validation_ranks_a_worse_choice_first() -> None:
    regret = importlib.import_module("bench.regret")
    # One first-stage prompt right every time; two second-stage prompts right half and 60 % of the time.
    # An all-seeing pick on 10 examples loses 0.1 when the worse one scores higher, 0.05 on a tie.
    worse, better = scipy.stats.binom(10, 0.5).pmf(range(11)), scipy.stats.binom(10, 0.6).pmf(range(11))
    higher = sum(worse[k] * better[:k].sum() for k in range(11))
    tie = sum(worse[k] * better[k] for k in range(11))
    exact = 0.1 * higher + 0.05 * tie
    by_mean, by_stage = regret.floors_of([1.0], [0.5, 0.6], val_size=10, seed=0, draws=20_000)
    assert by_mean == pytest.approx(exact, abs=0.002) and by_stage == pytest.approx(exact, abs=0.002)
    # Equal choices leave nothing to lose; a validation set large enough ranks them right.
    assert regret.floors_of([0.5, 0.5], [0.7, 0.7], val_size=10, seed=0, draws=200) == (0.0, 0.0)
    assert regret.floors_of([0.4, 0.8], [0.5, 0.9], val_size=2_000, seed=0, draws=50) == (0.0, 0.0)


@pytest.mark.local_model
def test_the_quality_benchmark_runs_in_quick_mode_on_the_local_model(tmp_path: Path) -> None:
    quality = importlib.import_module("bench.quality")
    capped = "aprompt:mipro@calls=aprompt:bootstrap_random_search"
    methods = ["aprompt:unoptimized", "aprompt:hand_few_shot", "aprompt:mipro"]
    methods += ["aprompt:bootstrap_random_search", capped]
    if HAS_DSPY:
        methods += ["dspy:unoptimized", "dspy:miprov2", "dspy:bootstrap_rs"]
    runs = quality.main(
        ["--quick", "--methods", ",".join(methods), "--dspy-attempts", "1", "--out-dir", str(tmp_path)]
    )
    assert {r.method for r in runs} == set(methods)
    mipro = next(r for r in runs if r.method == "aprompt:mipro")
    assert mipro.lm_calls > 0 and mipro.test_score is not None
    # The capped run spends no more calls than its peer made, and says so.
    peer = next(r for r in runs if r.method == "aprompt:bootstrap_random_search")
    under_cap = next(r for r in runs if r.method == capped)
    assert under_cap.lm_calls <= peer.lm_calls < mipro.lm_calls
    assert under_cap.note.startswith(f"at most {peer.lm_calls} LM calls"), under_cap.note
    assert mipro.pick.startswith(("kept the unoptimized program", "{")), mipro.pick  # the pick's reason
    assert all(r.test_scores is not None and len(r.test_scores) == 6 for r in runs)
    data = json.loads((tmp_path / "quality.json").read_text())
    assert [row["method"] for row in data["summary"]] == methods
    assert all(row["interval_over"] == "6 examples (bootstrap)" for row in data["summary"])
    assert (tmp_path / "quality.md").read_text().splitlines()[2].startswith("command: `.venv/bin/python -m")
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_hand_written_prompt_shows_three_training_examples_where_their_fields_fit() -> None:
    quality = importlib.import_module("bench.quality")
    for name in ("count", "count_listed", "negate_twostep"):
        task = TASKS[name]
        split = task.split(n_train=20, n_val=5, n_test=5)
        program = quality.hand_few_shot(task, split, seed=1)
        predictors = [p for _, p in aprompt.named_predictors(program)]
        shown = [{**e.inputs, **e.labels} for e in task.examples(split.train)]
        assert len(predictors[-1].demos) == quality.HAND_DEMOS
        for demo in predictors[-1].demos:
            assert any(all(values.get(k) == v for k, v in demo.items()) for values in shown)
        # An intermediate stage has no labels for its outputs: it keeps its own (empty) demos.
        assert all(p.demos == [] for p in predictors[:-1])


def quality_run(method: str, seed: int | None, scores: list[float], task: str = "negate") -> Any:
    quality = importlib.import_module("bench.quality")
    return quality.Run(
        task=task,
        method=method,
        seed=seed,
        test_score=sum(scores) / len(scores),
        val_score=None,
        lm_calls=10,
        prompt_tokens=100,
        completion_tokens=10,
        seconds=1.0,
        test_scores=scores,
    )


def test_every_registered_aprompt_strategy_is_a_quality_method() -> None:
    quality = importlib.import_module("bench.quality")
    every = ",".join(f"aprompt:{name}" for name in STRATEGIES)
    settings = quality.parse_args(["--methods", f"{every},dspy:bootstrap_rs"])
    assert settings.methods == (*(f"aprompt:{name}" for name in STRATEGIES), "dspy:bootstrap_rs")
    with pytest.raises(SystemExit):
        quality.parse_args(["--methods", "aprompt:no_such_strategy"])


def test_a_quality_method_may_be_capped_at_the_calls_of_another() -> None:
    quality = importlib.import_module("bench.quality")
    capped = "aprompt:mipro@calls=dspy:miprov2"
    settings = quality.parse_args(["--methods", f"dspy:miprov2,{capped}"])
    assert settings.methods == ("dspy:miprov2", capped)
    assert quality.capped_parts(capped) == ("aprompt:mipro", "dspy:miprov2")
    assert quality.capped_parts("aprompt:mipro") == ("aprompt:mipro", None)
    for wrong in (
        "aprompt:mipro@calls=dspy:no_such_optimizer",
        "aprompt:mipro@calls=dspy:unoptimized",  # no optimization: no calls to match
        "aprompt:hand_few_shot@calls=dspy:miprov2",  # not a strategy: nothing to cap
        "dspy:miprov2@calls=aprompt:mipro",
    ):
        with pytest.raises(SystemExit):
            quality.parse_args(["--methods", wrong])


def test_a_method_capped_at_kept_dspy_runs_does_not_need_dspy() -> None:
    quality = importlib.import_module("bench.quality")
    capped = "aprompt:mipro@calls=dspy:miprov2"
    settings = quality.parse_args(
        ["--tasks", "intent", "--seeds", "1,2", "--methods", f"dspy:miprov2,{capped}"]
    )
    kept = {("intent", "dspy:miprov2", 1), ("intent", "dspy:miprov2", 2)}
    assert not quality.needs_dspy(settings, capped, kept)
    assert not quality.needs_dspy(settings, "dspy:miprov2", kept)
    # one DSPy run left to do: both the DSPy method and the method capped at its calls need DSPy
    assert quality.needs_dspy(settings, capped, kept - {("intent", "dspy:miprov2", 2)})
    assert quality.needs_dspy(settings, "dspy:miprov2", kept - {("intent", "dspy:miprov2", 2)})
    assert not quality.needs_dspy(settings, "aprompt:mipro", set())
    assert quality.needs_dspy(settings, "dspy:unoptimized", set())
    assert not quality.needs_dspy(settings, "dspy:unoptimized", {("intent", "dspy:unoptimized", None)})


def test_the_quality_defaults_hold_200_test_examples_and_the_dspy_random_search() -> None:
    quality = importlib.import_module("bench.quality")
    settings = quality.parse_args([])
    assert settings.n_test == 200
    assert {"dspy:miprov2", "dspy:bootstrap_rs", "aprompt:hand_few_shot"} <= set(settings.methods)
    assert settings.tasks[:2] == ("negate", "negate_twostep")


def test_a_task_with_too_few_records_gets_every_record_left_as_its_test_part() -> None:
    quality = importlib.import_module("bench.quality")
    settings = quality.parse_args(["--tasks", "intent", "--train", "30", "--val", "30", "--test", "1000"])
    split = quality.task_split(settings, TASKS["intent"])
    assert (len(split.train), len(split.val), len(split.test)) == (
        30,
        30,
        len(TASKS["intent"].records()) - 60,
    )
    smaller = quality.task_split(attrs.evolve(settings, n_test=200), TASKS["intent"])
    assert smaller.test == split.test[:200]


def test_dspy_random_search_runs_as_many_validation_programs_as_miprov2_light() -> None:
    quality = importlib.import_module("bench.quality")
    # 1 predictor: 10 trials. 30 validation examples are too few for mini-batches: 10 x 30 runs = 10
    # full evaluations; 100 are enough: 35 x 10 + 100 x 3 = 650 runs, 6.5 full evaluations.
    assert quality.bootstrap_rs_candidates(30, 1, quick=False) == 10 - 3
    assert quality.bootstrap_rs_candidates(100, 1, quick=False) == 7 - 3
    # 2 predictors: 20 trials; 35 x 20 + 100 x 5 = 1,200 runs; a larger valset is cut to 100 by MIPROv2.
    assert quality.bootstrap_rs_candidates(30, 2, quick=False) == 20 - 3
    assert quality.bootstrap_rs_candidates(500, 2, quick=False) == 12 - 3
    assert quality.bootstrap_rs_candidates(6, 1, quick=True) == 1


def test_the_quality_table_gives_a_t_interval_over_seeds_and_a_bootstrap_over_examples_for_one_run() -> None:
    quality = importlib.import_module("bench.quality")
    runs = [
        quality_run("aprompt:mipro", seed, [1.0] * hits + [0.0] * (10 - hits))
        for seed, hits in enumerate((5, 6, 7))
    ]
    runs.append(quality_run("aprompt:unoptimized", None, [1.0] * 3 + [0.0] * 17))
    rows = quality.summarize(runs, ["aprompt:unoptimized", "aprompt:mipro"])
    assert [row["method"] for row in rows] == ["aprompt:unoptimized", "aprompt:mipro"]
    unoptimized, mipro = rows
    assert mipro["interval_over"] == "3 seeds (t)"
    # mean 0.6, sd 0.1: 0.6 +- 4.303 x 0.1 / sqrt(3)
    assert mipro["test_mean"] == pytest.approx(0.6)
    assert (mipro["test_low"], mipro["test_high"]) == pytest.approx((0.6 - 0.24843, 0.6 + 0.24843), abs=1e-4)
    assert unoptimized["interval_over"] == "20 examples (bootstrap)" and unoptimized["n_test"] == 20
    assert 0.0 <= unoptimized["test_low"] < 0.15 < unoptimized["test_high"] <= 0.5


def test_a_stopped_quality_run_is_resumed_from_its_saved_runs(tmp_path: Path) -> None:
    quality = importlib.import_module("bench.quality")
    settings = quality.parse_args(["--tasks", "negate", "--resume", "--out-dir", str(tmp_path)])
    runs = [quality_run("aprompt:unoptimized", None, [1.0, 0.0]), quality_run("aprompt:mipro", 1, [1.0, 1.0])]
    quality.write_results(settings, runs, final=False)
    assert quality.done_runs(settings) == runs
    with pytest.raises(SystemExit, match="n_test"):
        quality.done_runs(attrs.evolve(settings, n_test=50))


def test_the_confidence_intervals_match_their_textbook_values() -> None:
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)  # past the table: the expansion
    assert t_interval([0.5]) is None
    low, high = t_interval([0.5, 0.6, 0.7]) or (0.0, 0.0)
    assert (low, high) == pytest.approx((0.6 - 0.24843, 0.6 + 0.24843), abs=1e-4)
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_interval(values) or (0.0, 0.0)
    # The normal approximation: 0.3 +- 1.96 x sqrt(0.3 x 0.7 / 100) = 0.21 .. 0.39.
    assert low == pytest.approx(0.21, abs=0.02) and high == pytest.approx(0.39, abs=0.02)
    assert bootstrap_interval(values) == (low, high)
    assert bootstrap_interval([]) is None


def test_the_parse_retries_table_compares_each_setting_with_the_most_retries_example_by_example() -> None:
    parse_retries = importlib.import_module("bench.parse_retries")
    prompt = parse_retries.PROMPTS[0]

    def row(retries: int, scores: list[float], calls: int) -> dict[str, Any]:
        return {
            "task": "intent",
            "prompt": prompt,
            "retries": retries,
            "accuracy": sum(scores) / len(scores),
            "scores": scores,
            "unreadable": 0,
            "unscored": 0,
            "calls": calls,
        }

    rows = [row(2, [1.0, 1.0, 0.0], 5), row(1, [1.0, 0.0, 0.0], 4), row(0, [0.0, 0.0, 1.0], 3)]
    text = parse_retries.render(
        rows, "python -m bench.parse_retries", {"parallel": 4, "threads": 1, "n_test": 3}
    )
    lines = [line for line in text.splitlines() if line.startswith("| intent")]
    assert len(lines) == 3 and lines[0].endswith("| 5 |  |")
    assert lines[1].endswith("| 4 | -0.333 (lower on 1, higher on 0) |")
    assert lines[2].endswith("| 3 | -0.333 (lower on 2, higher on 1) |")


@pytest.mark.anyio
async def test_the_parse_retries_counter_counts_every_chat_call_cache_hits_included(
    fake_server: Any, lm_kwargs: dict[str, Any]
) -> None:
    parse_retries = importlib.import_module("bench.parse_retries")
    cache = aprompt.ResponseCache.memory_only(1000)
    async with aprompt.OpenAICompatibleLM(**lm_kwargs, cache=cache) as lm:
        counting = parse_retries.CountingLM(lm)
        for _ in range(3):
            await counting.chat([{"role": "user", "content": "Hi"}])
    assert counting.calls == 3 and len(fake_server.chat_requests) == 1


def test_the_pick_selection_benchmark_counts_replacements_by_luck() -> None:
    selection = importlib.import_module("bench.pick_selection")
    text = selection.main(["--runs", "40", "--out", "-"])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == len(selection.ROWS)
    assert all(0.0 <= float(row.rsplit("|", 2)[-2].strip().rstrip("%")) <= 100.0 for row in rows)
