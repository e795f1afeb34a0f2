"""Strategies and grounding sources as classes: a user's strategy runs by name or as an instance, its
plan is the run's plan, every built-in strategy makes the trials it plans, and a new grounding source
reaches the proposer's prompt and the journal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt._optimize import grounding
from aprompt._optimize.budget import resolve_budget
from aprompt._optimize.grounding import GroundingSource
from aprompt._optimize.propose import Grounding
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.strategies import (
    STRATEGIES,
    Strategy,
    StrategyPlan,
    register_strategy,
    unregister_strategy,
)
from aprompt._optimize.summaries import Grounded
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import SMALL_BUDGET, is_proposal, last_user_of, lm_for, optimize_in_world
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

HOWTO = Path(__file__).resolve().parents[2] / "docs" / "howto.md"
BUILT_IN = [
    "mipro",
    "mipro_zero_shot",
    "bayesian_bootstrap",
    "bootstrap_random_search",
    "module_opro",
    "mipro_plus_plus",
    "mipro_reflective",
]
#: No ``n_trials``: each strategy derives its own count from the budget (a small one: 3 candidates).
DERIVED_BUDGET = {**{k: v for k, v in SMALL_BUDGET.items() if k != "n_trials"}, "n_candidates": 3}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def howto_strategy_class() -> type[Strategy]:
    """The ``FewDemos`` strategy of the how-to's "Write a strategy" section, defined as a user would."""
    section = HOWTO.read_text(encoding="utf-8").split("## Write a strategy", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "docs/howto.md has no python block under 'Write a strategy'"
    namespace: dict[str, Any] = {"__name__": "howto_example"}
    exec(compile(code.group(1), str(HOWTO), "exec"), namespace)
    strategy_class = namespace["FewDemos"]
    assert issubclass(strategy_class, Strategy)
    return strategy_class


@pytest.fixture
def registered_few_demos() -> Iterator[Strategy]:
    strategy = register_strategy(howto_strategy_class()(n_trials=5))
    try:
        yield strategy
    finally:
        unregister_strategy(strategy.name)


def planned_events(events: list[aprompt.Event]) -> list[aprompt.RunPlanned]:
    return [e for e in events if isinstance(e, aprompt.RunPlanned)]


async def test_a_registered_strategy_runs_by_name_with_its_plan_announced(
    registered_few_demos: Strategy,
) -> None:
    events: list[aprompt.Event] = []
    result, requests = await optimize_in_world("few_demos", on_event=events.append)
    [planned] = planned_events(events)
    assert (planned.strategy, planned.n_trials) == ("few_demos", 5)
    assert len(result.trials) == 5 and result.strategy == "few_demos"
    assert not any(is_proposal(r) for r in requests), "the strategy proposes no instruction"
    assert all(key.endswith(".demos") for key in result.best_choice)


async def test_a_strategy_instance_passed_directly_runs_unregistered() -> None:
    strategy = howto_strategy_class()(n_trials=3)
    events: list[aprompt.Event] = []
    result, _ = await optimize_in_world(strategy=strategy, on_event=events.append)
    assert "few_demos" not in STRATEGIES
    assert [(e.strategy, e.n_trials) for e in planned_events(events)] == [("few_demos", 3)]
    assert len(result.trials) == 3 and result.strategy == "few_demos"


async def test_an_unknown_strategy_name_is_refused_listing_the_registered_ones(
    registered_few_demos: Strategy,
) -> None:
    with pytest.raises(aprompt.ConfigError, match="unknown strategy 'few_demo'") as refused:
        await optimize_in_world("few_demo")
    assert all(repr(name) in str(refused.value) for name in [*BUILT_IN, "few_demos"])


@pytest.mark.parametrize("name", BUILT_IN)
async def test_each_built_in_strategy_makes_the_trials_its_plan_counts(name: str) -> None:
    events: list[aprompt.Event] = []
    result, _ = await optimize_in_world(name, budget=DERIVED_BUDGET, on_event=events.append)
    plan = STRATEGIES[name].plan(resolve_budget(DERIVED_BUDGET), 2, 60, 30)
    [planned] = planned_events(events)
    assert planned.n_trials == plan.n_trials == len(result.trials)
    assert result.stopped_by is None


def negative_trials_strategy() -> Strategy:
    class NegativeTrials(howto_strategy_class()):  # type: ignore[misc]
        name = "negative_trials"

        def plan(self, budget: Any, n_predictors: int, n_train: int, n_val: int) -> StrategyPlan:
            return StrategyPlan.standard(budget, n_predictors, n_train, n_val, n_trials=-3)

    return NegativeTrials()


@pytest.mark.parametrize(
    ("make", "refusal"),
    [
        (lambda: howto_strategy_class()(n_trials=0), "plans no trial and no full evaluation"),
        (negative_trials_strategy, "plans n_trials=-3"),
    ],
)
async def test_a_plan_that_cannot_run_is_refused_before_any_call(make: Any, refusal: str) -> None:
    """A strategy option such as ``n_trials=0`` is refused up front, not once the bootstrap is paid for."""
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
    ):
        with pytest.raises(aprompt.ConfigError, match=refusal):
            await aprompt.optimize(
                TwoStageProgram(), examples(0, 60), metric, valset=examples(200, 230), lm=lm, strategy=make()
            )
        assert server.chat_requests == []


async def test_a_call_limit_too_small_for_a_full_evaluation_strategy_names_its_real_first_step() -> None:
    """bootstrap_random_search makes no mini-batch: its first searched program is fully evaluated, so a
    limit must pay for two evaluations of the validation set (30 + 30 runs), and the refusal says so."""
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
    ):
        with pytest.raises(aprompt.ConfigError) as refused:
            await aprompt.optimize(
                TwoStageProgram(),
                examples(0, 60),
                metric,
                valset=examples(200, 230),
                lm=lm,
                strategy="bootstrap_random_search",
                limits=aprompt.Limits(max_lm_calls=50),
            )
        assert server.chat_requests == []
    message = str(refused.value)
    assert "one full evaluation (30 runs)" in message and "max_lm_calls=60" in message, message
    assert "mini-batch" not in message


class FirstQuestions(GroundingSource):
    """The first two training questions, verbatim (no LM call)."""

    name = "first_questions"
    field = "first_questions"
    label = "first questions"
    max_calls = 0

    def enabled(self, grounding: Grounding) -> bool:
        return True  # no Grounding flag switches it

    async def text(self, ctx: RunContext) -> Grounded:
        return Grounded(" | ".join(str(e.inputs["question"]) for e in ctx.trainset[:2]))


async def test_a_new_grounding_source_is_shown_to_the_proposer_and_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grounding, "GROUNDING_SOURCES", (*grounding.GROUNDING_SOURCES, FirstQuestions()))
    result, requests = await optimize_in_world("mipro", run_dir=tmp_path)
    prompts = [last_user_of(r) for r in requests if is_proposal(r)]
    with RunJournal.open(tmp_path) as journal:
        data_summary, program_summary, questions = journal.latest("summaries", "all")
    assert data_summary and program_summary and questions.count("What is the answer for item-") == 2
    assert prompts and all(f"First Questions: {questions}" in prompt for prompt in prompts)
    assert all(prompt.index("Program Description:") < prompt.index("First Questions:") for prompt in prompts)
    assert result.score >= result.baseline_score


async def test_a_full_evaluation_strategy_plans_the_evaluations_it_makes() -> None:
    """bootstrap_random_search makes no trial: its plan counts its random combinations' full evaluations,
    so the announced estimate (an upper bound before any cache) holds its evaluations."""
    events: list[aprompt.Event] = []
    result, _ = await optimize_in_world("bootstrap_random_search", on_event=events.append)
    [planned] = planned_events(events)
    made = len(result.full_evals) * planned.val_size * 2  # two stages: two LM calls per program run
    assert planned.n_trials == 0 and len(result.full_evals) > 1
    assert made <= planned.detail["evaluation"]


@pytest.mark.parametrize("strategy", ["module_opro", "mipro_plus_plus"])
async def test_a_strategy_plans_at_least_the_evaluations_and_proposals_it_makes(strategy: str) -> None:
    """The announced estimate is an upper bound before any cache: module_opro's full evaluations every
    two rounds, and mipro_plus_plus's proposal per proposer setting its trials choose, are counted."""
    events: list[aprompt.Event] = []
    result, requests = await optimize_in_world(strategy, budget={"preset": "light"}, on_event=events.append)
    [planned] = planned_events(events)
    made = len(result.full_evals) * planned.val_size * 2  # two stages: two LM calls per program run
    assert made + planned.n_trials * min(12, planned.val_size) * 2 <= planned.detail["evaluation"]
    assert sum(1 for r in requests if is_proposal(r)) <= planned.detail["proposal"]
