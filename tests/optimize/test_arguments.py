"""Every argument of ``aprompt.optimize`` is checked before any LM call: a wrong type or range, a metric
that gives no valid score for a prediction made of an example's own labels, and predictors whose names
collide are each a ``ConfigError`` naming the argument and the value, and the server sees no chat request.
"""

from __future__ import annotations

import datetime
import enum
import logging
import math
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt import Example, Predict
from aprompt._optimize.arguments import check_metric_on_labels
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import lm_for
from tests.optimize.world import TwoStageProgram, World, examples, metric

pytestmark = pytest.mark.anyio

TINY_BUDGET = {"n_candidates": 3, "val_size": 10, "n_trials": 2, "minibatch_size": 5}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def refused(
    server: FakeOpenAIServer,
    tmp_path: Path,
    match: str,
    *,
    program: object | None = None,
    trainset: Any = None,
    metric_: Any = metric,
    **options: Any,
) -> str:
    """Run an optimization that must fail with a ConfigError before the server sees a chat request;
    returns the message."""
    options.setdefault("budget", TINY_BUDGET)
    options.setdefault("run_dir", tmp_path / "run")
    async with lm_for(server) as lm:
        options.setdefault("lm", lm)
        with pytest.raises(aprompt.ConfigError, match=match) as info:
            await aprompt.optimize(
                program if program is not None else TwoStageProgram(),
                examples(0, 20) if trainset is None else trainset,
                metric_,
                **options,
            )
    assert server.chat_requests == []
    assert not (tmp_path / "run").exists()
    return str(info.value)


class SyncChat:
    model = "sync-model"

    def chat(self, messages: Any, **params: Any) -> Any:
        return None


# Unknown strategies were refused already (tests/run/test_bad_input.py), and bad limits are refused by
# aprompt.Limits itself (tests/optimize/test_limits_value.py); these were not, or only after LM calls
# were spent.
BAD_ARGUMENTS: list[tuple[str, object]] = [
    ("seed", "abc"),
    ("seed", -1),
    ("seed", 1.5),
    ("seed", None),
    ("seed", True),
    ("concurrency", 2.5),
    ("concurrency", 0),
    ("concurrency", -3),
    ("concurrency", "8"),
    ("bootstrap_threshold", 2),
    ("bootstrap_threshold", math.nan),
    ("bootstrap_threshold", -1),
    ("bootstrap_threshold", "1"),
    ("grounding", "yes"),
    ("budget", 5),
    ("in_place", "yes"),
    ("resume", 1),
    ("run_dir", 5),
    ("on_event", "print"),
    ("input_fields", "question"),
    ("input_fields", [1, 2]),
    ("lm", object()),
    ("proposer_lm", "gpt-4o"),
    ("teacher_lm", SyncChat()),
]


@pytest.mark.parametrize(("argument", "value"), BAD_ARGUMENTS, ids=[f"{a}={v!r}" for a, v in BAD_ARGUMENTS])
async def test_a_bad_argument_is_refused_naming_it_and_its_value(
    fake_server: FakeOpenAIServer, tmp_path: Path, argument: str, value: object
) -> None:
    if argument == "run_dir":
        message = await refused(fake_server, tmp_path, argument, run_dir=value)
    else:
        message = await refused(fake_server, tmp_path, argument, **{argument: value})
    assert repr(value)[:20] in message


@pytest.mark.parametrize(("argument", "value"), [("trainset", 5), ("valset", 5)])
async def test_a_dataset_that_is_not_a_list_is_refused(
    fake_server: FakeOpenAIServer, tmp_path: Path, argument: str, value: object
) -> None:
    if argument == "trainset":
        await refused(fake_server, tmp_path, "trainset", trainset=value)
    else:
        await refused(fake_server, tmp_path, "valset", valset=value)


@pytest.mark.parametrize("argument", ["trainset", "valset"])
async def test_a_data_frame_is_refused_saying_how_to_pass_its_rows(
    fake_server: FakeOpenAIServer, tmp_path: Path, argument: str
) -> None:
    # Iterated, a data frame gives its column names: the run refused "trainset[0] is str".
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame([{**e.inputs, **e.labels} for e in examples(0, 20)])
    message = await refused(fake_server, tmp_path, "data frame", **{argument: frame})
    assert message.startswith(f"{argument} is a data frame (DataFrame)") and "to_dict('records')" in message


async def test_a_run_dir_that_is_a_file_is_refused(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a directory")
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.ConfigError, match=r"run_dir .* is not a directory"):
            await aprompt.optimize(
                TwoStageProgram(), examples(0, 20), metric, lm=lm, run_dir=tmp_path / "run"
            )
    assert fake_server.chat_requests == []


def returns_none(example: Example, prediction: Any) -> Any:
    return None


def returns_nan(example: Example, prediction: Any) -> float:
    return math.nan


def returns_a_string(example: Example, prediction: Any) -> str:
    return "yes"


def returns_2_5(example: Example, prediction: Any) -> float:
    return 2.5


def raises(example: Example, prediction: Any) -> bool:
    raise RuntimeError("metric bug")


async def returns_none_async(example: Example, prediction: Any) -> Any:
    return None


BAD_METRICS = [returns_none, returns_nan, returns_a_string, returns_2_5, raises, returns_none_async]


@pytest.mark.parametrize("bad_metric", BAD_METRICS, ids=[m.__name__ for m in BAD_METRICS])
async def test_a_metric_without_a_valid_score_for_the_labels_is_refused(
    fake_server: FakeOpenAIServer, tmp_path: Path, bad_metric: Any
) -> None:
    message = await refused(fake_server, tmp_path, "metric", metric_=bad_metric)
    assert bad_metric.__name__ in message


def reads_reasoning(example: Example, prediction: Any) -> bool:
    return bool(prediction.reasoning) and prediction.answer == example.labels["answer"]


async def test_a_metric_reading_a_field_the_labels_lack_is_not_refused_up_front(
    fake_server: FakeOpenAIServer,
) -> None:
    # The labels have no "reasoning", so the label-made prediction cannot be scored; real ones may be.
    await check_metric_on_labels(reads_reasoning, examples(0, 2))


def test_predictors_whose_names_collide_are_refused_naming_both() -> None:
    class Experts:
        def __init__(self) -> None:
            self.experts = {0: Predict("question -> answer"), "0": Predict("question -> answer")}

    with pytest.raises(aprompt.ConfigError, match=r"program\.experts\[0\] and program\.experts\['0'\]"):
        aprompt.named_predictors(Experts())


async def test_an_optimization_of_colliding_predictors_is_refused(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    class Experts:
        def __init__(self) -> None:
            self.s = {0: Predict("question -> answer"), "0": Predict("question -> answer")}

        async def __call__(self, question: str) -> Any:
            return await self.s[0](question=question)

    await refused(fake_server, tmp_path, r"s\.0.*program\.s\[0\] and program\.s\['0'\]", program=Experts())


@pytest.mark.parametrize(
    ("inputs", "labels", "where"),
    [
        ({"question": "caf\udce9?"}, {"answer": "x"}, "inputs['question']"),
        ({"question": "ok"}, {"answer": ["a", "b\ud800"]}, "labels['answer'][1]"),
    ],
)
def test_text_with_a_lone_surrogate_is_refused_naming_where_it_is(
    inputs: dict[str, Any], labels: dict[str, Any], where: str
) -> None:
    """Bytes decoded with ``surrogateescape`` (or a JSON ``\\udce9`` escape) are no text an LM request,
    cache key or journal can carry: refused before any call, naming the field (was a bare
    UnicodeEncodeError from the example's id)."""
    with pytest.raises(aprompt.ConfigError, match="lone surrogate") as refused:
        aprompt.Example(inputs, labels)
    assert where in str(refused.value)
    aprompt.Example({"question": "café?"}, {"answer": "\U0001f600"})  # real non-ASCII text is fine


class Shelf(enum.Enum):
    TOP = "code-top"


class Before(logging.Handler):
    """Keeps each aprompt warning with the number of chat requests the server had seen when it came."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        super().__init__(logging.WARNING)
        self.server = server
        self.seen: list[tuple[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), len(self.server.chat_requests)))


async def test_training_values_a_saved_result_cannot_keep_are_warned_of_before_any_lm_call(
    tmp_path: Path,
) -> None:
    # A label the extract stage shows (its output `code`) as an enum member becomes a labeled demo that
    # result.save() cannot keep; a datetime no predictor shows never becomes a demo.
    trainset = [
        Example(
            inputs=e.inputs,
            labels={**e.labels, "asked": datetime.date(2024, 1, 1), **({"code": Shelf.TOP} if i < 5 else {})},
            id=f"row-{i}",
        )
        for i, e in enumerate(examples(0, 20))
    ]
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        watch = Before(server)
        logging.getLogger("aprompt").addHandler(watch)
        try:
            await aprompt.optimize(
                TwoStageProgram(), trainset, metric, lm=lm, budget=TINY_BUDGET, valset=examples(20, 30)
            )
        finally:
            logging.getLogger("aprompt").removeHandler(watch)
    warned = [(message, calls) for message, calls in watch.seen if "result.save()" in message]
    assert len(warned) == 1
    message, calls = warned[0]
    assert calls == 0
    assert message.startswith("aprompt: 5 training example(s)")
    assert "example 'row-0', code: a Shelf value" in message
    assert "and 2 more" in message
    assert "asked" not in message
