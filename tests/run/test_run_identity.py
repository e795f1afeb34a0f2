"""A run's identity covers everything that decides its result: resuming a different run is refused.

Each test journals a small world run in a ``run_dir``, changes one thing, and calls again with the same
``run_dir``: the call must fail with a ``ConfigError`` naming exactly what changed, before the fake
server sees a single chat request.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

import aprompt
from aprompt import Example, OpenAICompatibleLM, Predict
from aprompt._optimize.budget import resolve_budget
from aprompt._optimize.propose import Grounding
from aprompt.lm.types import Completion, Message
from aprompt.program.discovery import named_predictors
from aprompt.run._storage import run_fingerprint
from aprompt.run.identity import differences
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import SMALL_BUDGET
from tests.optimize.world import TwoStageProgram, World, metric

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as served:
        yield served


def items(start: int, stop: int, *, changed: int | None = None, field: str = "answer") -> list[Example]:
    """World examples with fixed ids, so a changed label or input keeps its example's id."""
    found = []
    for i in range(start, stop):
        inputs = {"question": f"What is the answer for item-{i}?"}
        labels = {"answer": f"ans-{i}"}
        if i == changed:
            (labels if field == "answer" else inputs)[field] += " (fixed)"
        found.append(Example(inputs=inputs, labels=labels, id=f"item{i}"))
    return found


class Relay:
    """A foreign LM: only the protocol (``model`` and ``chat``), relaying to an aprompt client."""

    def __init__(self, inner: aprompt.LM, model: str) -> None:
        self._inner = inner
        self._model = model

    @property
    def model(self) -> str:
        return self._model

    async def chat(self, messages: Sequence[Message], *, rollout: int = 0, **params: Any) -> Completion:
        return await self._inner.chat(messages, rollout=rollout, **params)


def client(server: FakeOpenAIServer, model: str = "world", **options: Any) -> OpenAICompatibleLM:
    base_url = options.pop("base_url", server.base_url)
    return OpenAICompatibleLM(model, base_url, api_key=TEST_API_KEY, **options)


async def run(
    server: FakeOpenAIServer,
    run_dir: Path,
    *,
    lm: dict[str, Any] | None = None,
    relay: str | None = None,
    proposer: dict[str, Any] | None = None,
    teacher: dict[str, Any] | None = None,
    answer_lm: dict[str, Any] | None = None,
    program: Any = None,
    trainset: list[Example] | None = None,
    valset: list[Example] | None = None,
    metric_: Any = metric,
    **options: Any,
) -> aprompt.OptimizeResult:
    """One world run in ``run_dir``; each ``dict`` argument makes a client of ``server`` with those
    options for that role (``lm``'s model defaults to ``"world"``)."""
    async with AsyncExitStack() as stack:
        main = await stack.enter_async_context(client(server, **(lm or {})))
        roles: dict[str, Any] = {}
        for role, spec in (("proposer_lm", proposer), ("teacher_lm", teacher)):
            if spec is not None:
                roles[role] = await stack.enter_async_context(client(server, **spec))
        program = program or TwoStageProgram()
        if answer_lm is not None:
            program.answer.lm = await stack.enter_async_context(client(server, **answer_lm))
        return await aprompt.optimize(
            program,
            trainset if trainset is not None else items(0, 40),
            metric_,
            valset=valset if valset is not None else items(200, 230),
            lm=Relay(main, relay) if relay is not None else main,
            budget=options.pop("budget", SMALL_BUDGET),
            seed=1,
            run_dir=run_dir,
            **roles,
            **options,
        )


def differing(error: BaseException) -> set[str]:
    """The keys a refusal names (``differs in: a; b (c)``)."""
    message = str(error)
    assert "differs in: " in message, message
    return set(message.split("differs in: ", 1)[1].split("); use another run_dir", 1)[0].split("; "))


async def refusal(server: FakeOpenAIServer, run_dir: Path, **changed: Any) -> set[str]:
    """Resume ``run_dir`` with ``changed``: the keys it is refused for; no chat request is made."""
    server.reset_records()
    with pytest.raises(aprompt.ConfigError) as info:
        await run(server, run_dir, **changed)
    assert server.chat_requests == []
    return differing(info.value)


async def test_changed_labels_under_the_same_ids_are_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path)
    assert await refusal(server, tmp_path, trainset=items(0, 40, changed=7)) == {"trainset content"}


async def test_changed_inputs_under_the_same_ids_are_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path)
    changed = items(200, 230, changed=210, field="question")
    assert await refusal(server, tmp_path, valset=changed) == {"valset content"}


async def test_another_model_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    await run(server, tmp_path)
    found = await refusal(server, tmp_path, lm={"model": "world-v2"})
    assert found == {"lm (model)", "proposer_lm (model)"}  # the proposer is the same LM by default


async def test_another_endpoint_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    await run(server, tmp_path)
    elsewhere = server.base_url.replace("127.0.0.1", "localhost")  # the same server, another URL
    found = await refusal(server, tmp_path, lm={"base_url": elsewhere})
    assert found == {"lm (endpoints)", "proposer_lm (endpoints)"}


async def test_other_default_sampling_params_are_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    await run(server, tmp_path, lm={"default_params": {"temperature": 0.0}})
    found = await refusal(server, tmp_path, lm={"default_params": {"temperature": 0.7}})
    assert found == {"lm (default params)", "proposer_lm (default params)"}


async def test_a_changed_lm_capacity_is_refused_saying_parallel_trials_follow_it(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # The budget sets no parallel_trials: the run chose them from the LM's max_concurrency.
    budget = {key: value for key, value in SMALL_BUDGET.items() if key != "parallel_trials"}
    await run(server, tmp_path, lm={"max_concurrency": 4}, budget=budget)
    server.reset_records()
    with pytest.raises(aprompt.ConfigError) as info:
        await run(server, tmp_path, lm={"max_concurrency": 64}, budget=budget)
    assert server.chat_requests == []
    assert differing(info.value) == {"budget (parallel_trials)"}
    message = str(info.value)
    assert "max_concurrency" in message and "parallel_trials" in message.split("use another run_dir")[1]


async def test_another_proposer_model_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    await run(server, tmp_path, proposer={"model": "writer"})
    assert await refusal(server, tmp_path, proposer={"model": "writer-v2"}) == {"proposer_lm (model)"}


async def test_another_teacher_model_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    await run(server, tmp_path, teacher={"model": "teacher"})
    assert await refusal(server, tmp_path, teacher={"model": "teacher-v2"}) == {"teacher_lm (model)"}


async def test_another_model_of_a_predictors_own_lm_is_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path, answer_lm={"model": "answerer"})
    assert await refusal(server, tmp_path, answer_lm={"model": "answerer-v2"}) == {"answer.lm (model)"}


async def test_a_fixed_metric_of_the_same_name_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    def fixed(example: Example, prediction: Any) -> bool:
        return str(prediction.answer).strip().lower() == str(example.labels["answer"]).lower()

    # The same qualified name as the metric of the first run: only its source changed.
    fixed.__module__, fixed.__qualname__ = metric.__module__, metric.__qualname__
    await run(server, tmp_path)
    assert await refusal(server, tmp_path, metric_=fixed) == {"metric"}


async def test_another_metric_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    def lenient(example: Example, prediction: Any) -> float:
        return 1.0

    await run(server, tmp_path)
    assert await refusal(server, tmp_path, metric_=lenient) == {"metric"}


async def test_a_changed_instruction_is_refused_naming_the_predictor(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path)
    program = TwoStageProgram()
    program.answer.instruction = "Give the answer, briefly."
    assert await refusal(server, tmp_path, program=program) == {"program (answer)"}


class Reordered(TwoStageProgram):
    """The world's predictors, set in the order given (as a loop over a set sets them)."""

    def __init__(self, order: Sequence[str]) -> None:
        made = TwoStageProgram()
        for name in order:
            setattr(self, name, getattr(made, name))


async def test_the_same_predictors_in_another_order_are_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # The order decides the search's sampling: resumed so, the run went on as another search.
    await run(server, tmp_path, program=Reordered(["extract", "answer"]))
    assert await refusal(server, tmp_path, program=Reordered(["answer", "extract"])) == {
        "program (the order of its predictors: ['extract', 'answer'] then, ['answer', 'extract'] now)"
    }
    server.reset_records()
    await run(server, tmp_path, program=Reordered(["extract", "answer"]))
    assert server.chat_requests == []


async def test_a_changed_signature_is_refused_naming_the_predictor(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path)
    program = TwoStageProgram()
    program.extract = Predict("question -> code: int", instruction="Find the code.")
    assert await refusal(server, tmp_path, program=program) == {"program (extract)"}


async def test_a_foreign_lm_resumes_and_another_model_of_it_is_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    first = await run(server, tmp_path, relay="relay-1")
    again = await run(server, tmp_path, relay="relay-1")
    assert again.score == first.score and again.best_choice == first.best_choice
    assert await refusal(server, tmp_path, relay="relay-2") == {"lm (model)", "proposer_lm (model)"}


async def test_a_foreign_lm_in_place_of_a_client_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    await run(server, tmp_path)
    found = await refusal(server, tmp_path, relay="world")
    assert {"lm (type)", "lm (endpoints)", "proposer_lm (type)"} <= found
    assert "lm (model)" not in found


async def test_a_local_server_on_another_port_resumes(tmp_path: Path) -> None:
    """A local server (``LocalLM``) takes a free port each start: the port is not part of the run."""
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as first:
        reference = await run(first, tmp_path)
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as second:
        assert second.base_url != first.base_url
        resumed = await run(second, tmp_path)
        assert second.chat_requests == []  # everything read back from the journal and the cache
    assert resumed.score == reference.score and resumed.best_choice == reference.best_choice
    with RunJournal.open(tmp_path) as journal:
        assert journal.latest("config")["lm (endpoints)"] == ["http://127.0.0.1/v1"]


async def test_a_journal_of_an_older_identity_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with RunJournal.open(tmp_path) as journal:  # what aprompt recorded before it covered LMs and metric
        journal.append("config", {"strategy": "mipro", "seed": 1, "trainset": "0" * 16, "valset": "1" * 16})
    with pytest.raises(aprompt.ConfigError, match=r"another aprompt version.*resume=False"):
        await run(server, tmp_path)
    assert server.chat_requests == []


def journaled_before_formats(run_dir: Path) -> int:
    """Make ``run_dir``'s journal one an aprompt wrote before it recorded journal formats (its config
    without the key); returns how many trials it holds."""
    with RunJournal.open(run_dir) as journal:
        config = dict(journal.latest("config"))
        del config["journal format"]
        journal.append("config", config)
        return len(journal.records("trial"))


async def test_a_journal_of_an_older_strategy_format_is_refused_by_its_format(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # module_opro's format 1 ran other rounds under the same inputs: its records are not this run's.
    await run(server, tmp_path / "opro", strategy="module_opro")
    kept = journaled_before_formats(tmp_path / "opro")
    server.reset_records()
    with pytest.raises(aprompt.ConfigError) as refused:
        await run(server, tmp_path / "opro", strategy="module_opro")
    message = str(refused.value)
    assert "module_opro run journaled in format 1" in message
    assert "journals module_opro in format 2" in message
    assert "another run_dir" in message and "the aprompt that wrote it" in message
    assert "different" not in message
    assert server.chat_requests == []
    with RunJournal.open(tmp_path / "opro") as journal:
        assert kept > 0 and len(journal.records("trial")) == kept, "nothing is cleared"
    # A strategy whose format is still 1 resumes such a journal, paying for nothing again.
    first = await run(server, tmp_path / "mipro")
    journaled_before_formats(tmp_path / "mipro")
    server.reset_records()
    again = await run(server, tmp_path / "mipro")
    assert server.chat_requests == [] and again.best_choice == first.best_choice


async def test_resume_false_starts_a_refused_run_over(server: FakeOpenAIServer, tmp_path: Path) -> None:
    await run(server, tmp_path)
    await refusal(server, tmp_path, lm={"model": "world-v2"})
    fresh = await run(server, tmp_path / "fresh", lm={"model": "world-v2"})
    server.reset_records()
    restarted = await run(server, tmp_path, lm={"model": "world-v2"}, resume=False)
    assert restarted.score == fresh.score and restarted.best_choice == fresh.best_choice
    with RunJournal.open(tmp_path) as journal:
        assert [c["lm (model)"] for c in journal.records("config")] == ["world-v2"]


class Described:
    """Stands in for an LM in a fingerprint: what the fingerprint reads of one, and no connection."""

    def __init__(self) -> None:
        self.model = "world"
        self.endpoints = ("http://api.example.com/v1", "http://127.0.0.1:8123/v1")
        self.default_params = {"temperature": 0.3, "stop": ["\n\n"]}


def world_fingerprint() -> dict[str, Any]:
    """The fingerprint of a world run whose examples hold sets (ordered by the process's hash seed)."""
    tags = {"a", "b", "c", "d"}
    train = [
        Example(inputs={"question": f"item-{i}"}, labels={"answer": f"ans-{i}", "tags": tags}, id=f"item{i}")
        for i in range(5)
    ]
    return run_fingerprint(
        "mipro",
        resolve_budget(dict(SMALL_BUDGET)),
        1,
        Grounding(),
        1.0,
        named_predictors(TwoStageProgram()),
        train,
        train[:2],
        lm=Described(),
        proposer_lm=Described(),
        teacher_lm=None,
        metric=metric,
    )


def test_the_fingerprint_is_the_same_in_every_process() -> None:
    here = json.loads(json.dumps(world_fingerprint()))
    script = (
        "import json; from tests.run.test_run_identity import world_fingerprint as f; print(json.dumps(f()))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == here


async def test_the_journaled_identity_holds_no_api_key_nor_param_values(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path, lm={"default_params": {"temperature": 0.25, "user": "u-7f3a"}})
    with RunJournal.open(tmp_path) as journal:
        text = json.dumps(journal.records("config"))
    assert TEST_API_KEY not in text and "u-7f3a" not in text and "0.25" not in text
    assert "world" in text  # the model is there, readable


def at_least(length: int) -> Any:
    """A metric made by a factory: only the value it closes over tells two of them apart."""

    def long_enough(example: Example, prediction: Any) -> bool:
        return metric(example, prediction) and len(str(prediction.answer)) >= length

    return long_enough


async def test_a_metric_closing_over_another_value_is_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path, metric_=at_least(1))
    again = await run(server, tmp_path, metric_=at_least(1))  # the same factory call resumes
    assert server.chat_requests and again.score > 0
    assert await refusal(server, tmp_path, metric_=at_least(99)) == {"metric"}


async def test_a_program_whose_code_changed_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    class Program(TwoStageProgram):
        """The world's program with the same predictors, whose code changes what it returns."""

        async def __call__(self, question: str) -> Any:
            found = await self.extract(question=question)
            answered = await self.answer(question=question, code=found.code)
            return aprompt.Prediction({"answer": str(answered.answer).upper()})

    # The same qualified name and predictors as the first run's program: only its code changed.
    Program.__module__, Program.__qualname__ = TwoStageProgram.__module__, TwoStageProgram.__qualname__
    fresh = await run(server, tmp_path / "fresh", program=Program())
    assert fresh.score == 0.0  # every answer is wrong in capitals: resuming the first run would lie
    await run(server, tmp_path)
    assert await refusal(server, tmp_path, program=Program()) == {"program code"}


class Shouting(TwoStageProgram):
    """The world's program with a setting of its own: shouted answers are all wrong."""

    def __init__(self, shout: bool = False) -> None:
        super().__init__()
        self.shout = shout

    async def __call__(self, question: str) -> Any:
        found = await self.extract(question=question)
        text = str((await self.answer(question=question, code=found.code)).answer)
        return aprompt.Prediction({"answer": text.upper() if self.shout else text})


async def test_a_program_holding_another_setting_is_refused(server: FakeOpenAIServer, tmp_path: Path) -> None:
    fresh = await run(server, tmp_path / "fresh", program=Shouting(shout=True))
    assert fresh.score == 0.0  # the same code and predictors: only the setting makes every answer wrong
    first = await run(server, tmp_path, program=Shouting(shout=False))
    assert first.score > 0
    server.reset_records()
    await run(server, tmp_path, program=Shouting(shout=False))  # the same setting resumes
    assert server.chat_requests == []
    assert await refusal(server, tmp_path, program=Shouting(shout=True)) == {"program settings"}


class Counting(Shouting):
    """A program that keeps state of its own as it runs: a call count and the last answer given."""

    async def __call__(self, question: str) -> Any:
        self.calls = getattr(self, "calls", 0) + 1
        prediction = await super().__call__(question)
        self.last = str(prediction.answer)
        return prediction


async def test_a_program_that_changes_its_own_values_as_it_runs_resumes_in_the_same_process(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    program = Counting()
    first = await run(server, tmp_path, program=program)
    assert program.calls > 0 and program.last
    server.reset_records()
    # The same object called again (a notebook, a raised limit): what it counted is no setting of the run.
    again = await run(server, tmp_path, program=program)
    assert server.chat_requests == []
    assert (again.score, dict(again.best_choice)) == (first.score, dict(first.best_choice))
    program.shout = True  # a setting the user changes is still one
    assert await refusal(server, tmp_path, program=program) == {"program settings"}


class Settling(Shouting):
    """A program that settles a setting left unset on its first call (a lazily chosen default)."""

    def __init__(self) -> None:
        super().__init__()
        self.style: str | None = None

    async def __call__(self, question: str) -> Any:
        if self.style is None:
            self.style = "plain"
        self.shout = self.style == "loud"
        return await super().__call__(question)


async def test_a_setting_the_user_changes_after_a_run_changed_it_is_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    program = Settling()
    await run(server, tmp_path, program=program)
    assert program.style == "plain"
    program.style = "loud"  # every answer now shouted: another program than the run_dir's
    assert await refusal(server, tmp_path, program=program) == {"program settings"}


FINISHING = """
import aprompt


class Finishing:
    \"\"\"The world's program run through its forward, which ends in a helper method.\"\"\"

    def __init__(self):
        self.extract = aprompt.Predict("question -> code", instruction="Find the code.")
        self.answer = aprompt.Predict("question, code -> answer", instruction="Give the answer.")

    async def forward(self, question):
        found = await self.extract(question=question)
        return self.finish(await self.answer(question=question, code=found.code))

    def finish(self, answered):
        return aprompt.Prediction({"answer": str(answered.answer)%s})
"""


def finishing(folder: Path, ending: str) -> Any:
    """A ``Finishing`` program from its module's file in ``folder``, written with the helper's
    ``ending``: the file edited between two runs, as a user edits their code."""
    (folder / "finishing_program.py").write_text(FINISHING % ending)
    sys.modules.pop("finishing_program", None)
    importlib.invalidate_caches()
    return importlib.import_module("finishing_program").Finishing()


async def test_a_program_whose_forward_helper_changed_is_refused(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "finishing_program", raising=False)
    fresh = await run(server, tmp_path / "fresh", program=finishing(code, ".upper()"))
    assert fresh.score == 0.0  # forward is the same: only its helper makes every answer wrong
    await run(server, tmp_path / "run", program=finishing(code, ""))
    assert await refusal(server, tmp_path / "run", program=finishing(code, ".upper()")) == {"program code"}


def transformed(example: Example, prediction: Any, *, transform: Any) -> bool:
    return bool(transform(str(prediction.answer).strip()) == example.labels["answer"])


async def test_a_partial_metric_bound_to_another_function_is_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path, metric_=functools.partial(transformed, transform=lambda text: text))
    shouting = functools.partial(transformed, transform=lambda text: text.upper())
    assert await refusal(server, tmp_path, metric_=shouting) == {"metric"}


GRADER = """
class Grader:
    def score(self, example, prediction):
        return self.normalize(prediction.answer) == example.labels["answer"]

    def normalize(self, text):
        return str(text).strip()%s
"""


def grading(folder: Path, ending: str) -> Any:
    """A ``Grader().score`` metric from its module's file in ``folder``, written with the helper method's
    ``ending``: the file edited between two runs."""
    (folder / "grading_metric.py").write_text(GRADER % ending)
    sys.modules.pop("grading_metric", None)
    importlib.invalidate_caches()
    return importlib.import_module("grading_metric").Grader().score


async def test_a_bound_method_metric_whose_helper_method_changed_is_refused(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "grading_metric", raising=False)
    await run(server, tmp_path / "run", metric_=grading(code, ""))
    # ``score`` is the same: only the method it calls scores every answer otherwise.
    assert await refusal(server, tmp_path / "run", metric_=grading(code, ".upper()")) == {"metric"}


CALLABLE_JUDGE = """
def normalize(text):
    return str(text).strip()%s


class Judge:
    def __call__(self, example, prediction):
        return normalize(prediction.answer) == example.labels["answer"]
"""


async def test_a_callable_metric_whose_module_helper_changed_is_refused(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def judge(ending: str) -> Any:
        (code / "judging_metric.py").write_text(CALLABLE_JUDGE % ending)
        sys.modules.pop("judging_metric", None)
        importlib.invalidate_caches()
        return importlib.import_module("judging_metric").Judge()

    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "judging_metric", raising=False)
    await run(server, tmp_path / "run", metric_=judge(""))
    # The class is the same: only the module's function its ``__call__`` calls scores otherwise.
    assert await refusal(server, tmp_path / "run", metric_=judge(".upper()")) == {"metric"}


def set_labeled_ids() -> list[str]:
    """The ids a dataset without given ids gets, when its labels hold sets (and an object without
    a text of its own)."""

    class Source:
        pass

    return [
        Example(
            inputs={"question": f"item-{i}"}, labels={"tags": {"a", "b", "c", "d"}, "source": Source()}
        ).id
        for i in range(5)
    ]


def test_an_examples_own_id_is_the_same_in_every_process() -> None:
    """Else a resumed run in a new process finds other ids, and is refused as another run."""
    script = (
        "import json; from tests.run.test_run_identity import set_labeled_ids as f; print(json.dumps(f()))"
    )
    found = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        found.append(json.loads(out.stdout))
    assert found[0] == found[1] == set_labeled_ids()


async def test_a_metric_closing_over_another_numpy_number_is_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A threshold computed with numpy (``np.max(lengths)``) is an ``np.int64``, no ``int``: a setting all
    the same."""
    await run(server, tmp_path, metric_=at_least(np.int64(1)))
    server.reset_records()
    await run(server, tmp_path, metric_=at_least(np.int64(1)))  # the same value resumes
    assert server.chat_requests == []
    assert await refusal(server, tmp_path, metric_=at_least(np.int64(99))) == {"metric"}


#: A module-level setting a metric reads.
MIN_LENGTH = 1


def long_enough(example: Example, prediction: Any) -> bool:
    return metric(example, prediction) and len(str(prediction.answer)) >= MIN_LENGTH


async def test_a_metric_reading_another_module_setting_is_refused(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run(server, tmp_path, metric_=long_enough)
    monkeypatch.setattr(sys.modules[__name__], "MIN_LENGTH", 99)
    assert await refusal(server, tmp_path, metric_=long_enough) == {"metric"}


async def test_a_run_started_over_on_another_endpoint_asks_that_endpoint(tmp_path: Path) -> None:
    """The refusal says ``resume=False`` starts over: the answers of the endpoint it was refused for
    (kept in the run_dir's cache) must not stand in for the new endpoint's."""
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as first:
        await run(first, tmp_path)
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as second:
        elsewhere = second.base_url.replace("127.0.0.1", "localhost")  # another host: another endpoint
        assert await refusal(second, tmp_path, lm={"base_url": elsewhere}) == {
            "lm (endpoints)",
            "proposer_lm (endpoints)",
        }
        await run(second, tmp_path / "fresh", lm={"base_url": elsewhere})
        asked = len(second.chat_requests)
        second.reset_records()
        await run(second, tmp_path, lm={"base_url": elsewhere}, resume=False)
        assert len(second.chat_requests) == asked > 0
        second.reset_records()  # starting over on the same endpoints keeps what was paid for
        await run(second, tmp_path, lm={"base_url": elsewhere}, resume=False)
        assert second.chat_requests == []


async def test_another_number_of_parse_retries_is_refused_naming_the_predictor(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path)
    program = TwoStageProgram()
    program.answer.max_parse_retries = 0  # an unreadable reply now fails its example: other scores
    assert await refusal(server, tmp_path, program=program) == {"program (answer)"}


def answer_text(prediction: Any) -> str:
    return str(prediction.answer).strip()


def by_the_helper(example: Example, prediction: Any) -> bool:
    return answer_text(prediction) == example.labels["answer"]


async def test_a_metric_whose_module_helper_changed_is_refused(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run(server, tmp_path, metric_=by_the_helper)

    def answer_text(prediction: Any) -> str:  # the helper edited: every score may change
        return str(prediction.answer).strip().lower()

    monkeypatch.setattr(sys.modules[__name__], "answer_text", answer_text)
    assert await refusal(server, tmp_path, metric_=by_the_helper) == {"metric"}


# Two metrics on one line, as a table of them often is written: the source of each is that whole line.
EXACT, LONG_ENOUGH = (lambda e, p: metric(e, p)), (lambda e, p: metric(e, p) and len(str(p.answer)) > 5)


async def test_another_lambda_metric_of_the_same_line_is_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    await run(server, tmp_path, metric_=EXACT)
    assert await refusal(server, tmp_path, metric_=LONG_ENOUGH) == {"metric"}


class Note:
    """A label value without a text of its own (its text would be its class's name)."""

    def __init__(self, text: str) -> None:
        self.text = text


def with_extra_labels(weights: Any, note: Note) -> list[Example]:
    found = items(0, 40)
    found[7] = Example(
        inputs=found[7].inputs, labels={**found[7].labels, "weights": weights, "note": note}, id="item7"
    )
    return found


@pytest.mark.parametrize("changed", ["array", "object"])
async def test_labels_whose_text_hides_a_change_are_refused(
    server: FakeOpenAIServer, tmp_path: Path, changed: str
) -> None:
    weights = np.arange(2_000, dtype=float)  # its text shows only the first and last three
    await run(server, tmp_path, trainset=with_extra_labels(weights, Note("kept")))
    if changed == "array":
        other_weights, note = weights.copy(), Note("kept")
        other_weights[1_000] = 0.5
    else:
        other_weights, note = weights, Note("fixed")
    trainset = with_extra_labels(other_weights, note)
    assert await refusal(server, tmp_path, trainset=trainset) == {"trainset content"}


@dataclasses.dataclass(frozen=True)
class Refund:
    amount: int


@dataclasses.dataclass(frozen=True)
class Charge:
    """The same field as :class:`Refund`: another value, as its text (``Charge(amount=10)``) shows."""

    amount: int


@attrs.frozen
class Credit:
    amount: int


@attrs.frozen
class Debit:
    amount: int


@pytest.mark.parametrize("kind", ["dataclass", "attrs"])
async def test_labels_of_another_class_with_the_same_fields_are_refused(
    server: FakeOpenAIServer, tmp_path: Path, kind: str
) -> None:
    def with_entry(entry: Any) -> list[Example]:
        found = items(0, 40)
        found[7] = Example(inputs=found[7].inputs, labels={**found[7].labels, "entry": entry}, id="item7")
        return found

    before, after = (Refund(10), Charge(10)) if kind == "dataclass" else (Credit(10), Debit(10))
    await run(server, tmp_path, trainset=with_entry(before))
    assert await refusal(server, tmp_path, trainset=with_entry(after)) == {"trainset content"}


async def test_a_set_in_place_of_a_list_of_its_items_text_is_refused(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    def with_tags(tags: Any) -> list[Example]:
        found = items(0, 40)
        found[7] = Example(inputs=found[7].inputs, labels={**found[7].labels, "tags": tags}, id="item7")
        return found

    # A prompt shows the set as [1, 2], the list as its lines of text: two values.
    await run(server, tmp_path, trainset=with_tags({1, 2}))
    assert await refusal(server, tmp_path, trainset=with_tags(["1", "2"])) == {"trainset content"}


async def test_labels_of_the_same_content_resume(server: FakeOpenAIServer, tmp_path: Path) -> None:
    await run(server, tmp_path, trainset=with_extra_labels(np.arange(2_000, dtype=float), Note("kept")))
    server.reset_records()
    await run(server, tmp_path, trainset=with_extra_labels(np.arange(2_000, dtype=float), Note("kept")))
    assert server.chat_requests == []


async def judge_says(request: ChatRequest) -> str:
    return "yes" if request.last_user.startswith("Right? yes") else "no"


async def ask(judge: aprompt.LM, example: Example, prediction: Any) -> bool:
    verdict = "yes" if metric(example, prediction) else "no"
    return (await judge.chat([{"role": "user", "content": f"Right? {verdict}"}])).text == "yes"


def judged_by(judge: aprompt.LM) -> Any:
    """A metric closing over its judge."""

    async def by_judge(example: Example, prediction: Any) -> bool:
        return await ask(judge, example, prediction)

    return by_judge


class JudgeMetric:
    """A callable metric object holding its judge."""

    def __init__(self, judge: aprompt.LM) -> None:
        self.judge = judge

    async def __call__(self, example: Example, prediction: Any) -> bool:
        return await ask(self.judge, example, prediction)


class Grader:
    """Not a metric: an object of the user's that asks its LM, which a metric closes over."""

    def __init__(self, lm: aprompt.LM) -> None:
        self.lm = lm

    async def grade(self, example: Example, prediction: Any) -> bool:
        return await ask(self.lm, example, prediction)


def graded_by(judge: aprompt.LM) -> Any:
    grader = Grader(judge)

    async def by_grader(example: Example, prediction: Any) -> bool:
        return await grader.grade(example, prediction)

    return by_grader


#: The judge a module-level metric reads.
JUDGE: Any = None


async def by_the_modules_judge(example: Example, prediction: Any) -> bool:
    return await ask(JUDGE, example, prediction)


class AskingThroughAMethod:
    """A callable metric object whose ``__call__`` leaves the asking to another of its methods."""

    async def __call__(self, example: Example, prediction: Any) -> bool:
        return await self._ask(example, prediction)

    async def _ask(self, example: Example, prediction: Any) -> bool:
        return await ask(JUDGE, example, prediction)


@pytest.mark.parametrize(
    ("form", "where"),
    [
        ("closure", "judge"),
        ("object", "judge"),
        ("global", "global JUDGE"),
        ("grader", "grader.lm"),
        ("method", "_ask.global JUDGE"),
    ],
)
async def test_a_metric_asking_another_judge_model_is_refused_naming_the_judge(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str, where: str
) -> None:
    """The same metric code asking another judge model scores otherwise: resuming the run with it would
    return (or continue) the first judge's run."""

    def metric_of(judge: aprompt.LM) -> Any:
        monkeypatch.setattr(sys.modules[__name__], "JUDGE", judge)
        return {
            "closure": judged_by,
            "object": JudgeMetric,
            "global": lambda _: by_the_modules_judge,
            "grader": graded_by,
            "method": lambda _: AskingThroughAMethod(),
        }[form](judge)

    async with FakeOpenAIServer(responder=judge_says, api_key=TEST_API_KEY) as judges:
        async with client(judges, "judge-a") as judge:
            first = await run(server, tmp_path, metric_=metric_of(judge))
        async with client(judges, "judge-a") as judge:  # the same judge again: the run resumes
            judges.reset_records()
            again = await run(server, tmp_path, metric_=metric_of(judge))
            assert again.score == first.score and judges.chat_requests == []
        async with client(judges, "judge-b") as judge:
            assert await refusal(server, tmp_path, metric_=metric_of(judge)) == {
                f"metric judge ({where} (model))"
            }
            assert judges.chat_requests == []


def fingerprint_judged_by(grader: Predict) -> dict[str, Any]:
    def by_grader(example: Example, prediction: Any) -> bool:
        return bool(grader(question=example.inputs["question"], answer=prediction.answer).ok)

    train = items(0, 5)
    return run_fingerprint(
        "mipro",
        resolve_budget(dict(SMALL_BUDGET)),
        1,
        Grounding(),
        1.0,
        named_predictors(TwoStageProgram()),
        train,
        train[:2],
        lm=Described(),
        proposer_lm=Described(),
        teacher_lm=None,
        metric=by_grader,
    )


def test_a_metric_asking_a_predictor_is_told_apart_by_its_prompt_and_its_lm() -> None:
    def grader(model: str, instruction: str = "Is the answer right?") -> Predict:
        judge = Described()
        judge.model = model
        return Predict("question, answer -> ok: bool", instruction=instruction, lm=judge)

    first = fingerprint_judged_by(grader("judge-a"))
    assert differences(first, fingerprint_judged_by(grader("judge-a"))) == []
    assert differences(first, fingerprint_judged_by(grader("judge-b"))) == [
        "metric judge (grader.lm (model))"
    ]
    stricter = grader("judge-a", instruction="Is the answer exactly right?")
    assert differences(first, fingerprint_judged_by(stricter)) == ["metric judge (grader)"]
