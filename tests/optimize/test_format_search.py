"""Searching the reply format: a ``<predictor>.format`` parameter (``Label: value`` lines or the bare value)
for predictors with one output field, when ``Budget.search_formats`` is on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import aprompt
from aprompt import ChainOfThought, OpenAICompatibleLM, Predict
from aprompt._optimize.budget import Budget, resolve_budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.evaluate import Metric
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard
from aprompt._optimize.search import SearchLoop
from aprompt.program.discovery import named_predictors
from aprompt.program.overrides import PromptOverride
from aprompt.run.report import RunView, describe_run
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, RecordedRequest
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import SMALL_BUDGET, QAProgram, exact_match, item_of, lm_for, qa_examples
from tests.optimize.world import TwoStageProgram, World, examples, metric

BARE_REQUEST = "only: no label, no other text."


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def asks_bare(request: ChatRequest | RecordedRequest) -> bool:
    messages = request.messages if isinstance(request, ChatRequest) else (request.body or {})["messages"]
    return str(messages[0]["content"]).endswith(BARE_REQUEST)


def sent(server: FakeOpenAIServer) -> list[str]:
    """The messages of every request, in a fixed order (an evaluation sends them concurrently)."""
    return sorted(json.dumps((r.body or {})["messages"]) for r in server.chat_requests)


def answers_only_when_bare(request: ChatRequest) -> str:
    """A model that gets every item right when asked for the bare value, and none in ``Label:`` lines."""
    item = item_of(request.last_user)
    return f"ans-{item}" if asks_bare(request) else "Answer: wrong"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(responder=answers_only_when_bare, api_key=TEST_API_KEY) as served:
        yield served


@pytest.fixture
async def lm(server: FakeOpenAIServer) -> AsyncIterator[OpenAICompatibleLM]:
    async with OpenAICompatibleLM("fake-model", server.base_url, api_key=TEST_API_KEY) as client:
        yield client


class TwoPredictors:
    def __init__(self) -> None:
        self.answer = Predict("question -> answer")
        self.explain = ChainOfThought("question -> answer")


def searched(program: object, on: bool) -> Candidates:
    predictors = named_predictors(program)
    return Candidates.original(predictors).with_formats(predictors, on)


def search_loop(program: object, candidates: Candidates, lm: OpenAICompatibleLM, n_trials: int) -> SearchLoop:
    async def emit(event: object) -> None:
        pass

    metric: Metric = exact_match
    return SearchLoop(
        program,
        candidates,
        qa_examples(0, 12),
        metric,
        emit,
        n_trials,
        minibatch_size=6,
        full_eval_every=2,
        parallel_trials=1,
        seed=3,
        lm=lm,
        outage=OutageGuard.for_program(named_predictors(program), lm, DEFAULT_OUTAGE_POLICY),
    )


# -- the space -------------------------------------------------------------------------------------
def test_the_space_has_a_format_parameter_for_single_output_predictors_when_on() -> None:
    assert searched(TwoPredictors(), True).parameters() == {"answer.format": aprompt.tpe.Categorical(2)}


def test_the_space_has_no_format_parameter_when_off() -> None:
    assert searched(TwoPredictors(), False).parameters() == {}


def test_format_index_0_is_the_predictors_own_format() -> None:
    program = TwoPredictors()
    program.answer.reply_format = "bare"
    candidates = searched(program, True)
    assert candidates.formats["answer"] == ("bare", "fields")
    assert candidates.prompts_for(candidates.baseline())["answer"].reply_format == "bare"
    assert candidates.prompts_for({"answer.format": 1})["answer"].reply_format == "fields"


def test_the_searched_formats_are_described_for_the_result() -> None:
    described = searched(TwoPredictors(), True).describe()
    assert described["answer"]["reply_formats"] == ["fields", "bare"]
    assert "reply_formats" not in described["explain"]
    assert "reply_formats" not in searched(TwoPredictors(), False).describe()["answer"]


def test_the_budget_switch_is_off_by_default_and_must_be_a_bool() -> None:
    assert resolve_budget("light").search_formats is False
    assert resolve_budget({"search_formats": True}).search_formats is True
    with pytest.raises(aprompt.ConfigError, match="search_formats"):
        Budget(search_formats="yes")  # type: ignore[arg-type]


# -- trials on the fake server ---------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_trial_with_the_bare_format_sends_bare_prompts_and_scores_them(
    server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    program = QAProgram()
    outcome = await search_loop(program, searched(program, True), lm, n_trials=4).run()
    by_format = {t.choice["answer.format"]: t.score for t in outcome.trials}
    assert by_format == {0: 0.0, 1: 1.0}
    assert outcome.best_choice == {"answer.format": 1}
    assert any(asks_bare(r) for r in server.chat_requests)


@pytest.mark.anyio
async def test_the_baseline_sends_exactly_the_unoptimized_programs_prompts(
    server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    program = QAProgram()
    program.answer.demos = [{"question": "What is the answer for item-99?", "answer": "ans-99"}]
    for example in qa_examples(0, 12):
        await program.answer(question=example.inputs["question"], lm=lm)
    unoptimized = sent(server)
    server.reset_records()
    loop = search_loop(program, searched(program, True), lm, n_trials=1)
    baseline = await loop.full_evaluation(loop.candidates.baseline(), is_baseline=True)
    assert baseline.choice == {"answer.format": 0}
    assert sent(server) == unoptimized


@pytest.mark.anyio
async def test_using_the_chosen_prompt_makes_the_format_the_predictors_own(
    server: FakeOpenAIServer, lm: OpenAICompatibleLM
) -> None:
    program = QAProgram()
    prompt = searched(program, True).prompts_for({"answer.format": 1})["answer"]
    program.answer.use_prompt(prompt)
    assert program.answer.reply_format == "bare"
    assert (await program.answer(question="What is the answer for item-4?", lm=lm)).answer == "ans-4"
    program.answer.use_prompt(PromptOverride("Answer the question."))
    assert program.answer.reply_format == "bare"  # an override without a format keeps the current one


# -- the report ------------------------------------------------------------------------------------
def test_the_report_names_the_chosen_reply_format() -> None:
    view = RunView(
        run_dir=Path("run"),
        config={},
        predictors=("answer", "explain"),
        trials=(),
        full_evals=(),
        instructions={"answer": {0: "Answer."}, "explain": {0: "Explain."}},
        demo_sets={},
        dropped=(),
        best_choice={"answer.format": 1},
        best_score=1.0,
        finished=True,
        reply_formats={"answer": ("fields", "bare"), "explain": ("fields", "bare")},
    )
    lines = describe_run(view).splitlines()
    assert "  answer: instruction #0, 0 demos, bare reply" in lines
    assert "  explain: instruction #0, 0 demos" in lines  # its own default format, not searched


# -- the run's identity ----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_resuming_with_the_switch_flipped_is_refused(tmp_path: Path) -> None:
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as world,
        lm_for(world) as lm,
    ):

        async def run(search_formats: bool) -> aprompt.OptimizeResult:
            return await aprompt.optimize(
                TwoStageProgram(),
                examples(0, 40),
                metric,
                valset=examples(200, 230),
                lm=lm,
                budget={**SMALL_BUDGET, "search_formats": search_formats},
                seed=1,
                run_dir=tmp_path / "run",
            )

        await run(False)
        world.reset_records()
        with pytest.raises(aprompt.ConfigError, match=r"differs in: budget \("):
            await run(True)
        assert world.chat_requests == []


# -- a whole run ------------------------------------------------------------------------------------
def answers_only_when_bare_or_proposes(request: ChatRequest) -> str:
    """:func:`answers_only_when_bare` for program calls; a fixed text for proposals and summaries."""
    if "Output fields:\n- Answer" not in str(request.messages[0]["content"]):
        return "Answer the question with its item's answer."
    return answers_only_when_bare(request)


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["mipro", "bayesian_bootstrap", "mipro_plus_plus", "module_opro"])
async def test_an_optimization_with_the_switch_on_returns_the_better_format(
    server: FakeOpenAIServer, lm: OpenAICompatibleLM, strategy: str
) -> None:
    server.responder = answers_only_when_bare_or_proposes
    result = await aprompt.optimize(
        QAProgram(),
        qa_examples(0, 20),
        exact_match,
        valset=qa_examples(100, 120),
        lm=lm,
        strategy=strategy,
        budget={**SMALL_BUDGET, "search_formats": True},
        seed=1,
    )
    assert (result.baseline_score, result.score) == (0.0, 1.0)
    assert result.best_choice["answer.format"] == 1
    assert result.program.answer.reply_format == "bare"
    assert result.to_dict()["state"]["predictors"]["answer"]["reply_format"] == "bare"
