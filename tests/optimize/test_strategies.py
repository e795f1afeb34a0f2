"""Each strategy's defining behaviour, in the simulated world, and a result at least the baseline's."""

from __future__ import annotations

import re

import pytest

import aprompt
from aprompt._optimize.strategies import TEMPERATURES
from aprompt.testing.fake_openai import FakeOpenAIServer, RecordedRequest
from tests.optimize.qa_task import (
    is_program_call,
    is_proposal,
    last_user_of,
    lm_for,
    messages_of,
    optimize_in_world,
    system_of,
)

pytestmark = pytest.mark.anyio

ORIGINAL = {"extract": "Find the code.", "answer": "Give the answer."}


def has_demos(request: RecordedRequest) -> bool:
    return any(m["role"] == "assistant" for m in messages_of(request))


def proposals_for(requests: list[RecordedRequest], predictor: str) -> list[str]:
    """The proposer prompts (user messages) for one predictor, in the order they were answered."""
    return [
        last_user_of(r)
        for r in requests
        if is_proposal(r) and last_user_of(r).startswith(f"Module: {predictor}:")
    ]


def grounding_shown(prompt: str) -> frozenset[str]:
    return frozenset(re.findall(r"^([A-Z][A-Za-z ]+):", prompt, flags=re.MULTILINE))


async def test_mipro_zero_shot_never_shows_a_demo() -> None:
    result, requests = await optimize_in_world("mipro_zero_shot")
    program_calls = [r for r in requests if is_program_call(r)]
    assert program_calls and not any(has_demos(r) for r in program_calls)
    assert not any("Examples Of Good Calls:" in last_user_of(r) for r in requests if is_proposal(r))
    assert all(len(result.candidates.instructions[name]) > 1 for name in ORIGINAL)
    assert all(key.endswith(".instruction") for key in result.best_choice)
    assert result.score >= result.baseline_score


async def test_bayesian_bootstrap_keeps_the_original_instructions() -> None:
    result, requests = await optimize_in_world("bayesian_bootstrap")
    assert not any(is_proposal(r) for r in requests)
    program_calls = [r for r in requests if is_program_call(r)]
    assert all(system_of(r).startswith(tuple(ORIGINAL.values())) for r in program_calls)
    assert any(has_demos(r) for r in program_calls), "demo sets were searched"
    assert {name: result.candidates.instructions[name] for name in ORIGINAL} == {
        name: (text,) for name, text in ORIGINAL.items()
    }
    assert all(key.endswith(".demos") for key in result.best_choice)
    assert result.score >= result.baseline_score


async def test_module_opro_shows_each_proposer_its_past_instructions_with_their_scores() -> None:
    result, requests = await optimize_in_world("module_opro")
    prompts = proposals_for(requests, "extract")
    assert len(prompts) >= 2
    baseline = f"- Find the code. (score {result.baseline_score:.2f})"
    assert baseline in prompts[0]
    # Round 2 sees round 1's instruction with the score of the trial that tried it.
    first_trial = result.trials[0]
    proposed = result.candidates.instructions["extract"][first_trial.choice["extract.instruction"]]
    assert first_trial.score is not None
    assert f"- {proposed} (score {first_trial.score:.2f})" in prompts[1]
    assert "scores higher than the previous ones" in next(system_of(r) for r in requests if is_proposal(r))
    assert not any(has_demos(r) for r in requests if is_program_call(r))
    assert result.score >= result.baseline_score


async def test_module_opro_runs_as_many_rounds_as_the_budget_names_trials() -> None:
    events: list[aprompt.Event] = []
    result, requests = await optimize_in_world("module_opro", on_event=events.append)  # n_trials=6
    planned = next(e for e in events if isinstance(e, aprompt.RunPlanned))
    assert planned.n_trials == 6
    assert [t.number for t in result.trials] == list(range(6))
    assert len(proposals_for(requests, "extract")) >= 6


async def test_module_opro_evaluates_a_tried_combination_in_full_reusing_its_trial_scores() -> None:
    result, _ = await optimize_in_world("module_opro")
    periodic = result.full_evals[1]  # after round 2: the best combination without a full evaluation
    tried = [t for t in result.trials if dict(t.choice) == dict(periodic.choice)]
    assert tried, "it evaluates a combination a trial tried"
    known = {eid: t.scores[eid] for t in tried for eid in t.example_ids}
    assert periodic.reused == len(known) > 0
    assert {eid: periodic.scores[eid] for eid in known} == known


async def test_module_opro_under_a_call_limit_still_evaluates_its_best_trial_in_full() -> None:
    # 160 calls pay for the baseline (60), two rounds (2 x 22) and the rest of a tried combination's
    # evaluation (20 runs, 40 calls), not for a fresh one (60 calls).
    result, requests = await optimize_in_world("module_opro", limits=aprompt.Limits(max_lm_calls=160))
    assert len(requests) <= 160 and result.stopped_by == "max_lm_calls"
    assert len(result.trials) == 2
    assert [dict(f.choice) for f in result.full_evals[1:]] == [dict(result.trials[0].choice)]
    assert result.score > result.baseline_score


async def test_module_opro_under_a_call_limit_sends_no_program_call_it_does_not_record() -> None:
    # A round the limit cannot pay for is refused before it spends, not cut by the meter in its midst.
    result, requests = await optimize_in_world("module_opro", limits=aprompt.Limits(max_lm_calls=190))
    assert result.stopped_by == "max_lm_calls" and len(result.trials) >= 2
    recorded_runs = (
        sum(len(t.example_ids) for t in result.trials)
        + sum(len(f.scores) + f.n_unscored - f.reused for f in result.full_evals)
        + sum(len(c.scores) + c.n_unscored for c in result.confirmations)
    )
    program_calls = [r for r in requests if is_program_call(r)]
    assert len(program_calls) <= 2 * recorded_runs  # two stages, one call each per run at most


async def test_mipro_plus_plus_proposes_with_the_grounding_and_temperature_the_search_chose() -> None:
    result, requests = await optimize_in_world("mipro_plus_plus")
    proposer = [r for r in requests if is_proposal(r)]
    temperatures = {r.body["temperature"] for r in proposer if r.body is not None}
    assert len(temperatures) >= 2 and temperatures <= set(TEMPERATURES)
    shown = {grounding_shown(last_user_of(r)) for r in proposer}
    assert len(shown) >= 2, shown
    assert any(len(result.candidates.instructions[name]) > 1 for name in ORIGINAL)
    # The search chooses instructions and demos; grounding and temperature were choices of the proposals.
    assert {key.rsplit(".", 1)[1] for t in result.trials for key in t.choice} == {"instruction", "demos"}
    assert len(result.trials) == 6, "the budget's own trial count is kept"
    assert result.score >= result.baseline_score


async def test_mipro_plus_plus_chooses_no_grounding_piece_the_run_switched_off() -> None:
    result, requests = await optimize_in_world(
        "mipro_plus_plus", grounding=aprompt.Grounding(demos=False, tip=False)
    )
    proposer = [r for r in requests if is_proposal(r)]
    assert proposer and any(len(result.candidates.instructions[name]) > 1 for name in ORIGINAL)
    shown = set().union(*(grounding_shown(last_user_of(r)) for r in proposer))
    assert not shown & {"Examples Of Good Calls", "Tip"}, shown
    assert "Program Description" in shown, "the pieces left on are still shown"
    assert len({r.body["temperature"] for r in proposer if r.body is not None}) >= 2, "still searched"


async def test_bootstrap_random_search_fully_evaluates_random_demo_sets() -> None:
    result, requests = await optimize_in_world("bootstrap_random_search")
    assert result.trials == (), "no mini-batches"
    assert not any(is_proposal(r) for r in requests)
    choices = [dict(f.choice) for f in result.full_evals]
    assert choices[0] == result.candidates.baseline()
    assert len(choices) >= 2 and len({tuple(sorted(c.items())) for c in choices}) == len(choices)
    assert all(set(c) == {"extract.demos", "answer.demos"} for c in choices)
    assert all(len(f.scores) + f.n_unscored == 30 for f in result.full_evals)
    # The final pick returns one of the evaluated programs, never below the baseline (with 30 examples a
    # +0.1 lead is not evidence enough to replace it).
    assert result.pick is not None and result.score >= result.baseline_score
    assert result.score in {f.score for f in result.full_evals}


@pytest.mark.parametrize("strategy", ["mipro", "module_opro", "mipro_plus_plus"])
async def test_every_dropped_proposal_is_reported_as_an_event(strategy: str) -> None:
    events: list[aprompt.Event] = []
    async with (
        FakeOpenAIServer(responder=lambda request: "ok") as junk_server,
        lm_for(junk_server) as proposer,
    ):
        result, _ = await optimize_in_world(strategy, proposer_lm=proposer, on_event=events.append)
    dropped = [(e.predictor, e.index, e.reason) for e in events if isinstance(e, aprompt.CandidateDropped)]
    assert dropped and sorted(dropped) == sorted(d for d in result.dropped if d[0] != "*")
    assert all(result.candidates.instructions[name] == (text,) for name, text in ORIGINAL.items())
    assert result.score >= result.baseline_score
