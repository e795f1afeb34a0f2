"""The simulated world answering DSPy's prompts (bench/dspy_world.py), and how a DSPy run is scored.

The requests are written by hand after ones DSPy 3.4.1's ChatAdapter sent to the world during MIPROv2
(``bench/regret_dspy_worker.py``): a stage with demos, a stage's plain request, the instruction proposer and
the dataset summarizer. No DSPy is needed here; the server is the project's fake on loopback.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from aprompt.testing.fake_openai import FakeOpenAIServer
from bench.dspy_world import DSPyWorld, dspy_stage
from bench.regret_dspy import best_in_grid, score_record, truth
from tests.optimize.world import World, instruction_quality, stage_probability

pytestmark = pytest.mark.anyio

OBJECTIVE = "In adhering to this structure, your objective is: \n        "
EXTRACT_SYSTEM = (
    "Your input fields are:\n1. `question` (str):\nYour output fields are:\n1. `code` (str):\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    "[[ ## question ## ]]\n{question}\n\n[[ ## code ## ]]\n{code}\n\n[[ ## completed ## ]]\n" + OBJECTIVE
)
ANSWER_SYSTEM = (
    "Your input fields are:\n1. `question` (str): \n2. `code` (str):\nYour output fields are:\n"
    "1. `answer` (str):\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    "[[ ## question ## ]]\n{question}\n\n[[ ## code ## ]]\n{code}\n\n[[ ## answer ## ]]\n{answer}\n\n"
    "[[ ## completed ## ]]\n" + OBJECTIVE
)
PROPOSER_FIELDS = [
    ("dataset_description", "A description of the dataset that we are using."),
    ("program_code", "Language model program designed to solve a particular task."),
    (
        "program_description",
        "Summary of the task the program is designed to solve, and how it goes about solving it.",
    ),
    ("module", "The module to create an instruction for."),
    ("module_description", "Description of the module to create an instruction for."),
    ("task_demos", "Example inputs/outputs of our module."),
    ("basic_instruction", "Basic instruction."),
    ("tip", "A suggestion for how to go about generating the new instruction."),
]
PROPOSER_SYSTEM = (
    "Your input fields are:\n"
    + "".join(f"{i}. `{name}` (str): {desc}\n" for i, (name, desc) in enumerate(PROPOSER_FIELDS, 1))
    + "Your output fields are:\n1. `proposed_instruction` (str): Propose an instruction that will be used to "
    "prompt a Language Model to perform this task.\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    + "".join(f"[[ ## {name} ## ]]\n{{{name}}}\n\n" for name, _ in PROPOSER_FIELDS)
    + "[[ ## proposed_instruction ## ]]\n{proposed_instruction}\n\n[[ ## completed ## ]]\n"
    + OBJECTIVE
    + "Use the information below to learn about a task that we are trying to solve using calls to an LM, "
    "then generate a new instruction that will be used to prompt a Language Model to better solve the task."
)
SUMMARIZER_SYSTEM = (
    "Your input fields are:\n1. `examples` (str): Sample data points from the dataset\n"
    "Your output fields are:\n1. `observations` (str): Somethings that holds true for most or all of the "
    "data you observed\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    "[[ ## examples ## ]]\n{examples}\n\n[[ ## observations ## ]]\n{observations}\n\n[[ ## completed ## ]]\n"
    + OBJECTIVE
    + "Given several examples from a dataset please write observations about trends that hold for most or "
    "all of the samples."
)
INCOMPLETE = "This is an example of the task, though some input or output fields are not supplied.\n\n"


def _respond(first: str) -> str:
    return (
        f"\n\nRespond with the corresponding output fields, starting with the field `[[ ## {first} ## ]]`, "
        "and then ending with the marker for `[[ ## completed ## ]]`."
    )


def _question(item: int) -> str:
    return f"[[ ## question ## ]]\nWhat is the answer for item-{item}?"


def extract_messages(instruction: str, demo_items: list[int], item: int) -> list[dict[str, str]]:
    """DSPy's messages for the extract stage: bootstrapped demos as user and assistant turns, then the
    question."""
    messages = [{"role": "system", "content": EXTRACT_SYSTEM + instruction}]
    for demo in demo_items:
        messages += [
            {"role": "user", "content": _question(demo)},
            {"role": "assistant", "content": f"[[ ## code ## ]]\ncode-{demo}\n\n[[ ## completed ## ]]\n"},
        ]
    return [*messages, {"role": "user", "content": _question(item) + _respond("code")}]


def answer_messages(instruction: str, labeled_items: list[int], item: int, code: str) -> list[dict[str, str]]:
    """DSPy's messages for the answer stage: labeled demos (no code: DSPy's incomplete-demo turns)."""
    messages = [{"role": "system", "content": ANSWER_SYSTEM + instruction}]
    for demo in labeled_items:
        messages += [
            {"role": "user", "content": INCOMPLETE + _question(demo)},
            {"role": "assistant", "content": f"[[ ## answer ## ]]\nans-{demo}\n\n[[ ## completed ## ]]\n"},
        ]
    last = _question(item) + f"\n\n[[ ## code ## ]]\n{code}" + _respond("answer")
    return [*messages, {"role": "user", "content": last}]


def proposer_messages(tip: str) -> list[dict[str, str]]:
    values = {
        "dataset_description": "Questions about numbered items, each answered with a short coded answer.",
        "program_code": "class TwoStage(dspy.Module):\n    ...",
        "program_description": "The program finds an item's code, then answers from the question and code.",
        "module": "Predict(question) -> code",
        "module_description": "This module finds the code.",
        "task_demos": "No task demos provided.",
        "basic_instruction": "Find the code.",
        "tip": tip,
    }
    user = "\n\n".join(f"[[ ## {name} ## ]]\n{value}" for name, value in values.items())
    return [
        {"role": "system", "content": PROPOSER_SYSTEM},
        {"role": "user", "content": user + _respond("proposed_instruction")},
    ]


def reply_fields(text: str) -> dict[str, str]:
    """A reply read as DSPy's ChatAdapter reads it: ``[[ ## name ## ]]`` sections, ending with completed."""
    assert text.rstrip().endswith("[[ ## completed ## ]]"), text
    parts = re.split(r"\[\[ ## (\w+) ## \]\]", text)
    assert parts[0].strip() == "", text
    fields = {name: value.strip() for name, value in zip(parts[1::2], parts[2::2], strict=True)}
    assert fields.pop("completed") == ""
    return fields


async def _ask(client: httpx.AsyncClient, server: FakeOpenAIServer, messages: list[dict[str, str]]) -> str:
    """One chat request as LiteLLM sends DSPy's (temperature 0 for a stage, 1 for the proposer)."""
    temperature = 1.0 if "proposed_instruction" in messages[0]["content"] else 0.0
    body = {"model": "world", "messages": messages, "temperature": temperature, "max_completion_tokens": 256}
    response = await client.post(f"{server.base_url}/chat/completions", json=body)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


@pytest.fixture
async def world() -> Any:
    async with FakeOpenAIServer(responder=DSPyWorld()) as server, httpx.AsyncClient() as client:
        yield server, client


def test_each_dspy_prompt_is_told_apart_by_its_output_fields() -> None:
    assert dspy_stage(extract_messages("Find the code.", [], 1)[0]["content"]) == "extract"
    assert dspy_stage(answer_messages("Give the answer.", [], 1, "code-1")[0]["content"]) == "answer"
    assert dspy_stage(PROPOSER_SYSTEM) == "propose"
    assert dspy_stage(SUMMARIZER_SYSTEM) == "other"
    assert dspy_stage("You are a helpful assistant.") == "other"


async def test_the_extract_stage_is_right_as_often_as_the_world_says_in_dspy_format(world: Any) -> None:
    server, client = world
    # A plain prompt: the world's base rate; a good instruction and helpful demos (items divisible by 4).
    for instruction, demos in (("Find the code.", []), ("Solve it carefully, variant 3.", [4, 8])):
        expected = stage_probability("extract", instruction, demos)
        right = 0
        for item in range(200, 400):
            fields = reply_fields(await _ask(client, server, extract_messages(instruction, demos, item)))
            assert list(fields) == ["code"] and fields["code"] in (f"code-{item}", "unknown")
            right += fields["code"] == f"code-{item}"
        assert abs(right / 200 - expected) < 0.08, (instruction, demos, right, expected)


async def test_the_answer_stage_counts_labeled_demos_and_needs_the_right_code(world: Any) -> None:
    server, client = world
    instruction, labeled = "Solve it carefully, variant 10.", [12, 16, 20, 24]
    expected = stage_probability("answer", instruction, labeled)
    assert expected > stage_probability("answer", instruction, []) + 0.2
    right = wrong_code_right = 0
    for item in range(200, 400):
        fields = reply_fields(
            await _ask(client, server, answer_messages(instruction, labeled, item, f"code-{item}"))
        )
        assert list(fields) == ["answer"]
        right += fields["answer"] == f"ans-{item}"
        missed = reply_fields(
            await _ask(client, server, answer_messages(instruction, labeled, item, "unknown"))
        )
        wrong_code_right += missed["answer"] == f"ans-{item}"
    assert abs(right / 200 - expected) < 0.08, (right, expected)
    assert wrong_code_right == 0


async def test_the_proposer_gets_a_variant_drawn_from_its_request(world: Any) -> None:
    server, client = world
    tips = [
        "Make sure your instruction is very informative and descriptive.",
        "Keep the instruction clear and concise.",
        "Make it creative.",
        "Be persona-driven.",
        "Be brief.",
        "Use examples.",
    ]
    variants = set()
    for tip in tips:
        fields = reply_fields(await _ask(client, server, proposer_messages(tip)))
        assert list(fields) == ["proposed_instruction"]
        match = re.fullmatch(r"Solve it carefully, variant (\d+)\.", fields["proposed_instruction"])
        assert match is not None, fields
        variants.add(int(match.group(1)))
        assert instruction_quality(fields["proposed_instruction"]) != 0.0
    assert len(variants) >= 3  # drawn per request, not one fixed reply
    again = reply_fields(await _ask(client, server, proposer_messages(tips[0])))
    first = reply_fields(await _ask(client, server, proposer_messages(tips[0])))
    assert again == first  # the same request, the same proposal


async def test_the_summarizers_get_a_text_for_each_of_their_fields(world: Any) -> None:
    server, client = world
    messages = [
        {"role": "system", "content": SUMMARIZER_SYSTEM},
        {
            "role": "user",
            "content": "[[ ## examples ## ]]\n[Example({'question': 'What is the answer for item-0?'})]"
            + _respond("observations"),
        },
    ]
    fields = reply_fields(await _ask(client, server, messages))
    assert list(fields) == ["observations"] and fields["observations"]


def _program(extract: str, extract_items: list[int], answer: str, answer_items: list[int]) -> dict[str, Any]:
    return {
        "extract": {"instruction": extract, "items": extract_items},
        "answer": {"instruction": answer, "items": answer_items},
    }


def test_a_dspy_record_is_scored_against_the_worlds_truth() -> None:
    plain = _program("Find the code.", [], "Give the answer.", [])
    good = _program("Solve it carefully, variant 3.", [4, 8], "Give the answer.", [12])
    best = _program("Solve it carefully, variant 3.", [4, 8], "Solve it carefully, variant 10.", [12])
    record = {
        "baseline": plain,
        "returned": good,
        "instructions": {
            "extract": ["Find the code.", "Solve it carefully, variant 3."],
            "answer": ["Give the answer.", "Solve it carefully, variant 10."],
        },
        "demo_sets": {"extract": [[], [4, 8]], "answer": [[], [12]]},
        "evaluated": [
            {"full": True, "program": plain},
            {"full": False, "program": best},
            {"full": True, "program": good},
        ],
        "seconds": 1.0,
    }
    run = score_record("light", 7, record, lm_calls=123)
    assert (
        run.best_possible
        == pytest.approx(truth(best))
        == best_in_grid(record["instructions"], record["demo_sets"])
    )
    assert run.returned == pytest.approx(
        World.expected_accuracy(
            {"extract": "Solve it carefully, variant 3.", "answer": "Give the answer."},
            {"extract": [4, 8], "answer": [12]},
        )
    )
    assert run.baseline == pytest.approx(truth(plain)) and run.returned > run.baseline
    assert run.best_evaluated == pytest.approx(truth(best)) and run.evaluated_regret == pytest.approx(0.0)
    assert run.best_fully_evaluated == pytest.approx(truth(good)) and run.regret > 0
    assert (run.trials, run.full_evals, run.grid_size, run.lm_calls) == (1, 2, 16, 123)
    assert not run.worse_than_baseline


def test_the_regret_benchmark_runs_dspy_only_on_a_budget_preset_of_the_standard_world(tmp_path: Path) -> None:
    regret = importlib.import_module("bench.regret")
    out = ["--out-dir", str(tmp_path)]
    for argv in (
        ["--quick", "--systems", "aprompt,dspy", "--dspy-python", sys.executable],
        ["--world", "no_gain", "--systems", "dspy", "--dspy-python", sys.executable],
        ["--systems", "aprompt,optuna"],
    ):
        with pytest.raises(SystemExit):
            regret.main([*argv, *out])
    if importlib.util.find_spec("dspy") is None:  # no interpreter given and none here
        with pytest.raises(SystemExit):
            regret.main(["--seeds", "0:1", "--systems", "dspy", *out])
    assert list(tmp_path.iterdir()) == []
