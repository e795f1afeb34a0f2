"""Bad input is refused with a typed error naming the problem before any LM call is spent.

Every refused run below points at a fake server and asserts it saw no chat request, and that no journal
was started in the run's ``run_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt import OpenAICompatibleLM
from aprompt._optimize.api import split_valset
from aprompt._optimize.examples import inputs_key
from aprompt.run._preflight import check_endpoints, check_metric
from aprompt.testing.fake_anthropic import FakeAnthropicServer
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.world import TwoStageProgram, examples, metric

pytestmark = pytest.mark.anyio

BAD_KEY = "sk-bad-key-DO-NOT-LEAK-91c3e8"


async def refused(
    server: FakeOpenAIServer,
    tmp_path: Path,
    error: type[Exception],
    match: str,
    *,
    program: object | None = None,
    trainset: Any = None,
    metric_: Any = metric,
    **options: Any,
) -> pytest.ExceptionInfo[Exception]:
    """Run an optimization that must fail with ``error`` before the server sees a chat request."""
    options.setdefault("budget", {"n_candidates": 3, "val_size": 20, "n_trials": 4, "minibatch_size": 10})
    async with OpenAICompatibleLM("fake-model", server.base_url, api_key=TEST_API_KEY) as lm:
        with pytest.raises(error, match=match) as info:
            await aprompt.optimize(
                program if program is not None else TwoStageProgram(),
                trainset if trainset is not None else examples(0, 40),
                metric_,
                lm=lm,
                run_dir=tmp_path / "run",
                **options,
            )
    assert server.chat_requests == []
    assert not (tmp_path / "run").exists()
    return info


async def test_an_empty_trainset(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    await refused(fake_server, tmp_path, aprompt.ConfigError, "trainset is empty", trainset=[])


async def test_a_single_example_without_a_valset(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    await refused(fake_server, tmp_path, aprompt.ConfigError, "at least 2", trainset=examples(0, 1))


async def test_an_empty_valset(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    await refused(fake_server, tmp_path, aprompt.ConfigError, "valset is empty", valset=[])


async def test_examples_missing_the_programs_inputs(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    trainset = [*examples(0, 10), aprompt.Example(inputs={"query": "What is item-7?"}, id="odd-one")]
    await refused(fake_server, tmp_path, aprompt.ConfigError, "odd-one", trainset=trainset)


async def test_mappings_missing_an_input_field(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": "a"} for i in range(10)] + [{"answer": "a"}]
    await refused(
        fake_server,
        tmp_path,
        aprompt.ConfigError,
        "lacks input field",
        trainset=rows,
        input_fields=["question"],
    )


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"inputs": {"question": "2+2?"}, "labels": "4"}, r"labels must be a mapping.*got str '4'"),
        ({"inputs": {"question": "2+2?"}, "labels": 4}, r"labels must be a mapping.*got int 4"),
        ({"inputs": "2+2?"}, r"inputs must be a mapping.*got str '2\+2\?'"),
        ({"inputs": None}, r"inputs must be a mapping.*got NoneType None"),
    ],
    ids=["labels as text", "labels as a number", "inputs as text", "inputs as None"],
)
def test_an_example_whose_inputs_or_labels_are_no_mapping_is_told_to_name_its_fields(
    fields: dict[str, Any], match: str
) -> None:
    # A bare value (labels=answer) used to surface as a bare ValueError or TypeError from dict().
    with pytest.raises(aprompt.ConfigError, match=match):
        aprompt.Example(**fields)


def test_from_dict_given_one_input_name_as_text_is_told_to_pass_a_list() -> None:
    # It used to be read letter by letter: "example lacks input field(s) ['q', 'u', ...]".
    with pytest.raises(aprompt.ConfigError, match=r"inputs must be a list of field names.*\['question'\]"):
        aprompt.Example.from_dict({"question": "2+2?", "answer": "4"}, inputs="question")


class Row:
    """A data frame's row as its library gives it: not a mapping, but convertible to one."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)


@pytest.mark.parametrize(
    ("item", "remedy"),
    [
        ((0, Row({"question": "q", "answer": "a"})), r"\(index, row\) pair.*to_dict\('records'\)"),
        (Row({"question": "q", "answer": "a"}), r"row\.to_dict\(\)"),
        ("What is item-7?", r"aprompt\.Example\(inputs="),
    ],
    ids=["iterrows pair", "row object", "text"],
)
async def test_an_item_that_is_no_example_is_told_what_to_give(
    fake_server: FakeOpenAIServer, tmp_path: Path, item: object, remedy: str
) -> None:
    trainset = [*examples(0, 10), item]
    await refused(fake_server, tmp_path, aprompt.ConfigError, rf"trainset\[10\].*{remedy}", trainset=trainset)


@pytest.mark.parametrize(
    "keys", [{("ans", 7): "x"}, {7: "x", "other": "y"}], ids=["tuple", "int beside text"]
)
@pytest.mark.parametrize("as_mapping", [False, True], ids=["example with an id", "mapping"])
async def test_an_example_holding_a_dict_whose_keys_json_cannot_sort(
    fake_server: FakeOpenAIServer, tmp_path: Path, keys: dict[Any, str], as_mapping: bool
) -> None:
    # Its id, its comparison with the valset and its demos are sorted JSON: a bare TypeError otherwise.
    labels = {"answer": "ans-7", "aliases": keys}
    question = {"question": "What is the answer for item-7?"}
    if as_mapping:
        trainset: list[Any] = [*(e.fields() for e in examples(0, 7)), {**question, **labels}]
        options: dict[str, Any] = {"input_fields": ["question"]}
    else:
        trainset, options = [*examples(0, 7), aprompt.Example(question, labels, id="odd-one")], {}
    info = await refused(
        fake_server, tmp_path, aprompt.ConfigError, r"labels\['aliases'\]", trainset=trainset, **options
    )
    assert "text keys" in str(info.value)


async def test_a_valset_sharing_examples_with_the_trainset(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # Demos bootstrapped from a validation example would let the search score answers it was shown.
    valset = [*examples(100, 120), *examples(5, 7)]
    info = await refused(
        fake_server, tmp_path, aprompt.ConfigError, "both the trainset and the valset", valset=valset
    )
    assert all(example.id in str(info.value) for example in examples(5, 7))


def test_a_trainset_holding_its_examples_twice_keeps_the_copies_of_the_held_out_ones_out_of_it() -> None:
    # Held out of the trainset, one copy would be scored on a demo made from the other.
    trainset = [*examples(0, 40), *examples(0, 40)]
    train, val = split_valset(trainset, None, val_size=100, seed=0)
    held = {inputs_key(example) for example in val}
    assert len(val) == 40
    assert not held & {inputs_key(example) for example in train}
    assert {inputs_key(example) for example in [*train, *val]} == {inputs_key(e) for e in examples(0, 40)}


async def test_a_trainset_of_one_example_many_times_over_leaves_no_training_example_beside_the_valset(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # The copies of the held-out examples leave the trainset: nothing is left to bootstrap or summarize.
    copies = [aprompt.Example(e.inputs, e.labels, id=f"copy-{n}") for n in range(6) for e in examples(0, 1)]
    info = await refused(fake_server, tmp_path, aprompt.ConfigError, "no training example", trainset=copies)
    assert "valset" in str(info.value)


@pytest.mark.parametrize("labels", [{}, {"note": "no answer here"}])
async def test_an_example_missing_the_label_the_metric_reads(
    fake_server: FakeOpenAIServer, tmp_path: Path, labels: dict[str, str]
) -> None:
    # Scored 0 on every candidate, it would pull every score down without a word.
    odd = aprompt.Example(inputs={"question": "What is the answer for item-7?"}, labels=labels, id="odd-one")
    trainset = [*examples(0, 7), odd, *examples(8, 40)]
    info = await refused(fake_server, tmp_path, aprompt.ConfigError, "odd-one", trainset=trainset)
    assert "'answer'" in str(info.value)


def one_argument(prediction: Any) -> bool:
    return True


def three_arguments(example: Any, prediction: Any, judge: Any) -> bool:
    return True


def keywords_only(*, example: Any, prediction: Any) -> bool:
    return True


@pytest.mark.parametrize("bad_metric", [one_argument, three_arguments, keywords_only, "exact_match"])
async def test_a_metric_that_cannot_take_example_and_prediction(
    fake_server: FakeOpenAIServer, tmp_path: Path, bad_metric: Any
) -> None:
    await refused(fake_server, tmp_path, aprompt.ConfigError, "metric", metric_=bad_metric)


def test_metrics_taking_two_positional_arguments_pass() -> None:
    class Judge:
        def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
            return 1.0

    for good in (metric, lambda *args: 1.0, Judge(), max):  # max: a builtin without a signature
        check_metric(good)


async def test_a_program_without_predictors(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    class Plain:
        async def __call__(self, question: str) -> str:
            return question

    await refused(fake_server, tmp_path, aprompt.ConfigError, "no predictors", program=Plain())


async def test_a_program_class_instead_of_an_instance_is_told_to_pass_an_instance(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # Its predictors are set in __init__, so the class itself holds none.
    match = r"is a class.*TwoStageProgram\(\)"
    await refused(fake_server, tmp_path, aprompt.ConfigError, match, program=TwoStageProgram)


class NamedModel:
    """What a predictor given a model name (``lm="gpt-4o"``) or an unentered client would hold instead."""


@pytest.mark.parametrize("bad_lm", ["gpt-4o", NamedModel()])
async def test_a_predictor_whose_lm_is_not_an_lm(
    fake_server: FakeOpenAIServer, tmp_path: Path, bad_lm: object
) -> None:
    program = TwoStageProgram()
    program.answer.lm = bad_lm  # type: ignore[assignment]
    await refused(fake_server, tmp_path, aprompt.ConfigError, r"answer\.lm must be an LM", program=program)


async def test_a_program_that_cannot_be_called(fake_server: FakeOpenAIServer, tmp_path: Path) -> None:
    class Uncallable:  # its predictors are found, but there is nothing to call it by
        def __init__(self) -> None:
            self.answer = aprompt.Predict("question -> answer")

        async def run(self, question: str) -> Any:
            return await self.answer(question=question)

    await refused(fake_server, tmp_path, aprompt.ConfigError, "not callable", program=Uncallable())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"budget": {"n_trials": 0}}, "n_trials"),
        ({"budget": {"minibatch_size": 0}}, "minibatch_size"),
        ({"limits": {"max_lm_calls": 12}}, "max_lm_calls=12 is smaller than one trial"),
        ({"limits": {"max_lm_calls": 0}}, "max_lm_calls=0"),
        ({"limits": {"max_tokens": 0}}, "max_tokens=0"),
        ({"limits": {"max_time": 0}}, "max_time=0"),
        ({"limits": {"max_cost": 0, "prices": {"fake-model": (1.0, 1.0)}}}, "max_cost=0"),
        ({"limits": {"max_cost": 1.0, "prices": {"gpt-4o": (1.0, 1.0)}}}, "no entry for model.*fake-model"),
    ],
)
async def test_a_budget_smaller_than_one_trial(
    fake_server: FakeOpenAIServer, tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    if "limits" in options:
        options = {**options, "limits": aprompt.Limits(**options["limits"])}
    await refused(fake_server, tmp_path, aprompt.ConfigError, match, **options)


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    yield port


async def test_an_unreachable_endpoint_is_named_up_front(closed_port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port}/v1"
    async with OpenAICompatibleLM("fake-model", url, api_key=TEST_API_KEY, max_retries=0) as lm:
        with pytest.raises(aprompt.LMConnectionError) as info:
            await aprompt.optimize(
                TwoStageProgram(), examples(0, 40), metric, lm=lm, run_dir=tmp_path / "run"
            )
    assert info.value.endpoint == url and url in str(info.value)
    assert lm.usage.requests == 0
    assert not (tmp_path / "run").exists()


async def test_an_endpoint_that_accepts_but_never_answers_is_unreachable() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        async with OpenAICompatibleLM("fake-model", url, api_key=TEST_API_KEY) as lm:
            with pytest.raises(aprompt.LMConnectionError, match=r"no answer within 0\.2 s"):
                await check_endpoints([lm], within=0.2)


class StrictServer(FakeOpenAIServer):
    """Like OpenAI: every route needs the key, and a wrong key is echoed back in the error message."""

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        given = headers.get("authorization", "").removeprefix("Bearer ")
        if given != self.api_key:
            message = f"Incorrect API key provided: {given}."
            return 401, json.dumps({"error": {"message": message}}).encode(), {}, None
        return await super()._answer(method, path, headers, body)


async def test_a_bad_api_key_names_the_endpoint_never_the_key(tmp_path: Path) -> None:
    async with (
        StrictServer(api_key=TEST_API_KEY) as server,
        OpenAICompatibleLM("fake-model", server.base_url, api_key=BAD_KEY) as lm,
    ):
        with pytest.raises(aprompt.AuthenticationError) as info:
            await aprompt.optimize(
                TwoStageProgram(), examples(0, 40), metric, lm=lm, run_dir=tmp_path / "run"
            )
        assert server.chat_requests == [] and len(server.requests) == 1
    error = info.value
    assert error.status_code == 401 and error.endpoint == server.base_url
    assert server.base_url in str(error) and "API key" in str(error)
    shown = " ".join([str(error), repr(error), repr(error.args), error.server_message, str(vars(error))])
    assert BAD_KEY not in shown and TEST_API_KEY not in shown
    assert error.__cause__ is None and error.__context__ is None  # no httpx request (with headers) attached


async def test_a_run_without_a_key_set_is_told_which_variable_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    async with (
        FakeAnthropicServer(api_key=TEST_API_KEY) as anthropic,
        aprompt.AnthropicLM("fake-claude", anthropic.base_url) as lm,
    ):
        with pytest.raises(aprompt.AuthenticationError) as info:
            await aprompt.optimize(
                TwoStageProgram(), examples(0, 40), metric, lm=lm, run_dir=tmp_path / "run"
            )
        assert anthropic.chat_requests == []
    assert "no API key was sent: $ANTHROPIC_API_KEY is not set" in str(info.value)
    assert info.value.status_code == 401 and info.value.endpoint == anthropic.base_url
    assert not (tmp_path / "run").exists()


async def test_an_anthropic_proposer_whose_key_is_refused_stops_the_run_up_front(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The fake Messages API answered the probe's ``GET /v1/models`` with a 404 before it checked the
    key, so a refused proposer key was only met mid-run, after the program LM had been paid."""
    async with (
        FakeAnthropicServer(api_key=TEST_API_KEY) as anthropic,
        aprompt.AnthropicLM("fake-claude", anthropic.base_url, api_key=BAD_KEY) as proposer,
        OpenAICompatibleLM("fake-model", fake_server.base_url, api_key=TEST_API_KEY) as lm,
    ):
        with pytest.raises(aprompt.AuthenticationError) as info:
            await aprompt.optimize(
                TwoStageProgram(),
                examples(0, 40),
                metric,
                lm=lm,
                proposer_lm=proposer,
                run_dir=tmp_path / "run",
            )
        assert anthropic.chat_requests == [] and fake_server.chat_requests == []
    assert info.value.status_code == 401 and info.value.endpoint == anthropic.base_url
    assert BAD_KEY not in str(info.value) and TEST_API_KEY not in str(info.value)
    assert not (tmp_path / "run").exists()


async def test_endpoints_shared_by_several_lms_are_probed_once(fake_server: FakeOpenAIServer) -> None:
    async with (
        OpenAICompatibleLM("a", fake_server.base_url, api_key=TEST_API_KEY) as first,
        OpenAICompatibleLM("b", [fake_server.base_url], api_key=TEST_API_KEY) as second,
    ):
        await check_endpoints([first, second, first, None, object()])
    assert [r.path for r in fake_server.requests] == ["/v1/models"]


async def test_one_server_with_two_keys_is_probed_once_per_key(fake_server: FakeOpenAIServer) -> None:
    async with (
        OpenAICompatibleLM("a", fake_server.base_url, api_key=TEST_API_KEY) as first,
        OpenAICompatibleLM("b", fake_server.base_url, api_key=BAD_KEY) as second,
    ):
        await check_endpoints([first, second])
        probed: set[str] = set()
        await first.probe(skip=probed)
        await first.probe(skip=probed)
    assert [r.path for r in fake_server.requests] == ["/v1/models"] * 3
    assert not any(TEST_API_KEY in identity for identity in probed)


@pytest.mark.parametrize("field", ["max_time", "max_cost", "max_tokens", "max_lm_calls"])
def test_an_infinite_limit_is_refused_naming_it_none_is_no_limit(field: str) -> None:
    """A run plans its steps from what a limit leaves: infinity was accepted, then crashed the run
    after it had spent (``OverflowError`` turning it into a number of runs)."""
    with pytest.raises(aprompt.ConfigError, match=rf"{field} must be .*or None \(no limit\); got inf"):
        aprompt.Limits(**{field: math.inf})
    assert getattr(aprompt.Limits(**{field: None}), field) is None


class _Stop(Exception):
    """Raised by the first progress event: the run's plan is told before any LM call."""


def _stop(event: object) -> None:
    raise _Stop


async def warnings_up_front(
    server: FakeOpenAIServer,
    valset: list[aprompt.Example],
    program: object | None = None,
    trainset: list[aprompt.Example] | None = None,
) -> list[str]:
    """The aprompt warnings an optimization logs before its first LM call (stopped at its plan)."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            assert server.chat_requests == []
            seen.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logging.getLogger("aprompt").addHandler(handler)
    try:
        async with OpenAICompatibleLM("fake-model", server.base_url, api_key=TEST_API_KEY) as lm:
            with pytest.raises(_Stop):
                await aprompt.optimize(
                    program or TwoStageProgram(),
                    trainset or examples(0, 20),
                    metric,
                    lm=lm,
                    valset=valset,
                    on_event=_stop,
                )
    finally:
        logging.getLogger("aprompt").removeHandler(handler)
    assert server.chat_requests == []
    return seen


def with_answer(example: aprompt.Example, answer: object, id: str) -> aprompt.Example:
    return aprompt.Example(example.inputs, {**example.labels, "answer": answer}, id=id)


async def test_validation_labels_that_are_none_nan_or_blank_are_warned_of_before_any_lm_call(
    fake_server: FakeOpenAIServer,
) -> None:
    # No answer matches such a label: each example scores 0 on every candidate, without a word.
    odd = [(None, "none-1"), (math.nan, "nan-1"), ("", "blank-1"), ("  ", "blank-2")]
    valset = [
        *(with_answer(e, answer, id) for e, (answer, id) in zip(examples(100, 104), odd, strict=True)),
        *examples(104, 120),
    ]
    warned = [m for m in await warnings_up_front(fake_server, valset) if "validation example" in m]
    assert len(warned) == 1
    assert warned[0].startswith("aprompt: 4 validation example(s) have a label that is None, NaN or empty")
    assert "'none-1' (answer), 'nan-1' (answer), 'blank-1' (answer) and 1 more" in warned[0]


async def test_blank_labels_a_fifth_of_the_valset_shares_are_taken_as_meant(
    fake_server: FakeOpenAIServer,
) -> None:
    # A task whose answer is often "nothing" (an extraction finding none): blank is an answer there, and
    # only the label that is None is warned of.
    valset = [
        *(with_answer(e, "", f"none-found-{i}") for i, e in enumerate(examples(100, 104))),
        with_answer(examples(104, 105)[0], None, "none-1"),
        *examples(105, 120),
    ]
    warned = [m for m in await warnings_up_front(fake_server, valset) if "validation example" in m]
    assert len(warned) == 1
    assert "aprompt: 1 validation example(s)" in warned[0]
    assert "('none-1' (answer))" in warned[0]


async def test_training_labels_that_are_blank_or_none_are_warned_of_unless_blank_is_common(
    fake_server: FakeOpenAIServer,
) -> None:
    # A blank answer becomes a labeled demo whose answer is empty, and a run on it fails the metric.
    odd = [("", "blank-1"), (" ", "blank-2"), (None, "none-1"), ("\t", "blank-3")]
    trainset = [
        *(with_answer(e, answer, id) for e, (answer, id) in zip(examples(0, 4), odd, strict=True)),
        *examples(4, 30),
    ]
    warned = await warnings_up_front(fake_server, examples(100, 120), trainset=trainset)
    assert [m for m in warned if "validation example" in m] == []
    (training,) = [m for m in warned if "training example" in m]
    assert training.startswith("aprompt: 4 training example(s) have a label that is None, NaN or empty")
    assert "'blank-1' (answer), 'blank-2' (answer), 'none-1' (answer) and 1 more" in training
    assert "labeled demo" in training
    # Blank answers a fifth of the trainset shares are a task whose answer is often "nothing": no warning.
    trainset = [with_answer(e, "", f"none-found-{i}") for i, e in enumerate(examples(0, 6))]
    meant = await warnings_up_front(fake_server, examples(100, 120), trainset=[*trainset, *examples(6, 30)])
    assert [m for m in meant if "example(s) have a label" in m] == []


def _answer_matches(example: aprompt.Example, prediction: Any) -> Any:
    """The usual metric; ``==`` against pandas.NA is NA, not a bool."""
    return prediction.answer == example.labels["answer"]


def _none_when_unlabeled(example: aprompt.Example, prediction: Any) -> Any:
    return None if example.labels["answer"] is None else prediction.answer == example.labels["answer"]


async def test_a_metric_that_gives_no_score_for_a_missing_label_is_refused_before_any_lm_call(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # Scored mid-run, the unlabeled example stopped the run with a ConfigError after its LM calls.
    valset = [*examples(100, 105), with_answer(examples(105, 106)[0], None, "unlabeled"), *examples(106, 120)]
    await refused(
        fake_server,
        tmp_path,
        aprompt.ConfigError,
        r"example unlabeled has a missing label \(answer=None\).*returned NoneType None",
        metric_=_none_when_unlabeled,
        valset=valset,
    )


async def test_a_pandas_na_label_under_an_equality_metric_is_refused_naming_the_label(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    pandas = pytest.importorskip("pandas")
    valset = [with_answer(examples(100, 101)[0], pandas.NA, "unlabeled"), *examples(101, 120)]
    await refused(
        fake_server,
        tmp_path,
        aprompt.ConfigError,
        r"example unlabeled has a missing label \(answer=<NA>\).*returned NAType",
        metric_=_answer_matches,
        valset=valset,
    )


class Checker:
    def __init__(self) -> None:
        self.check = aprompt.Predict("question -> answer: Literal['', 'yes', 'no']")

    async def __call__(self, question: str) -> Any:
        return await self.check(question=question)


async def test_a_blank_label_an_output_field_lists_as_a_choice_is_taken_as_meant(
    fake_server: FakeOpenAIServer,
) -> None:
    valset = [
        with_answer(examples(100, 101)[0], "", "blank-1"),
        with_answer(examples(101, 102)[0], None, "none-1"),
        *examples(102, 120),
    ]
    warned = [m for m in await warnings_up_front(fake_server, valset, Checker()) if "validation" in m]
    assert len(warned) == 1
    assert "('none-1' (answer))" in warned[0]
