"""The demo: its data ships with the package, its metric reads a reply as a person would, and on the real
local model it says how long it will take, shows held-out sentences before and after, a readable
instruction, and the hand-written prompt's score beside the optimized one."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import aprompt
from aprompt._optimize.evaluate import Evaluation, ExampleResult
from aprompt._optimize.proposal_filter import SCAFFOLDING_LABELS, clean_proposal
from aprompt.demo.__main__ import (
    comparison,
    estimate_seconds,
    exact_negation,
    fixed_examples,
    load_examples,
    parse_args,
    shown_examples,
)


def test_the_demo_data_ships_with_the_package_with_every_sentence_kind_balanced() -> None:
    examples = load_examples()
    assert len(examples) == 600
    assert all(" not " in e.labels["negated"] for e in examples)
    assert len({e.id for e in examples}) == 600


def test_the_demo_metric_forgives_case_spacing_and_a_final_period_only() -> None:
    example = aprompt.Example(
        inputs={"sentence": "the nurse plays tennis"}, labels={"negated": "the nurse does not play tennis"}
    )
    assert exact_negation(example, SimpleNamespace(negated=" The nurse  does not play tennis."))
    assert not exact_negation(example, SimpleNamespace(negated="The nurse plays tennis."))
    assert not exact_negation(example, SimpleNamespace(negated="the nurse doesn't play tennis"))


def test_the_demo_shows_held_out_examples_the_optimized_program_fixed() -> None:
    test = load_examples()[:3]
    before = Evaluation(tuple(ExampleResult(e.id, s) for e, s in zip(test, [0.0, 1.0, 0.0], strict=True)))
    after = Evaluation(tuple(ExampleResult(e.id, s) for e, s in zip(test, [1.0, 1.0, 0.0], strict=True)))
    assert [e for e, _, _ in fixed_examples(test, before, after, 2)] == [test[0]]


def test_the_demo_fits_its_default_split_in_the_shipped_data() -> None:
    args = parse_args([])
    assert args.train + args.val + args.test <= len(load_examples())


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--test", "590"], "600 sentences"),  # the validation split would be empty
        (["--train", "500"], "600 sentences"),
        (["--test", "-5"], "--test"),
        (["--val", "0"], "--val"),
        (["--parallel", "0"], "--parallel"),
    ],
)
def test_a_demo_split_the_shipped_data_cannot_hold_is_refused(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2 and named in capsys.readouterr().err


def _evaluation(scores: list[float]) -> Evaluation:
    return Evaluation(tuple(ExampleResult(f"e{i}", s) for i, s in enumerate(scores)))


def test_the_demo_shows_fixed_sentences_first_then_others_when_too_few_were_fixed() -> None:
    test = load_examples()[:4]
    before, after = _evaluation([1.0, 0.0, 0.0, 0.0]), _evaluation([1.0, 0.0, 1.0, 0.0])
    assert shown_examples(test, before, after, 2) == [2, 0]
    assert shown_examples(test, before, after, 1) == [2]


def test_the_demo_time_estimate_counts_the_plans_calls_proposals_weighed_and_the_last_evaluation() -> None:
    plan = aprompt.RunPlanned("mipro", 10, 30, 400, {"proposal": 10})
    bare = estimate_seconds(aprompt.RunPlanned("mipro", 10, 30, 390, {"proposal": 0}), 0.1, 0)
    assert bare == pytest.approx(39.0)
    assert estimate_seconds(plan, 0.1, 0) > bare + 0.1 * 10  # a proposal costs more than a program call
    assert estimate_seconds(plan, 0.1, 60) == pytest.approx(estimate_seconds(plan, 0.1, 0) + 6.0)


def test_the_demo_states_which_prompt_wins_from_the_sentences_only_one_gets_right() -> None:
    optimized, hand = _evaluation([1.0, 1.0, 1.0, 0.0]), _evaluation([1.0, 0.0, 0.0, 1.0])
    assert comparison(optimized, hand).startswith("the optimized program beats the hand-written prompt by 25")
    assert "only the optimized program is right on 2 sentences, only the hand-written prompt on 1" in (
        comparison(optimized, hand)
    )
    assert comparison(hand, optimized).startswith("the hand-written prompt beats the optimized program by 25")


@pytest.mark.local_model
def test_the_demo_on_the_local_model_estimates_its_time_and_shows_sentences_and_a_readable_instruction(
    tmp_path: Path,
) -> None:
    out = tmp_path / "demo.json"
    small = ["--train", "20", "--val", "10", "--test", "10", "--trials", "2", "--minibatch", "5"]
    small += ["--candidates", "2"]  # one proposal: proposals are the demo's longest calls
    done = subprocess.run(
        [sys.executable, "-m", "aprompt.demo", *small, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,  # minutes on an idle machine; a busy one runs llama.cpp far slower
        check=True,
    )
    printed = done.stdout
    assert re.search(r"^time: about \d+ (s|min) in all from the \d+\.\d\d s per call", printed, re.M)
    assert re.search(r"^  written by hand \(\+ 3 training examples\): +\d\.\d{3}$", printed, re.M)
    assert re.search(r"^  optimized by aprompt \(\d+ demos\): +\d\.\d{3}$", printed, re.M)
    assert re.search(r"^(the optimized program|the hand-written prompt) (beats|and)", printed, re.M)
    shown = re.findall(
        r"^  sentence: +(.*)\n  expected: +(.*)\n  as written: .*\n  optimized: .*$", printed, re.M
    )
    assert len(shown) == 2
    sentences = {e.inputs["sentence"] for e in load_examples()}
    assert all(ast.literal_eval(sentence) in sentences for sentence, _ in shown)
    printed_instruction = ast.literal_eval(re.findall(r"^  instruction: (.*)$", printed, re.M)[-1])
    saved = json.loads(out.read_text())["state"]["predictors"]["negate"]["instruction"]
    assert printed_instruction == saved
    assert clean_proposal(saved).text == saved  # nothing of the proposer's scaffolding to cut
    assert not any(f"{label}:" in saved for label in SCAFFOLDING_LABELS)
    assert re.search(r"^demo finished in \d+ s after the model started \(load average", printed, re.M)


@pytest.mark.local_model
def test_ctrl_c_while_the_demo_starts_its_model_exits_130_without_a_traceback() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "aprompt.demo", "--test", "4", "--train", "6", "--val", "4", "--trials", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A child started in the background may inherit SIGINT ignored; a terminal's Ctrl-C is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("starting SmolLM2"):
            break
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "interrupted." in stderr and "Traceback" not in stderr
