"""End-to-end optimizer checks in the simulated task world (tests/optimize/world.py)."""

from __future__ import annotations

import importlib
import itertools
import logging
from pathlib import Path

import pytest

import aprompt
from aprompt import OpenAICompatibleLM, ResponseCache
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import TwoStageProgram, World, demo_items_of, examples, metric

pytestmark = pytest.mark.anyio

BUDGET = {
    "n_candidates": 6,
    "val_size": 100,
    "n_trials": 24,
    "minibatch_size": 30,
    "full_eval_every": 5,  # a full evaluation's worth of races every 150 examples of trials
    "parallel_trials": 3,
    "screen_size": 0,  # the world's proposals are off-task by design (see SMALL_BUDGET in qa_task.py)
}


def _true_accuracy(result: aprompt.OptimizeResult, choice: dict[str, int]) -> float:
    candidates = result.candidates
    prompts = candidates.prompts_for(choice)
    return World.expected_accuracy(
        {name: prompts[name].instruction for name in candidates.predictors},
        {name: demo_items_of([d.to_dict() for d in prompts[name].demos]) for name in candidates.predictors},
    )


def _best_possible(result: aprompt.OptimizeResult) -> float:
    space = result.candidates.parameters()
    names = list(space)
    return max(
        _true_accuracy(result, dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*(range(space[n].n_choices) for n in names))
    )


async def _optimize(
    server: FakeOpenAIServer, strategy: str, tmp_path: Path, **options: object
) -> aprompt.OptimizeResult:
    cache = ResponseCache.in_directory(tmp_path / "cache")
    async with OpenAICompatibleLM(
        "world", server.base_url, api_key="sk-world", cache=cache, max_concurrency=256
    ) as lm:
        return await aprompt.optimize(
            TwoStageProgram(),
            examples(0, 200),
            metric,
            valset=examples(200, 300),
            lm=lm,
            strategy=strategy,
            budget=options.pop("budget", BUDGET),  # type: ignore[arg-type]
            seed=options.pop("seed", 1),  # type: ignore[arg-type]
            **options,  # type: ignore[arg-type]
        )


async def test_mipro_reaches_within_a_few_points_of_the_best_combination(tmp_path: Path) -> None:
    gaps = []
    for seed in (1, 2, 3, 4):
        async with FakeOpenAIServer(responder=World(), latency=0.005, api_key="sk-world") as server:
            result = await _optimize(server, "mipro", tmp_path / str(seed), seed=seed)
        best = _best_possible(result)
        chosen = _true_accuracy(result, dict(result.best_choice))
        baseline = _true_accuracy(result, result.candidates.baseline())
        assert best - baseline > 0.2, "the world leaves room to improve"
        # Over seeds 1-10 the worst gap is ~0.13 (one seed), the mean ~0.015-0.03.
        assert chosen >= best - 0.15, (seed, chosen, best)
        gaps.append(best - chosen)
        # Every mini-batch fanned out: many requests were in flight at once at the server.
        assert server.max_in_flight >= 30
    assert sum(gaps) / len(gaps) <= 0.06, gaps


async def test_bootstrap_random_search_beats_the_unoptimized_program(tmp_path: Path) -> None:
    # 8 demo sets per predictor: enough for a set whose gain its full evaluation can show (paired evidence).
    async with FakeOpenAIServer(responder=World(), latency=0.002, api_key="sk-world") as server:
        budget = {**BUDGET, "n_candidates": 8}
        result = await _optimize(server, "bootstrap_random_search", tmp_path, budget=budget)
    assert (
        _true_accuracy(result, dict(result.best_choice))
        > _true_accuracy(result, result.candidates.baseline()) + 0.05
    )
    assert result.score > result.baseline_score


async def test_same_seed_and_warm_cache_repeat_the_run_with_no_new_calls(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key="sk-world") as server:
        first = await _optimize(server, "mipro", tmp_path)
        calls_after_first = len(server.chat_requests)
        second = await _optimize(server, "mipro", tmp_path)
        assert len(server.chat_requests) == calls_after_first
    assert second.best_choice == first.best_choice
    assert [t.choice for t in second.trials] == [t.choice for t in first.trials]
    assert second.candidates.describe() == first.candidates.describe()
    assert second.usage.lm_calls == 0


def test_the_regret_benchmark_runs_seeds_in_worker_processes_and_pairs_them_by_seed(tmp_path: Path) -> None:
    regret = importlib.import_module("bench.regret")
    level = logging.getLogger("aprompt").level
    quick = ["--quick", "--seeds", "3:5", "--out-dir", str(tmp_path)]
    parallel = regret.main([*quick, "--workers", "2", "--name", "parallel"])
    one_process = regret.main([*quick, "--name", "one", "--paired-with", str(tmp_path / "parallel.json")])
    assert [r.seed for r in parallel] == [r.seed for r in one_process] == [3, 4]
    # A run is a function of its seed: the same in a worker process as in this one.
    assert [(r.returned, r.best_possible, r.lm_calls) for r in parallel] == [
        (r.returned, r.best_possible, r.lm_calls) for r in one_process
    ]
    # The nearest best combination's missed parameters are named exactly when there is regret.
    assert all(bool(r.missed) == (r.regret > 1e-12) for r in parallel)
    text = (tmp_path / "one.md").read_text()
    assert "Paired by seed with" in text and "| quick | 2 | +0.0000 | [+0.0000, +0.0000] | 0 | 0 |" in text
    # It quiets the library's log while it runs, not for the tests run after it in this process.
    assert logging.getLogger("aprompt").level == level
