"""Every benchmark script imports and runs in its tiny mode, so the benchmarks never rot.

The DSPy parts run only where ``dspy`` is installed (the ``bench`` extra); the quality benchmark needs
the embedded model and is marked ``local_model``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

import aprompt
from bench.simulated_lm import SimulatedLM, aprompt_output_fields, dspy_output_fields
from bench.tasks import TASKS, split_records
from bench.tasks.metrics import choice_accuracy, count_accuracy

BENCH_SCRIPTS = [
    "bench.quality",
    "bench.throughput",
    "bench.sim_server",
    "bench.lm_client",
    "bench.tpe",
    "bench.regret",
    "bench.reply_format",
]
HAS_DSPY = importlib.util.find_spec("dspy") is not None


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


def test_the_throughput_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    throughput = importlib.import_module("bench.throughput")
    systems = "aprompt,dspy,aprompt-warm" if HAS_DSPY else "aprompt,aprompt-warm"
    results = throughput.main(["--quick", "--systems", systems, "--out-dir", str(tmp_path)])
    by_system = {m.system.split(" ")[0].rstrip(","): m for m in results}
    ours = next(m for m in results if m.system.startswith("aprompt ("))
    warm = next(m for m in results if m.system.endswith("warm cache"))
    assert ours.answered > 0 and ours.rate_limited == 0
    assert warm.requests == 0
    if HAS_DSPY:
        assert by_system["DSPy"].answered > 0
    data = json.loads((tmp_path / "throughput.json").read_text())
    assert data["command"].startswith(".venv/bin/python -m bench.throughput --quick")
    assert (tmp_path / "throughput.md").read_text().startswith("# Throughput benchmark")


def test_the_regret_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    regret = importlib.import_module("bench.regret")
    runs = regret.main(["--quick", "--out-dir", str(tmp_path)])
    assert [r.seed for r in runs] == [0, 1]
    for run in runs:
        assert run.best_possible >= run.best_evaluated >= run.returned >= run.baseline > 0
        assert run.lm_calls > 0 and run.pick
    data = json.loads((tmp_path / "regret_latest.json").read_text())
    assert data["command"].startswith(".venv/bin/python -m bench.regret --quick")
    text = (tmp_path / "regret_latest.md").read_text()
    assert (
        text.startswith("# Regret in the simulated world (world)") and "runs worse than the baseline" in text
    )


@pytest.mark.local_model
def test_the_quality_benchmark_runs_in_quick_mode_on_the_local_model(tmp_path: Path) -> None:
    quality = importlib.import_module("bench.quality")
    methods = ["aprompt:unoptimized", "aprompt:hand_few_shot", "aprompt:mipro"]
    if HAS_DSPY:
        methods += ["dspy:unoptimized", "dspy:miprov2"]
    runs = quality.main(
        ["--quick", "--methods", ",".join(methods), "--dspy-attempts", "1", "--out-dir", str(tmp_path)]
    )
    assert {r.method for r in runs} == set(methods)
    mipro = next(r for r in runs if r.method == "aprompt:mipro")
    assert mipro.lm_calls > 0 and mipro.test_score is not None
    data = json.loads((tmp_path / "quality.json").read_text())
    assert {row["method"] for row in data["summary"]} == set(methods)
    assert (tmp_path / "quality.md").read_text().splitlines()[2].startswith("command: `.venv/bin/python -m")
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_hand_written_prompt_shows_three_training_examples_where_their_fields_fit() -> None:
    quality = importlib.import_module("bench.quality")
    for name in ("count", "count_listed"):
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
