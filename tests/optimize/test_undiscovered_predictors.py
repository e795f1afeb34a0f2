"""A predictor the program calls that aprompt did not find among its predictors runs with its own
prompts and is never optimized: the run says so (once per predictor), and a metric's own judge is not
taken for one. A predictor aprompt found that the program never calls is named too."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import aprompt
from aprompt import Example, Predict
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import SMALL_BUDGET, lm_for
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

#: Out of the program's reach: a module global its method reads is not followed (a function's is).
REWRITE = Predict("question -> rewritten")
#: An LM-judged metric's judge: not the program's.
JUDGE = Predict("answer -> verdict")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class CallsAHiddenPredictor(TwoStageProgram):
    async def __call__(self, question: str) -> Any:
        await REWRITE(question=question)
        return await super().__call__(question)


class MakesAPredictorInEachCall(TwoStageProgram):
    async def __call__(self, question: str) -> Any:
        await Predict("question -> rewritten")(question=question)
        return await super().__call__(question)


class TwoEntryPoints(TwoStageProgram):
    """An assistant whose ``solve`` (the program optimized) never calls ``translate``."""

    def __init__(self) -> None:
        super().__init__()
        self.translate = Predict("text -> translation", instruction="Translate.")

    async def solve(self, question: str) -> Any:
        return await self(question)


async def judged(example: Example, prediction: Any) -> bool:
    await JUDGE(answer=str(prediction.answer))
    return metric(example, prediction)


async def run(program: Any, score: Any) -> aprompt.OptimizeResult[Any]:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        with aprompt.use_lm(lm):
            return await aprompt.optimize(
                program, examples(0, 40), score, valset=examples(200, 220), lm=lm, budget=SMALL_BUDGET, seed=1
            )


def reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not among the predictors" in r.getMessage()]


async def test_a_predictor_out_of_the_programs_reach_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="aprompt"):
        result = await run(CallsAHiddenPredictor(), metric)
    assert reports(caplog) == [
        "aprompt: the program called Predict('question -> rewritten'), which is not among the predictors "
        "aprompt found in it: it runs with its own prompts and is not optimized. Make it reachable from the "
        "program (an attribute of it or of an object, list or dict it holds; for a function, a module global "
        "or closure variable it reads) to optimize it"
    ]
    assert {key.split(".")[0] for key in result.best_choice} <= {"extract", "answer"}


async def test_a_metrics_own_judge_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aprompt"):
        await run(TwoStageProgram(), judged)
    assert reports(caplog) == []


async def test_a_predictor_made_in_each_call_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    # A new object in every run: it was reported once per run, over a hundred identical warnings.
    with caplog.at_level(logging.WARNING, logger="aprompt"):
        await run(MakesAPredictorInEachCall(), metric)
    assert len(reports(caplog)) == 1
    assert "Predict('question -> rewritten')" in reports(caplog)[0]


def uncalled_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "were not called" in r.getMessage()]


async def test_a_predictor_the_program_never_calls_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aprompt"):
        await run(TwoEntryPoints().solve, metric)
    [report] = uncalled_reports(caplog)
    assert report.startswith("aprompt: predictor(s) ['translate'] of the program were not called in any of")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aprompt"):
        await run(TwoStageProgram(), metric)
    assert uncalled_reports(caplog) == []
