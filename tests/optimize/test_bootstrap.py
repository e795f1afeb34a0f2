"""Demo candidates by rejection sampling: empty, labeled and bootstrapped sets, seeds, shared runs."""

from __future__ import annotations

import decimal
import math
import random
import time
from collections import Counter
from typing import Any

import anyio
import numpy
import pytest

from aprompt import Example, Predict, Prediction, named_predictors
from aprompt._optimize.bootstrap import (
    BootstrapResult,
    DemoSet,
    bootstrap_demo_sets,
    labeled_only_set,
    labeled_set,
)
from aprompt._optimize.budget import Budget
from aprompt._optimize.strategies.base import StrategyPlan
from aprompt.lm.types import LM
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import QAProgram, answers, exact_match, item_of, last_user_of, lm_for, qa_examples
from tests.optimize.world import TwoStageProgram, World, examples, metric
from tests.set_order import sets_filled_in_two_orders

pytestmark = pytest.mark.anyio


async def bootstrap(
    program: object,
    trainset: list[Example],
    lm: LM,
    *,
    n_sets: int = 5,
    seed: int = 0,
    **options: Any,
) -> BootstrapResult:
    options.setdefault("max_bootstrapped", 3)
    options.setdefault("max_labeled", 0)
    return await bootstrap_demo_sets(
        program,
        named_predictors(program),
        trainset,
        options.pop("metric", exact_match),
        n_sets=n_sets,
        seed=seed,
        lm=lm,
        **options,
    )


async def test_demo_set_0_is_empty(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        result = await bootstrap(QAProgram(), qa_examples(0, 12), lm)
    assert result.demo_sets["answer"][0].demos == ()


async def test_demo_set_1_holds_labeled_demos_with_the_signatures_fields_and_costs_no_call(
    fake_server: FakeOpenAIServer,
) -> None:
    async with lm_for(fake_server) as lm:
        result = await bootstrap(QAProgram(), qa_examples(0, 12), lm, n_sets=2, max_labeled=3)
    labeled = result.demo_sets["answer"][1]
    # The "note" label is not a field of `question -> answer`, so it is left out.
    assert [d.to_dict() for d in labeled.demos] == [
        {"question": f"What is the answer for item-{i}?", "answer": f"ans-{i}"} for i in range(3)
    ]
    assert labeled.bootstrapped == 0
    assert fake_server.chat_requests == []


async def test_a_predictor_whose_outputs_no_example_labels_gets_no_labeled_demos(
    fake_server: FakeOpenAIServer,
) -> None:
    # `question -> code`: no example has a code.
    async with lm_for(fake_server) as lm:
        result = await bootstrap(TwoStageProgram(), examples(0, 12), lm, n_sets=2, max_labeled=3)
    assert result.demo_sets["extract"][1].demos == ()


async def test_a_last_stage_gets_labeled_demos_of_the_fields_the_examples_have(
    fake_server: FakeOpenAIServer,
) -> None:
    # `question, code -> answer`: the examples give the question and the answer, not the code.
    async with lm_for(fake_server) as lm:
        result = await bootstrap(TwoStageProgram(), examples(0, 12), lm, n_sets=2, max_labeled=3)
    demos = [d.to_dict() for d in result.demo_sets["answer"][1].demos]
    assert len(demos) == 3
    assert all(set(d) == {"question", "answer"} for d in demos)
    assert fake_server.chat_requests == []


MISSING_VALUES = [
    None,
    math.nan,
    numpy.float32("nan"),
    decimal.Decimal("NaN"),
    decimal.Decimal("sNaN"),
    complex("nan"),
    numpy.datetime64("NaT"),
    numpy.timedelta64("NaT"),
]


def labeled_ids(answer: object) -> list[str]:
    """The ids of the examples a labeled set takes when example ``q1``'s answer is ``answer``."""
    trainset = qa_examples(0, 6)
    trainset[1] = Example(trainset[1].inputs, {"answer": answer}, id="q1")
    return sorted(labeled_only_set(QAProgram().answer, trainset, 8, 8).source_ids)  # room for all


@pytest.mark.parametrize("missing", MISSING_VALUES, ids=repr)
def test_an_example_whose_answer_is_a_missing_value_is_no_labeled_demo(missing: object) -> None:
    # A data frame's unlabeled row: shown, it would teach the model to answer "null", "NaN" or "NaT".
    assert labeled_ids(missing) == ["q0", "q2", "q3", "q4", "q5"]


def test_an_answer_that_is_pandas_na_or_nat_is_no_labeled_demo() -> None:
    # A row read from a nullable column (``row.answer`` of ``itertuples()``) holds pandas.NA.
    pandas = pytest.importorskip("pandas")
    assert labeled_ids(pandas.NA) == labeled_ids(pandas.NaT) == ["q0", "q2", "q3", "q4", "q5"]


@pytest.mark.parametrize("missing", [None, math.nan], ids=repr)
def test_an_intermediate_label_that_is_a_missing_value_is_left_out_of_the_demo(missing: object) -> None:
    # A data frame's column of codes, empty in some rows: shown, "Code: nan" would tell the last stage
    # that a code may be "nan"; the demo shows the fields the row has, as for an example without a code.
    answer = TwoStageProgram().answer  # question, code -> answer
    with_code = Example({"question": "What is item-1?"}, {"code": "code-1", "answer": "ans-1"}, id="q1")
    without = Example({"question": "What is item-2?"}, {"code": missing, "answer": "ans-2"}, id="q2")
    demos = [d.to_dict() for d in labeled_only_set(answer, [with_code, without], 4, 4).demos]
    assert demos == [
        {"question": "What is item-1?", "code": "code-1", "answer": "ans-1"},
        {"question": "What is item-2?", "answer": "ans-2"},
    ]
    # With no other input, such a row labels nothing for a stage reading the code only.
    only_code = Predict("code -> answer")
    assert labeled_only_set(only_code, [with_code, without], 4, 4).source_ids == ("q1",)


@pytest.mark.parametrize(
    "present", [0, 0.0, False, "0", math.inf, decimal.Decimal("0"), numpy.timedelta64(5, "s")], ids=repr
)
def test_an_answer_that_is_zero_false_or_a_duration_labels_a_demo(present: object) -> None:
    assert labeled_ids(present) == ["q0", "q1", "q2", "q3", "q4", "q5"]


async def test_bootstrapped_demos_come_only_from_runs_that_passed_the_metric(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = answers  # items that are multiples of 3 are answered wrong
    async with lm_for(fake_server) as lm:
        result = await bootstrap(QAProgram(), qa_examples(0, 30), lm, n_sets=6)
    assert 0 < result.passed < result.runs, "some runs passed the metric and some failed"
    for demo_set in result.demo_sets["answer"][2:]:
        assert demo_set.bootstrapped == len(demo_set.demos) == 3
        for demo, source in zip(demo_set.demos, demo_set.source_ids, strict=True):
            item = item_of(str(demo["question"]))
            assert item % 3 != 0
            assert source == f"q{item}"
            assert demo.to_dict() == {
                "question": f"What is the answer for item-{item}?",
                "answer": f"ans-{item}",
            }


async def test_the_threshold_decides_which_runs_pass(fake_server: FakeOpenAIServer) -> None:
    async with lm_for(fake_server) as lm:
        strict = await bootstrap(QAProgram(), qa_examples(0, 8), lm, n_sets=3, metric=lambda e, p: 0.5)
        lenient = await bootstrap(
            QAProgram(), qa_examples(0, 8), lm, n_sets=3, metric=lambda e, p: 0.5, threshold=0.5
        )
    assert strict.passed == 0 and strict.demo_sets["answer"][2].demos == ()
    assert lenient.passed > 0 and len(lenient.demo_sets["answer"][2].demos) == 3


async def test_each_bootstrapped_set_walks_the_trainset_in_its_own_order(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        result = await bootstrap(QAProgram(), qa_examples(0, 40), lm, n_sets=6)
    sources = [s.source_ids for s in result.demo_sets["answer"][2:]]
    assert len(set(sources)) == len(sources), sources


async def test_the_same_seed_gives_identical_sets_and_another_seed_others(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        first = await bootstrap(QAProgram(), qa_examples(0, 40), lm, seed=7)
        again = await bootstrap(QAProgram(), qa_examples(0, 40), lm, seed=7)
        other = await bootstrap(QAProgram(), qa_examples(0, 40), lm, seed=8)
    assert again.demo_sets == first.demo_sets
    assert [s.source_ids for s in again.demo_sets["answer"]] == [
        s.source_ids for s in first.demo_sets["answer"]
    ]
    assert other.demo_sets != first.demo_sets


async def test_runs_are_shared_between_sets(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = answers
    async with lm_for(fake_server) as lm:
        result = await bootstrap(QAProgram(), qa_examples(0, 20), lm, n_sets=8)
    # Six bootstrapped sets, built at once, each walking at least 8 of the 20 examples: every example
    # is run once, by the first set to reach it, and the others wait for its run.
    asked = Counter(last_user_of(r) for r in fake_server.chat_requests)
    assert max(asked.values()) == 1, "no example was run twice"
    assert result.runs == len(fake_server.chat_requests) == len(asked)
    assert sum(len(s.demos) for s in result.demo_sets["answer"][2:]) == 6 * 3


async def test_the_teacher_lm_runs_the_program_when_given(fake_server: FakeOpenAIServer) -> None:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as teacher_server:
        async with lm_for(fake_server) as student, lm_for(teacher_server) as teacher:
            result = await bootstrap(
                TwoStageProgram(), examples(0, 30), student, teacher_lm=teacher, metric=metric, n_sets=4
            )
    assert fake_server.chat_requests == []
    assert len(teacher_server.chat_requests) == 2 * result.runs > 0
    assert result.passed > 0


async def test_the_next_wave_starts_once_the_answers_in_show_the_wave_falls_short(
    fake_server: FakeOpenAIServer,
) -> None:
    arrived: list[int] = []

    async def wrong_and_first_slow(request: ChatRequest) -> str:
        arrived.append(item_of(request.last_user))
        if len(arrived) == 1:
            await anyio.sleep(1.0)
        return "Answer: wrong"

    fake_server.responder = wrong_and_first_slow
    async with lm_for(fake_server) as lm:
        result = await bootstrap(QAProgram(), qa_examples(0, 12), lm, n_sets=3, max_bootstrapped=2)
    slow = min(fake_server.chat_requests, key=lambda r: r.started)
    # One set wanting 2 demos walks waves of 4. Every answer fails: once 3 of the first wave failed, 2
    # passing runs cannot come from it, and the next wave goes without waiting for the slow answer.
    assert sum(r.started < slow.finished for r in fake_server.chat_requests) > 4
    # The same runs as waves that each wait for their slowest: every example, once.
    assert result.runs == 12 and sorted(arrived) == list(range(12))


async def test_a_set_is_built_as_soon_as_its_first_examples_in_order_pass(
    fake_server: FakeOpenAIServer,
) -> None:
    async def right_and_one_late(request: ChatRequest) -> str:
        item = item_of(request.last_user)
        if item == late:
            await anyio.sleep(1.0)
        return f"Answer: ans-{item}"

    trainset = qa_examples(0, 12)
    order = list(trainset)
    random.Random("0:demo-set:2").shuffle(order)
    late = item_of(str(order[3].inputs["question"]))  # the last of the first wave: not needed
    fake_server.responder = right_and_one_late
    built: list[float] = []
    async with lm_for(fake_server) as lm:
        result = await bootstrap(
            QAProgram(),
            trainset,
            lm,
            n_sets=3,
            max_bootstrapped=2,
            on_set=lambda k, s: built.append(time.monotonic()),
        )
    slow = next(r for r in fake_server.chat_requests if item_of(last_user_of(r)) == late)
    assert built and built[0] < slow.finished
    assert [d["answer"] for d in result.demo_sets["answer"][2].demos] == [
        f"ans-{item_of(str(e.inputs['question']))}" for e in order[:2]
    ]


class AsksTwiceAtOnce(QAProgram):
    """Calls its one predictor twice at once, and answers with the first call's prediction."""

    async def __call__(self, question: str) -> Prediction:
        predictions: dict[str, Prediction] = {}

        async def ask(key: str, text: str) -> None:
            predictions[key] = await self.answer(question=text)

        async with anyio.create_task_group() as group:
            group.start_soon(ask, "first", question)
            group.start_soon(ask, "again", f"{question} Once more.")
        return predictions["first"]


async def test_a_predictor_called_twice_at_once_shows_its_first_call_whichever_answers_first(
    fake_server: FakeOpenAIServer,
) -> None:
    async def first_call_answers_last(request: ChatRequest) -> str:
        item = item_of(request.last_user)
        if "Once more." in request.last_user:
            return f"Answer: ans-{item} again"
        await anyio.sleep(0.2)
        return f"Answer: ans-{item}"

    fake_server.responder = first_call_answers_last
    async with lm_for(fake_server) as lm:
        result = await bootstrap(AsksTwiceAtOnce(), qa_examples(0, 8), lm, n_sets=3, max_bootstrapped=2)
    demos = result.demo_sets["answer"][2].demos
    assert len(demos) == 2
    assert all("Once more." not in d["question"] and "again" not in d["answer"] for d in demos)


async def test_on_set_is_told_the_very_sets_the_result_holds(fake_server: FakeOpenAIServer) -> None:
    # Each set is built once: its labeled demos walk the trainset, a cost per set, not per read.
    fake_server.responder = answers
    told: dict[int, Any] = {}
    async with lm_for(fake_server) as lm:
        result = await bootstrap(
            QAProgram(),
            qa_examples(0, 12),
            lm,
            n_sets=4,
            max_bootstrapped=2,
            max_labeled=2,
            on_set=lambda k, sets: told.update({k: sets["answer"]}),
        )
    assert sorted(told) == [2, 3]
    for index, demo_set in told.items():
        assert result.demo_sets["answer"][index] is demo_set


async def test_a_labeled_set_the_caller_built_is_set_1_as_it_is(fake_server: FakeOpenAIServer) -> None:
    program, trainset = QAProgram(), qa_examples(0, 12)
    given = labeled_only_set(program.answer, trainset, 3, 3)
    async with lm_for(fake_server) as lm:
        result = await bootstrap(
            program, trainset, lm, n_sets=2, max_bootstrapped=0, max_labeled=3, labeled_sets={"answer": given}
        )
    assert result.demo_sets["answer"][1] is given


async def test_a_trainset_holding_an_example_twice_gives_no_set_a_demo_twice(
    fake_server: FakeOpenAIServer,
) -> None:
    # Two intents, each example twice under two ids: both copies' runs pass and trace the same call,
    # and a set of four may show an intent twice.
    fake_server.responder = lambda request: f"Answer: intent-{item_of(request.last_user) % 2}"
    originals = [
        Example({"question": f"What is item-{i}?"}, {"answer": f"intent-{i % 2}"}, id=f"q{i}")
        for i in range(6)
    ]
    copies = [Example(e.inputs, e.labels, id=f"copy-{e.id}") for e in originals]
    async with lm_for(fake_server) as lm:
        result = await bootstrap(
            QAProgram(), [*originals, *copies], lm, n_sets=8, max_bootstrapped=4, max_labeled=4
        )
    for demo_set in result.demo_sets["answer"][1:]:
        shown = [str(d["question"]) for d in demo_set.demos]
        assert len(shown) == len(set(shown)), demo_set


def _intent(item: int) -> str:
    return "rare" if item % 4 == 0 else "common"


async def test_a_bootstrapped_set_covers_a_small_label_space_though_examples_carry_other_labels(
    fake_server: FakeOpenAIServer,
) -> None:
    # A label no predictor outputs (a note, a source, a row's id) makes every example's labels distinct;
    # the outputs the demos show are still two intents, one in four examples the rare one.
    fake_server.responder = lambda request: f"Answer: {_intent(item_of(request.last_user))}"
    trainset = [
        Example({"question": f"What is item-{i}?"}, {"answer": _intent(i), "note": f"note-{i}"}, id=f"q{i}")
        for i in range(24)
    ]
    async with lm_for(fake_server) as lm:
        result = await bootstrap(QAProgram(), trainset, lm, n_sets=6, max_bootstrapped=4)
    for demo_set in result.demo_sets["answer"][2:]:
        assert Counter(str(d["answer"]) for d in demo_set.demos) == {"rare": 2, "common": 2}, demo_set


def test_an_example_twice_with_a_set_built_in_another_order_is_one_labeled_demo() -> None:
    # A set iterates in an order that follows the hash seed and the order it was filled in: two equal
    # sets may print differently, and the copy would then be shown again in some processes only.
    _, forward, backward = sets_filled_in_two_orders()
    predictor = Predict("question, tags -> answer")
    trainset = [
        Example({"question": "Is it red?", "tags": forward}, {"answer": "yes"}, id="one"),
        Example({"question": "Is it red?", "tags": backward}, {"answer": "yes"}, id="copy"),
        Example({"question": "Is it blue?", "tags": {"sky"}}, {"answer": "no"}, id="other"),
    ]
    assert labeled_only_set(predictor, trainset, 4, 4).source_ids == ("one", "other")


@pytest.mark.parametrize("max_bootstrapped", [1, 2, 3])
async def test_a_bootstrap_whose_runs_pass_runs_no_more_than_the_plan_says(
    fake_server: FakeOpenAIServer, max_bootstrapped: int
) -> None:
    fake_server.responder = lambda request: f"Answer: ans-{item_of(request.last_user)}"
    budget = Budget(n_candidates=4, max_bootstrapped_demos=max_bootstrapped, max_labeled_demos=0)
    trainset = qa_examples(0, 40)
    plan = StrategyPlan.standard(budget, 1, len(trainset), 10)
    async with lm_for(fake_server) as lm:
        result = await bootstrap(QAProgram(), trainset, lm, n_sets=4, max_bootstrapped=max_bootstrapped)
    assert result.runs <= plan.bootstrap_runs


class _CountedText:
    """A label value that counts how often its text is read."""

    reads = 0

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        _CountedText.reads += 1
        return self.text


def test_a_set_with_no_room_for_labeled_demos_reads_no_training_example() -> None:
    # Sets at or under the bootstrapped bound (most of a size ladder) take no labeled demos; walking a
    # large trainset's texts for none cost seconds per set.
    trainset = [
        Example({"question": f"What is item-{i}?"}, {"answer": _CountedText(f"ans-{i}")}, id=f"q{i}")
        for i in range(50)
    ]
    _CountedText.reads = 0
    assert labeled_set(QAProgram().answer, trainset, 0) == DemoSet(())
    assert _CountedText.reads == 0
