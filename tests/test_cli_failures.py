"""The command line shows which examples a program fails: ``aprompt evaluate`` prints them (a few by
default, ``--show-failures N``), ``aprompt optimize`` says why it chose its program and counts the examples
still failing, fixed and broken, and ``aprompt show`` lists them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from aprompt.testing.fake_openai import FakeOpenAIServer, Fault
from tests.test_cli import aprompt_cli, optimize_args, world_server, write_task


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, FakeOpenAIServer, str]]:
    """One finished ``aprompt optimize`` run (folder ``run``), its server still up, and what it printed."""
    folder = write_task(tmp_path_factory.mktemp("cli-failures"))
    with world_server() as server:
        done = aprompt_cli(folder, *optimize_args(server.base_url))
        assert done.returncode == 0, done.stderr
        yield folder, server, done.stdout


def evaluate(folder: Path, server: FakeOpenAIServer, *extra: str) -> str:
    common = ["--data", "val.csv", "--metric", "cli_world.py:metric", "--lm", server.base_url, "--model", "w"]
    done = aprompt_cli(folder, "evaluate", "cli_world.py:build", *common, *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_evaluate_prints_the_first_failing_examples_with_output_and_expected(
    optimized: tuple[Path, FakeOpenAIServer, str],
) -> None:
    folder, server, _ = optimized
    figures = json.loads(evaluate(folder, server, "--json"))
    text = evaluate(folder, server, "--show-failures", "2")
    assert f"({figures['failing']} below full marks;" in text
    assert f"failing examples (the first 2 of {figures['failing']}, lowest score first):" in text
    assert text.count("    expected: answer: ans-") == 2 and text.count("    output:   answer: ") == 2
    assert text.count(": score 0.000") == 2


def test_evaluate_shows_three_failing_examples_by_default_and_none_with_zero(
    optimized: tuple[Path, FakeOpenAIServer, str],
) -> None:
    folder, server, _ = optimized
    assert evaluate(folder, server).count("    expected: answer: ans-") == 3
    assert "expected:" not in evaluate(folder, server, "--show-failures", "0")


def test_evaluate_json_carries_the_failing_examples_asked_for(
    optimized: tuple[Path, FakeOpenAIServer, str],
) -> None:
    folder, server, _ = optimized
    figures = json.loads(evaluate(folder, server, "--json", "--show-failures", "1"))
    (row,) = figures["failing_examples"]
    assert row["inputs"]["question"].startswith("What is the answer for item-")
    assert row["labels"]["answer"].startswith("ans-") and row["outcome"]["score"] == 0.0
    assert set(row["outcome"]["output"]) == {"answer"}


def test_optimize_says_why_it_chose_and_counts_the_examples(
    optimized: tuple[Path, FakeOpenAIServer, str],
) -> None:
    folder, _, printed = optimized
    result = json.loads((folder / "run" / "result.json").read_text())
    assert f"why this program: {result['pick']['reason']}" in printed
    rows = result["examples"]["rows"]
    failing = sum(1 for r in rows if r["outcome"]["score"] < 1.0)
    fixed = sum(1 for r in rows if r["outcome"]["score"] > r["baseline"]["score"])
    broken = sum(1 for r in rows if r["outcome"]["score"] < r["baseline"]["score"])
    assert f"examples: {failing} of 30 still failing, {fixed} fixed and {broken} broken" in printed
    assert "LM calls sent (" in printed and " retries), " in printed


def test_show_lists_the_failing_examples(optimized: tuple[Path, FakeOpenAIServer, str]) -> None:
    folder, _, _ = optimized
    done = aprompt_cli(folder, "show", "run")
    assert done.returncode == 0, done.stderr
    assert "examples still failing: " in done.stdout and "    expected: answer: ans-" in done.stdout
    assert "why this program: " in done.stdout


def test_evaluate_with_a_metric_that_raises_on_every_prediction_is_a_configuration_error(
    optimized: tuple[Path, FakeOpenAIServer, str],
) -> None:
    """Every score would read 0.0, as a wrong program's does: exit 2, naming the metric's error."""
    folder, server, _ = optimized
    (folder / "label_metric.py").write_text(
        "def metric(example, prediction):\n    return prediction.answer == example.labels['label']\n",
        encoding="utf-8",
    )
    common = [
        "--data",
        "val.csv",
        "--metric",
        "label_metric.py:metric",
        "--lm",
        server.base_url,
        "--model",
        "w",
    ]
    done = aprompt_cli(folder, "evaluate", "cli_world.py:build", *common, "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert "metric label_metric.py:metric raised on every one of the 30 predictions" in done.stderr
    assert "KeyError: 'label'" in done.stderr


def test_evaluate_of_a_program_that_raises_on_every_example_exits_1_naming_its_error(
    optimized: tuple[Path, FakeOpenAIServer, str],
) -> None:
    """A score of 0.000 with exit 0 read as a wrong program's: the program never gave an answer."""
    folder, server, _ = optimized
    (folder / "broken.py").write_text(
        "from tests.optimize.world import TwoStageProgram\n\n"
        "class Broken(TwoStageProgram):\n"
        "    async def __call__(self, question):\n"
        "        await self.extract(question=question)\n"
        "        raise RuntimeError('a bug after the first stage')\n",
        encoding="utf-8",
    )
    common = ["--data", "val.csv", "--metric", "cli_world.py:metric", "--lm", server.base_url, "--model", "w"]
    done = aprompt_cli(folder, "evaluate", "broken.py:Broken", *common, "--json")
    assert done.returncode == 1 and done.stdout == ""
    assert "program broken.py:Broken raised on every one of the 30 examples it ran on" in done.stderr
    assert "RuntimeError: a bug after the first stage" in done.stderr


def test_an_lm_error_quoting_terminal_sequences_is_printed_with_them_as_escapes(tmp_path: Path) -> None:
    # A provider's message is quoted in the error line the command prints: its control characters
    # (retitle the window, clear the screen) must not reach the terminal of whoever ran the command.
    folder = write_task(tmp_path)
    refusal = Fault.http_status(400, "bad request \x1b]0;owned\x07 \x1b[2J")
    with world_server() as server:
        server.queue_faults(*[refusal] * 500)
        lm = ["--lm", server.base_url, "--model", "w"]
        done = aprompt_cli(
            folder,
            "evaluate",
            "cli_world.py:build",
            "--data",
            "val.csv",
            "--metric",
            "cli_world.py:metric",
            *lm,
        )
    assert done.returncode != 0
    assert "bad request" in done.stderr, done.stderr
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr
    assert "\\x1b]0;owned\\x07 \\x1b[2J" in done.stderr
