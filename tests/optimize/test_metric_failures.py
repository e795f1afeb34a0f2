"""A metric that passes the label check but fails on real predictions stops the run at its first
evaluation, not after a whole run of zeros: a value that is not a score is a ConfigError at once, and a
metric that raised on every prediction it was given is an OptimizationError.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import pytest

import aprompt
from aprompt import Example
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import SMALL_BUDGET, lm_for
from tests.optimize.world import TwoStageProgram, World, examples
from tests.optimize.world import metric as exact_metric

pytestmark = pytest.mark.anyio

#: The first evaluations of a run, which start together: the first wave of each of the bootstrap's two
#: sets (8 examples each, through the two-stage program), the baseline's evaluation (30 validation
#: examples) and the grounding texts (5 calls).
FIRST_EVALUATION_CALLS = 2 * 16 + 60 + 5


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def optimize_against(server: FakeOpenAIServer, metric: Any) -> None:
    async with lm_for(server) as lm:
        await aprompt.optimize(TwoStageProgram(), examples(0, 60), metric, lm=lm, budget=SMALL_BUDGET)


@pytest.mark.parametrize(
    "bad_value", [None, float("nan"), "no", 2.5, pytest.param(10**400, id="an int too large for a float")]
)
async def test_a_metric_value_that_is_not_a_score_stops_the_run_at_once(
    fake_server: FakeOpenAIServer, bad_value: object
) -> None:
    # Right answers (the labels) score True; the fake server's "ok" answers get the bad value.
    def picky(example: Example, prediction: Any) -> object:
        return True if prediction.answer == example.labels["answer"] else bad_value

    shown = re.escape(repr(bad_value)[:40])
    with pytest.raises(aprompt.ConfigError, match=f"metric .*picky returned .*{shown}"):
        await optimize_against(fake_server, picky)
    assert 0 < len(fake_server.chat_requests) <= FIRST_EVALUATION_CALLS


async def test_a_metric_raising_on_every_prediction_stops_the_run_after_its_first_evaluation(
    fake_server: FakeOpenAIServer,
) -> None:
    # Reads a field neither the labels nor the program's predictions have: not refused up front.
    def reads_reasoning(example: Example, prediction: Any) -> bool:
        return bool(prediction.reasoning)

    with pytest.raises(
        aprompt.OptimizationError, match=r"metric .*reads_reasoning raised on every one"
    ) as info:
        await optimize_against(fake_server, reads_reasoning)
    assert 0 < len(fake_server.chat_requests) <= FIRST_EVALUATION_CALLS
    assert all("AttributeError" in error for error in info.value.errors.values())


class ForgetsToReturn(TwoStageProgram):
    """Runs both stages and returns nothing: the metric is handed None."""

    async def __call__(self, question: str) -> Any:
        await super().__call__(question)


async def test_a_program_returning_none_is_named_as_the_cause_of_a_metric_raising_on_everything(
    fake_server: FakeOpenAIServer,
) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.OptimizationError, match="the program returned None every time"):
            await aprompt.optimize(
                ForgetsToReturn(), examples(0, 60), exact_metric, lm=lm, budget=SMALL_BUDGET
            )
    assert 0 < len(fake_server.chat_requests) <= FIRST_EVALUATION_CALLS


async def test_a_metric_raising_on_some_predictions_scores_them_0_and_the_run_goes_on() -> None:
    def fragile(example: Example, prediction: Any) -> bool:
        if example.labels["answer"].endswith("7"):
            raise ValueError("cannot read this one")
        return exact_metric(example, prediction)

    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        result = await aprompt.optimize(
            TwoStageProgram(), examples(0, 60), fragile, valset=examples(200, 230), lm=lm, budget=SMALL_BUDGET
        )
    assert len(result.trials) == SMALL_BUDGET["n_trials"]
    assert result.score > 0
    # Where the docs say the error is kept: the n_failed of the evaluation that ran it, the example's row.
    fragile_ids = {e.id for e in examples(200, 230) if e.labels["answer"].endswith("7")}
    assert fragile_ids and result.full_evals[0].n_failed == len(fragile_ids)  # the baseline ran them all
    rows = {row.example_id: row for row in result.examples.rows if row.example_id in fragile_ids}
    assert rows.keys() == fragile_ids
    assert all("cannot read this one" in (row.outcome.error or "") for row in rows.values())
    # failures holds the training examples whose bootstrap run failed, and no validation step's.
    assert result.failures and all(key.startswith("bootstrap:") for key in result.failures)
    assert all("cannot read this one" in error for error in result.failures.values())


async def test_a_metric_that_pops_the_label_it_reads_scores_every_later_prediction_too() -> None:
    # Each call takes the label out of the example it is handed: were that the run's own example, every
    # later program scored on it would meet a KeyError and score 0, and the baseline would win unseen.
    def popping(example: Example, prediction: Any) -> bool:
        return str(prediction.answer).strip() == example.labels.pop("answer")

    trainset, valset = examples(0, 60), examples(200, 230)
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        result = await aprompt.optimize(
            TwoStageProgram(), trainset, popping, valset=valset, lm=lm, budget=SMALL_BUDGET
        )
    assert len(result.full_evals) > 1
    assert all(evaluation.n_failed == 0 for evaluation in result.full_evals)
    assert not result.failures
    assert all("answer" in example.labels for example in [*trainset, *valset])


async def test_a_metric_returning_an_array_of_scores_is_a_config_error_naming_it(
    fake_server: FakeOpenAIServer,
) -> None:
    np = pytest.importorskip("numpy")

    def per_token(example: Example, prediction: Any) -> object:  # one score per token, not one score
        return True if prediction.answer == example.labels["answer"] else np.array([0.0, 1.0])

    with pytest.raises(aprompt.ConfigError, match=r"metric .*per_token returned ndarray"):
        await optimize_against(fake_server, per_token)
    assert 0 < len(fake_server.chat_requests) <= FIRST_EVALUATION_CALLS


class RaisesConfigErrorOnOneItem(TwoStageProgram):
    """The two-stage program, but a setup fault aprompt reports inside it (an LM's refusal of a
    parameter, a model without a price) on one example: a ConfigError, which no candidate can fix."""

    async def __call__(self, question: str) -> Any:
        if "item-7?" in question:
            raise aprompt.ConfigError("stream=True is not supported: the client reads each reply whole")
        return await super().__call__(question)


async def test_a_config_error_inside_the_program_stops_the_run_instead_of_scoring_the_example_0(
    fake_server: FakeOpenAIServer,
) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.ConfigError, match="stream=True is not supported"):
            await aprompt.optimize(
                RaisesConfigErrorOnOneItem(), examples(0, 60), exact_metric, lm=lm, budget=SMALL_BUDGET
            )
    assert len(fake_server.chat_requests) <= FIRST_EVALUATION_CALLS


class RaisesConfigErrorInItsTaskGroup(TwoStageProgram):
    """The same setup fault raised by a step the program runs in its own task group: it arrives wrapped
    in an ExceptionGroup, and is still a ConfigError to stop on, not a wrong answer to score."""

    async def __call__(self, question: str) -> Any:
        async def step() -> None:
            if "item-7?" in question:
                raise aprompt.ConfigError("stream=True is not supported: the client reads each reply whole")

        async with anyio.create_task_group() as group:
            group.start_soon(step)
        return await super().__call__(question)


async def test_a_config_error_inside_the_programs_own_task_group_stops_the_run(
    fake_server: FakeOpenAIServer,
) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.ConfigError, match="stream=True is not supported"):
            await aprompt.optimize(
                RaisesConfigErrorInItsTaskGroup(), examples(0, 60), exact_metric, lm=lm, budget=SMALL_BUDGET
            )
    assert len(fake_server.chat_requests) <= FIRST_EVALUATION_CALLS
