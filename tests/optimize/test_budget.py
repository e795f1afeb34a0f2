"""Run sizes: the reference presets, the trials formula, overrides, refusals and the call estimate."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from typing import Any

import attrs
import numpy as np
import pytest

import aprompt
from aprompt._optimize.budget import PRESETS, Budget, estimate_calls, resolve_budget
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import (
    SMALL_BUDGET,
    QAProgram,
    answers,
    exact_match,
    is_program_call,
    lm_for,
    optimize_in_world,
    qa_examples,
)


@pytest.mark.parametrize(
    ("preset", "n_candidates", "val_size"), [("light", 6, 100), ("medium", 12, 300), ("heavy", 18, 1000)]
)
def test_presets_match_the_reference(preset: str, n_candidates: int, val_size: int) -> None:
    budget = resolve_budget(preset)
    assert (budget.n_candidates, budget.val_size) == (n_candidates, val_size)
    # A third of the reference's 35-example mini-batches, three times the trials (see trials_for).
    assert (budget.minibatch_size, budget.full_eval_every) == (12, 15)


def test_light_gives_one_predictor_searching_demos_the_references_10_trials_in_examples() -> None:
    # The reference's 10 trials of 35 examples: 350 examples, as 29 trials of 12 (348).
    assert attrs.evolve(PRESETS["light"], minibatch_size=35).trials_for(1, searches_demos=True) == 10
    assert PRESETS["light"].trials_for(1, searches_demos=True) == 29


@pytest.mark.parametrize(
    ("minibatch_size", "n_val", "trials"),
    [
        (35, None, 20),  # the formula as the reference has it
        (18, None, 38),  # 20 · 35 // 18: 684 examples, not above the formula's 700
        (12, None, 58),  # 20 · 35 // 12
        (70, None, 10),  # larger mini-batches, fewer trials
        (18, 30, 33),  # a 30-example valset caps the formula's trials at 30 examples: 20 · 30 // 18
        (18, 10, 20),  # a mini-batch of the whole valset on both sides: the formula's count
    ],
)
def test_smaller_mini_batches_buy_more_trials_for_the_same_examples(
    minibatch_size: int, n_val: int | None, trials: int
) -> None:
    budget = Budget(minibatch_size=minibatch_size)
    assert budget.trials_for(2, searches_demos=True, n_val=n_val) == trials
    examples = trials * (minibatch_size if n_val is None else min(minibatch_size, n_val))
    assert examples <= 20 * (35 if n_val is None else min(35, n_val))


@pytest.mark.parametrize(
    ("n_predictors", "searches_demos", "preset", "trials"),
    [
        # max(2·V·log2(n), 1.5·n), V = predictors (×2 with demos), truncated to an int.
        (1, False, "light", 9),  # max(5.17, 9)
        (2, True, "light", 20),  # max(20.68, 9)
        (1, True, "medium", 18),  # max(14.34, 18)
        (3, True, "medium", 43),  # max(43.02, 18)
        (2, True, "heavy", 33),  # max(33.36, 27)
    ],
)
def test_trials_follow_the_reference_formula(
    n_predictors: int, searches_demos: bool, preset: str, trials: int
) -> None:
    assert attrs.evolve(PRESETS[preset], minibatch_size=35).trials_for(n_predictors, searches_demos) == trials


def test_an_explicit_trial_count_wins_over_the_formula() -> None:
    assert Budget(n_trials=3).trials_for(5, searches_demos=True) == 3


def test_a_mapping_overrides_the_light_preset() -> None:
    assert resolve_budget({"n_trials": 30, "minibatch_size": 20}) == Budget(
        n_candidates=6, val_size=100, n_trials=30, minibatch_size=20
    )


def test_a_mapping_can_start_from_another_preset() -> None:
    budget = resolve_budget({"preset": "heavy", "val_size": 50})
    assert (budget.n_candidates, budget.val_size) == (18, 50)


def test_a_budget_is_used_as_given() -> None:
    budget = Budget(n_candidates=3, val_size=7)
    assert resolve_budget(budget) is budget


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        ("extreme", "unknown budget 'extreme'"),
        ({"preset": "extreme"}, "unknown budget 'extreme'"),
        ({"n_candidate": 3}, "unknown budget field"),
        ({1: 2, "bogus": 3}, r"unknown budget field\(s\): \['bogus', 1\]"),  # keys of two types
        ({"n_candidates": 0}, "n_candidates"),
        ({"minibatch_size": -1}, "minibatch_size"),
        ({"full_eval_every": 0}, "full_eval_every"),
        ({"n_trials": 0}, "n_trials"),
        ({"parallel_trials": 0}, "parallel_trials"),
        ({"max_bootstrapped_demos": -1}, "max_bootstrapped_demos"),
        ({"n_candidates": "6"}, "n_candidates"),
        ({"n_trials": 2.5}, "n_trials"),
        ({"val_size": True}, "val_size"),
        ({"n_trials": None, "val_size": None}, "val_size"),
        (6, "not int"),
    ],
)
def test_bad_budgets_are_config_errors(budget: Any, match: str) -> None:
    with pytest.raises(aprompt.ConfigError, match=match):
        resolve_budget(budget)


@pytest.mark.anyio
async def test_numpy_whole_numbers_in_a_budget_run_as_plain_ints() -> None:
    # A count read from a numpy array is a whole number; the search must take it, not refuse it after
    # the bootstrap and the proposals were paid for.
    numpy_budget = {key: np.int64(value) for key, value in SMALL_BUDGET.items()}
    resolved = resolve_budget(numpy_budget)
    assert all(type(getattr(resolved, key)) is int for key in numpy_budget)
    result, _ = await optimize_in_world(budget=numpy_budget)
    plain, _ = await optimize_in_world()
    assert (result.pick.choice, result.score) == (plain.pick.choice, plain.score)


@pytest.mark.parametrize(
    ("capacity", "calls_per_run", "window"),
    [
        (64, 1, 3),  # a trial's tail besides, 63 more slots: two more trials of 35
        (45, 1, 3),  # 600 requests/min told: 30/s x a 1 s guess x 1.5
        (35, 1, 2),  # the next trial fills the slots a finishing one frees
        (4, 1, 2),  # the local model's four slots
        (1, 1, 1),  # one slot: the next trial would only wait
        (256, 2, 5),  # 1 + ceil(255 / 70)
        (100_000, 1, 8),  # never more than eight trials of 35
        (None, 1, 8),  # adaptive with no limit known: the widest, so no slow answer holds it back
    ],
)
def test_the_trial_window_keeps_the_lms_planned_concurrency_busy(
    capacity: int | None, calls_per_run: int, window: int
) -> None:
    assert Budget(minibatch_size=35).parallel_trials_for(capacity, calls_per_run=calls_per_run) == window


@pytest.mark.parametrize(
    ("capacity", "window"),
    [
        (256, 12),  # 1 + ceil(255 / 24): two calls a run, 12 examples a trial
        (100_000, 24),  # three times the trials of 35-example ones: three times the eight
        (None, 24),  # adaptive: the widest
    ],
)
def test_smaller_mini_batches_widen_the_window_as_they_multiply_the_trials(
    capacity: int | None, window: int
) -> None:
    assert Budget(minibatch_size=12).parallel_trials_for(capacity, calls_per_run=2) == window


def test_an_explicit_trial_window_is_kept() -> None:
    assert Budget(parallel_trials=5).parallel_trials_for(10, calls_per_run=2) == 5
    assert Budget(parallel_trials=1).parallel_trials_for(None, calls_per_run=2) == 1


@pytest.mark.parametrize(
    ("minibatch_size", "full_eval_every", "evaluation"),
    [
        # 10 trials of 35: 3 full evaluations (the baseline, one after 5 trials, the last) and 10
        # mini-batches — the reference's ~650 evaluation calls.
        (35, 5, 650),
        # The light preset: 29 trials of 12, the same 3 full evaluations, no more calls.
        (12, 15, 648),
    ],
)
def test_the_call_estimate_of_a_light_run_is_the_references(
    minibatch_size: int, full_eval_every: int, evaluation: int
) -> None:
    budget = attrs.evolve(PRESETS["light"], minibatch_size=minibatch_size, full_eval_every=full_eval_every)
    estimate = estimate_calls(
        budget,
        n_predictors=1,
        calls_per_run=1.0,
        n_trials=budget.trials_for(1, searches_demos=True, n_val=100),
        val_size=100,
        bootstrap_runs=14,
        proposal_calls=20,
    )
    assert (estimate.bootstrap, estimate.proposal, estimate.evaluation) == (14, 20, evaluation)
    assert estimate.total == 34 + evaluation


def new_proposals(replies: Iterator[int], request: ChatRequest) -> str:
    """A proposer whose every proposal is a new, usable instruction (numbered from ``replies``)."""
    if "You write instructions" in str(request.messages[0].get("content", "")):
        return f"Proposed instruction: Solve it carefully, variant {next(replies)}."
    return "The data has questions about items and short coded answers for each of them."


@pytest.mark.anyio
async def test_the_planned_proposal_calls_count_every_grounding_call() -> None:
    # The proposer has its own server: every call it gets is a summary or a proposal, and the plan's
    # "proposal" count is their most (each reply a new, usable instruction, so nothing is asked again).
    replies = itertools.count()
    events: list[aprompt.Event] = []
    async with (
        FakeOpenAIServer(responder=answers, api_key=TEST_API_KEY) as program_server,
        FakeOpenAIServer(responder=partial(new_proposals, replies), api_key=TEST_API_KEY) as proposer_server,
        lm_for(program_server) as lm,
        lm_for(proposer_server) as proposer_lm,
    ):
        await aprompt.optimize(
            QAProgram(),
            qa_examples(0, 40),
            exact_match,
            valset=qa_examples(100, 110),
            lm=lm,
            proposer_lm=proposer_lm,
            budget={"n_candidates": 3, "n_trials": 2, "minibatch_size": 5, "screen_size": 0},
            on_event=events.append,
        )
        (planned,) = [event for event in events if isinstance(event, aprompt.RunPlanned)]
        grounding = len(proposer_server.chat_requests) - next(replies)
        assert grounding == 5  # the data summary's three batches and its condensing, the program summary
        assert len(proposer_server.chat_requests) <= planned.detail["proposal"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "strategy", ["mipro", "mipro_zero_shot", "bayesian_bootstrap", "bootstrap_random_search", "module_opro"]
)
async def test_the_plan_counts_calls_only_for_the_steps_the_strategy_takes(strategy: str) -> None:
    # A strategy that searches no demos bootstraps none, and one that searches no instructions asks the
    # proposer nothing: the plan's detail must not announce calls for a step the run never takes.
    events: list[aprompt.Event] = []
    result, requests = await optimize_in_world(strategy, on_event=events.append)
    (planned,) = [event for event in events if isinstance(event, aprompt.RunPlanned)]
    proposer_calls = sum(not is_program_call(request) for request in requests)
    assert (planned.detail["bootstrap"] > 0) == ("bootstrap" in {p.phase for p in result.phases})
    assert (planned.detail["proposal"] > 0) == (proposer_calls > 0)


@pytest.mark.anyio
async def test_the_planned_evaluation_counts_the_hand_written_prompts_full_evaluation() -> None:
    # Without racing, the search scores its trials' mini-batches and whole-valset evaluations as planned;
    # the hand-written prompt (labeled demos) is one of those full evaluations, beside the baseline.
    events: list[aprompt.Event] = []
    async with (
        FakeOpenAIServer(responder=answers, api_key=TEST_API_KEY) as server,
        FakeOpenAIServer(
            responder=partial(new_proposals, itertools.count()), api_key=TEST_API_KEY
        ) as proposer,
        lm_for(server) as lm,
        lm_for(proposer) as proposer_lm,
    ):
        result = await aprompt.optimize(
            QAProgram(),
            qa_examples(0, 40),
            exact_match,
            valset=qa_examples(100, 130),
            lm=lm,
            proposer_lm=proposer_lm,
            budget={
                "n_candidates": 2,
                "n_trials": 6,
                "minibatch_size": 10,
                "screen_size": 0,
                "racing": False,
            },
            on_event=events.append,
        )
    (planned,) = [event for event in events if isinstance(event, aprompt.RunPlanned)]
    assert "reference" in {phase.phase for phase in result.phases}
    scored = len(result.full_evals) * planned.val_size + sum(
        len(trial.example_ids) for trial in result.trials
    )
    assert scored <= planned.detail["evaluation"]
