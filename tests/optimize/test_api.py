"""``aprompt.optimize``: typed refusals before any LM call, a program that always fails, and in_place
(two in-place runs at once over one predictor refused)."""

from __future__ import annotations

import functools
import time
from typing import Any

import anyio
import numpy
import pytest

import aprompt
from aprompt import Example, Predict, Prediction
from aprompt._errors import OptimizationError
from aprompt._optimize.examples import as_examples
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, Fault
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import SMALL_BUDGET, lm_for, optimize_in_world
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio


class NoPredictors:
    async def __call__(self, question: str) -> str:
        return "ans"


class PredictorsOnTheClass:
    extract = Predict("question -> code")

    async def __call__(self, question: str) -> Any:
        return await self.extract(question=question)


class AlwaysRaises(TwoStageProgram):
    async def __call__(self, question: str) -> Any:
        raise KeyError("code")


REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "no_predictors": ({"program": NoPredictors()}, "holds no predictors"),
    "a_partial": (
        {"program": functools.partial(TwoStageProgram().__call__)},
        r"functools.partial of TwoStageProgram.__call__, whose function and arguments are not searched",
    ),
    "predictors_on_the_class": (
        {"program": PredictorsOnTheClass()},
        r"\['extract'\] are set on its class, where they are not looked for",
    ),
    "empty_trainset": ({"trainset": []}, "trainset is empty"),
    "missing_inputs": (
        {"trainset": [*examples(0, 5), Example(inputs={"query": "item-9"}, id="odd-one")]},
        "example odd-one does not fit the program's inputs",
    ),
    "unknown_strategy": ({"strategy": "mipro_v9"}, "unknown strategy 'mipro_v9'"),
    "bad_budget_value": ({"budget": {"n_candidates": 0}}, "n_candidates"),
    "bad_budget_type": ({"budget": {"minibatch_size": "35"}}, "whole numbers: minibatch_size"),
    "unknown_budget": ({"budget": "huge"}, "unknown budget 'huge'"),
    "no_lm_anywhere": ({"lm": None}, "no LM"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_bad_input_is_a_config_error_before_any_lm_call(
    fake_server: FakeOpenAIServer, case: str
) -> None:
    overrides, match = REFUSALS[case]
    async with lm_for(fake_server) as lm:
        # The proposer is given even where the program's LM is missing: it must not be called either.
        options: dict[str, Any] = {"lm": lm, "proposer_lm": lm, "budget": SMALL_BUDGET, **overrides}
        program = options.pop("program", TwoStageProgram())
        trainset = options.pop("trainset", examples(0, 20))
        with pytest.raises(aprompt.ConfigError, match=match):
            await aprompt.optimize(program, trainset, metric, **options)
    assert fake_server.chat_requests == []


@pytest.mark.parametrize("strategy", ["mipro", "bootstrap_random_search", "module_opro"])
async def test_a_program_failing_on_every_example_is_an_optimization_error(strategy: str) -> None:
    with pytest.raises(OptimizationError, match="failed on every one of the 30 validation examples") as info:
        await optimize_in_world(strategy, program=AlwaysRaises())
    assert "KeyError: 'code'" in str(info.value)
    assert len(info.value.errors) == 3
    assert isinstance(info.value, aprompt.APromptError)


class Counter:
    """One predictor: question -> count."""

    def __init__(self, max_tokens: int | None = None) -> None:
        budget = {} if max_tokens is None else {"max_tokens": max_tokens}
        self.count = Predict("question -> count: int", max_parse_retries=0, **budget)

    async def __call__(self, question: str) -> Prediction:
        return await self.count(question=question)


async def optimize_counter(
    server: FakeOpenAIServer, before_demos: str | Fault, max_tokens: int | None = None
) -> aprompt.OptimizeResult:
    """Optimize :class:`Counter` on a server that answers right ("Count: 3") once a prompt shows a demo,
    and ``before_demos`` until then."""

    def reply(request: ChatRequest) -> str | Fault:
        shown_a_demo = any(m["role"] == "assistant" for m in request.messages)
        return "Count: 3" if shown_a_demo else before_demos

    server.responder = reply
    trainset = [Example(inputs={"question": f"How many? ({i})"}, labels={"count": 3}) for i in range(40)]
    async with lm_for(server) as lm:
        return await aprompt.optimize(
            Counter(max_tokens), trainset, lambda e, p: p.count == 3, lm=lm, budget=SMALL_BUDGET, seed=1
        )


async def test_a_baseline_that_only_fails_to_parse_is_still_optimized(fake_server: FakeOpenAIServer) -> None:
    """An unreadable reply is the prompt's fault: demos may teach the format, so the run goes on."""
    result = await optimize_counter(fake_server, "Count: lots")
    assert result.baseline_score == 0.0
    assert result.score == 1.0, "a labeled demo set fixed the format"


async def test_a_baseline_whose_replies_run_past_their_budget_is_still_optimized(
    fake_server: FakeOpenAIServer,
) -> None:
    """A reply cut at its token budget (even at twice it) is the prompt's failure, scored 0 like an
    unreadable one: demos may teach a short answer, so the run goes on (it stopped, as if the program were
    broken, on the embedded model's rambling)."""
    result = await optimize_counter(
        fake_server, Fault.truncated("Well, let me think about how many there"), max_tokens=8
    )
    assert result.baseline_score == 0.0
    assert result.score == 1.0, "a labeled demo set taught the short answer"


async def test_a_baseline_whose_prompt_overflows_the_context_is_an_optimization_error(
    fake_server: FakeOpenAIServer,
) -> None:
    """A question too long for the model as the program stands would score 0 for every candidate, for the
    data's length: the run says so and what to do, instead of ranking candidates on the rest."""
    fake_server.context_tokens = 200
    trainset = [
        Example(
            inputs={"question": f"How many? ({i})" + (" apples" * 200 if i % 5 == 0 else "")},
            labels={"count": 3},
        )
        for i in range(40)
    ]
    async with lm_for(fake_server) as lm:
        with pytest.raises(
            OptimizationError, match=r"context window on \d+ of the \d+ validation examples"
        ) as info:
            await aprompt.optimize(
                Counter(), trainset, lambda e, p: p.count == 3, lm=lm, budget=SMALL_BUDGET, seed=1
            )
    assert "ctx_per_slot" in str(info.value)
    assert all(error.startswith("ContextOverflowError: HTTP 400") for error in info.value.errors.values())


async def test_the_input_program_is_left_unchanged_by_default() -> None:
    program = TwoStageProgram()
    result, _ = await optimize_in_world(program=program)
    assert dict(result.best_choice) != result.candidates.baseline(), "the run found a better prompt"
    assert result.program is not program
    assert (program.extract.instruction, program.answer.instruction) == ("Find the code.", "Give the answer.")
    assert program.extract.demos == [] and program.answer.demos == []
    best = result.candidates.prompts_for(result.best_choice)
    assert result.program.answer.instruction == best["answer"].instruction
    assert tuple(result.program.answer.demos) == best["answer"].demos


async def test_in_place_writes_the_best_prompts_into_the_program() -> None:
    program = TwoStageProgram()
    result, _ = await optimize_in_world(program=program, in_place=True)
    assert result.program is program
    best = result.candidates.prompts_for(result.best_choice)
    assert dict(result.best_choice) != result.candidates.baseline()
    for name, predictor in aprompt.named_predictors(program):
        assert predictor.instruction == best[name].instruction
        assert tuple(predictor.demos) == best[name].demos


@pytest.mark.parametrize("other_in_place", [True, False])
async def test_two_runs_at_once_over_one_predictor_one_in_place_are_refused(other_in_place: bool) -> None:
    # The in-place run wrote its prompts into the shared predictor when it ended: over the other in-place
    # run's result, or under the other run's bootstrap and evaluations, which read its own prompts.
    shared = TwoStageProgram().extract
    programs = [TwoStageProgram(), TwoStageProgram()]
    for program in programs:
        program.extract = shared
    outcomes: list[Any] = []

    async def optimize_one(program: TwoStageProgram, seed: int, in_place: bool) -> None:
        try:
            outcomes.append((await optimize_in_world(program=program, in_place=in_place, seed=seed))[0])
        except aprompt.ConfigError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(optimize_one, programs[0], 1, True)
        group.start_soon(optimize_one, programs[1], 2, other_in_place)
    [refused] = [o for o in outcomes if isinstance(o, aprompt.ConfigError)]
    assert "predictor(s) ['extract'] of the program are also optimized by another optimize()" in str(refused)
    assert len(outcomes) == 2


async def test_two_runs_at_once_over_one_predictor_neither_in_place_both_run() -> None:
    shared = TwoStageProgram().extract
    programs = [TwoStageProgram(), TwoStageProgram()]
    for program in programs:
        program.extract = shared
    results: list[Any] = []

    async def optimize_one(program: TwoStageProgram, seed: int) -> None:
        results.append((await optimize_in_world(program=program, seed=seed))[0])

    async with anyio.create_task_group() as group:
        for seed, program in enumerate(programs, start=1):
            group.start_soon(optimize_one, program, seed)
    assert len(results) == 2 and shared.instruction == "Find the code."


def numbered(start: int, stop: int, as_text: bool) -> list[Example]:
    """World examples whose ids are their row numbers (a dataset's index), as numbers or as text."""
    return [
        Example(inputs=e.inputs, labels=e.labels, id=str(i) if as_text else i)  # type: ignore[arg-type]
        for i, e in enumerate(examples(start, stop), start=start)
    ]


async def test_whole_number_example_ids_work_as_their_text() -> None:
    results = []
    for as_text in (True, False):
        async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
            results.append(
                await aprompt.optimize(
                    TwoStageProgram(),
                    numbered(0, 40, as_text),
                    metric,
                    valset=numbered(200, 230, as_text),
                    lm=lm,
                    budget=SMALL_BUDGET,
                    seed=1,
                )
            )
    text, number = results
    assert (number.score, dict(number.best_choice)) == (text.score, dict(text.best_choice))
    assert [row.example_id for row in number.examples.rows] == [str(i) for i in range(200, 230)]


def test_a_numpy_row_index_is_a_whole_number_id() -> None:
    # A row index read from an array or a data frame is a numpy integer, not an int.
    rows = numpy.arange(3)
    made = [Example(inputs={"question": f"q{i}"}, id=i) for i in rows]  # type: ignore[arg-type]
    assert [e.id for e in made] == ["0", "1", "2"]


def test_many_examples_sharing_one_id_are_renamed_in_linear_time() -> None:
    # A data set whose rows carry one source name as their id, or repeat one row without an id: each
    # copy's suffix was searched from #1, which took about a minute for 20,000 examples.
    shared = [Example(inputs={"question": f"q{i}"}, id="src") for i in range(20_000)]
    started = time.perf_counter()
    ids = [e.id for e in as_examples(shared)]
    assert time.perf_counter() - started < 5.0
    assert ids == ["src", *(f"src#{n}" for n in range(1, 20_000))]


async def test_every_validation_example_is_scored_when_a_renamed_duplicate_id_is_taken() -> None:
    # Two examples share the id "v" and a third already holds "v#1", the name the second would get.
    ids = ["v", "v", "v#1", *(f"item{i}" for i in range(203, 230))]
    valset = [
        Example(inputs=e.inputs, labels=e.labels, id=i) for i, e in zip(ids, examples(200, 230), strict=True)
    ]
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        result = await aprompt.optimize(
            TwoStageProgram(), examples(0, 40), metric, valset=valset, lm=lm, budget=SMALL_BUDGET, seed=1
        )
    assert len({row.example_id for row in result.examples.rows}) == 30
    assert all(len(full.scores) + full.n_unscored == 30 for full in result.full_evals)
