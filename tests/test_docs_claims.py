"""Concrete claims of the docs, checked against the code they describe: a name, a default or a rule the
code changes fails here rather than leaving the page wrong."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import aprompt
from aprompt import Completion, Message, TokenUsage
from aprompt._cli.errors import EXIT_CONFIG
from aprompt._cli.main import main
from aprompt.strategies import STRATEGIES
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY

ROOT = Path(__file__).resolve().parent.parent
#: A program and metric file for the command line.
QA_PROGRAM = """\
import aprompt

class QA:
    def __init__(self):
        self.answer = aprompt.Predict("question -> answer")

    async def __call__(self, question):
        return await self.answer(question=question)

def exact(example, prediction):
    return prediction.answer == example.labels["answer"]
"""
#: The strategies aprompt ships (a test may have registered one of its own meanwhile).
BUILT_IN = {name for name, strategy in STRATEGIES.items() if type(strategy).__module__.startswith("aprompt.")}


def _text(relative: str) -> str:
    return (ROOT / relative).read_text(encoding="utf-8")


def test_the_readme_lists_every_built_in_strategy() -> None:
    listed = re.search(r"^Strategies: (.*?)\. Budgets", _text("README.md"), re.M | re.S)
    assert listed is not None
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == BUILT_IN


def test_the_concepts_budget_names_the_presets_and_every_field_of_the_code() -> None:
    import attrs

    from aprompt._optimize.budget import PRESETS

    page = " ".join(_text("docs/concepts.md").split())
    section = page[page.index("## Budget") : page.index("## run_dir")]
    light, medium, heavy = (PRESETS[name] for name in ("light", "medium", "heavy"))
    assert (
        f'`"light"` ({light.n_candidates} candidates per predictor, up to {light.val_size} validation '
        f'examples), `"medium"` ({medium.n_candidates}, {medium.val_size}), `"heavy"` '
        f"({heavy.n_candidates}, {heavy.val_size})"
    ) in section
    named = set(re.findall(r"`(\w+)`", section.split("Its fields are", 1)[1].split(". The first event")[0]))
    assert {field.name for field in attrs.fields(aprompt.Budget)} <= named
    assert f"`minibatch_size` (default {light.minibatch_size})" in section
    assert f"`full_eval_every` (default {light.full_eval_every})" in section


def test_an_endpoint_whose_key_variable_is_unset_is_refused_as_the_docs_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GPU2_KEY", raising=False)
    endpoint = aprompt.Endpoint("http://gpu-2:8000/v1", api_key_env="GPU2_KEY")
    with pytest.raises(aprompt.ConfigError, match=r"\$GPU2_KEY"):
        aprompt.OpenAICompatibleLM("m", [endpoint], api_key="sk-client-key")  # made, not yet opened
    said = "making the client raises a `ConfigError`"
    assert said in " ".join(_text("docs/howto.md").split())
    assert "`api_key_env` is not set" in " ".join(_text("docs/guarantees.md").split())


@pytest.mark.parametrize("flag", ["--lm-concurrency", "--rpm"])
def test_the_command_line_how_to_says_a_zero_concurrency_or_rate_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    # What the page says: exit 2 (checked against an endpoint that is never reached).
    args = ["optimize", "qa.py:QA", "--train", "t.jsonl", "--metric", "qa.py:exact"]
    (tmp_path / "qa.py").write_text(QA_PROGRAM, encoding="utf-8")
    (tmp_path / "t.jsonl").write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setenv("OPENAI_API_KEY", "sk-test")
        code = main([*args, "--lm", "http://127.0.0.1:9/v1", "--model", "m", flag, "0"])
    assert code == EXIT_CONFIG, capsys.readouterr().err
    cli = " ".join(_text("docs/howto.md").split("## Use the command line")[1].split())
    assert f"`{flag} N`" in cli and "`0` is refused (exit 2)" in cli


def test_the_reflective_strategys_costs_are_those_of_its_code() -> None:
    from aprompt._optimize import reflect

    page = " ".join(_text("docs/concepts.md").split())
    assert f"runs the current pick on {2 * reflect.K_FAILURES} training examples" in page
    assert f"keeps up to {reflect.K_FAILURES} it fails" in page
    assert reflect.ATTEMPTS == 2  # the page's "a second" proposer call
    assert "one proposer call per predictor (a second when the first reply is unusable" in page
    assert f"and {2 * reflect.K_FAILURES} program runs per reflection" in page


def test_the_guarantees_treat_a_reply_stopped_on_a_fault_as_the_code_does() -> None:
    from aprompt.lm._replies import is_answered_failure

    stopped = aprompt.IncompleteResponseError("stopped", finish_reason="error")
    filtered = aprompt.ContentFilteredError("filtered", finish_reason="content_filter")
    assert not is_answered_failure(stopped) and is_answered_failure(filtered)
    page = " ".join(_text("docs/guarantees.md").split())
    said = "A reply stopped on a fault (`error`, `abort`, `insufficient_system_resource`) is not one of those"
    assert said in page
    assert "the run checks the LM and re-runs the example" in page


def test_the_guarantees_and_errors_name_every_fault_and_window_cut_finish_reason() -> None:
    from aprompt.lm._replies import _FAULT_REASONS, WINDOW_CUT_REASONS, is_answered_failure

    page = " ".join(_text("docs/guarantees.md").split())
    incomplete = " ".join((aprompt.IncompleteResponseError.__doc__ or "").split())
    for reason in _FAULT_REASONS:  # each left unscored and checked as an outage's symptom
        assert not is_answered_failure(aprompt.IncompleteResponseError("x", finish_reason=reason))
        assert f"`{reason}`" in page.split("leaves the example **unscored**")[0], reason
        assert f'``"{reason}"``' in incomplete, reason
    cut = aprompt.TruncatedResponseError("cut", finish_reason="model_length")
    from aprompt.executors.base import ProgramOutcome

    outcome = ProgramOutcome.failed(cut)
    assert not outcome.lm_failure and outcome.error is not None  # the prompt's failure: scored 0
    window = page.split("A reply the context window cut")[1].split("- A prompt the provider refuses")[0]
    for reason in WINDOW_CUT_REASONS:
        assert f"`{reason}`" in window, reason
    assert "is not re-sent" in window and "scoring 0" in window
    concepts = " ".join(_text("docs/concepts.md").split())
    assert "two failures that are the prompt's own" not in concepts  # empty and filtered replies score 0 too
    assert "a reply empty, filtered or refused again after the retries" in concepts


def test_the_guarantees_score_empty_and_filtered_replies_as_the_code_does() -> None:
    from aprompt.executors.base import ProgramOutcome

    for reply in (aprompt.EmptyResponseError("empty"), aprompt.ContentFilteredError("filtered")):
        outcome = ProgramOutcome.failed(reply)
        assert not outcome.lm_failure and outcome.error is not None  # scored 0, not left unscored
    page = " ".join(_text("docs/guarantees.md").split())
    assert "got again after the retries, it is the **prompt's** failure and scores 0" in page


class _CallbackFailed(Exception):
    pass


@pytest.mark.anyio
async def test_on_event_is_awaited_inline_as_the_how_to_says(fake_server: FakeOpenAIServer) -> None:
    namespace: dict[str, Any] = {}
    exec(QA_PROGRAM, namespace)
    fake_server.responder = lambda request: "Answer: 1"
    trainset = [
        aprompt.Example(inputs={"question": f"q{i}"}, labels={"answer": str(i % 3)}) for i in range(20)
    ]
    async with aprompt.OpenAICompatibleLM("fake", fake_server.base_url, api_key=TEST_API_KEY) as lm:

        def raising(event: object) -> None:
            if isinstance(event, aprompt.PhaseFinished):
                raise _CallbackFailed("from the callback")

        with pytest.raises(_CallbackFailed, match="from the callback"):  # itself, not wrapped
            await aprompt.optimize(namespace["QA"](), trainset, namespace["exact"], lm=lm, on_event=raising)
        events: list[object] = []

        async def slow(event: object) -> None:
            events.append(event)
            await anyio.sleep(0.05)

        slowed = await aprompt.optimize(namespace["QA"](), trainset, namespace["exact"], lm=lm, on_event=slow)
        plain = await aprompt.optimize(namespace["QA"](), trainset, namespace["exact"], lm=lm)
    # The run waits for each callback (some run beside each other, in the steps that run so).
    assert len(events) > 20
    assert slowed.spent["seconds"] > plain.spent["seconds"] + 10 * 0.05
    page = " ".join(_text("docs/howto.md").split())
    assert "`on_event` is awaited inline" in page
    assert "its time counts against `max_time`" in page
    assert "a callback that raises stops the run, and `optimize` raises that exception" in page
    assert "awaited inline" in " ".join((aprompt.optimize.__doc__ or "").split())


def test_the_concepts_trace_says_what_the_code_does() -> None:
    from aprompt.program.trace import Trace, TraceEntry

    concepts = " ".join(_text("docs/concepts.md").split())
    assert "in the order the calls were made" in " ".join((Trace.__doc__ or "").split())
    assert "(copies)" in (TraceEntry.__doc__ or "")
    assert "Entries are in the order the calls were made" in concepts
    assert "hold copies of the inputs and outputs taken when the call was made and answered" in concepts


def test_the_how_tos_token_reservations_say_what_the_code_does() -> None:
    from aprompt.lm import limits

    howto = " ".join(_text("docs/howto.md").split())
    assert "reserves the longest completion reported so far" in " ".join((limits.__doc__ or "").split())
    assert "or without one the longest completion reported so far" in howto
    assert "the first such request goes alone under a token limit" in howto
    assert "is sent alone in its minute, with one warning naming the limit" in howto


def test_config_errors_docstring_allows_those_raised_during_a_run() -> None:
    said = " ".join((aprompt.ConfigError.__doc__ or "").split())
    # A metric value that is not a score is a ConfigError mid-run (see the guarantees), not only up front.
    assert "During the run, a metric value that is not a score" in " ".join(
        _text("docs/guarantees.md").split()
    )
    assert "a metric value that is not a score" in said and "is raised when it happens" in said


class _OwnJudge:
    """An LM object of the user's own (not an aprompt client), asked by the metric itself."""

    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self.model = "judge"
        self._url = f"{base_url}/chat/completions"
        self._http = http

    async def chat(self, messages: Sequence[Message], **params: Any) -> Completion:
        headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
        reply = await self._http.post(
            self._url, json={"model": self.model, "messages": messages}, headers=headers
        )
        return Completion(reply.json()["choices"][0]["message"]["content"], TokenUsage(1, 1))


@pytest.mark.anyio
async def test_the_guarantees_say_which_calls_count_against_a_limit(fake_server: FakeOpenAIServer) -> None:
    namespace: dict[str, Any] = {}
    exec(QA_PROGRAM, namespace)
    fake_server.responder = lambda request: "Answer: 1"
    trainset = [
        aprompt.Example(inputs={"question": f"q{i}"}, labels={"answer": str(i % 3)}) for i in range(20)
    ]
    async with (
        FakeOpenAIServer(responder=lambda request: "yes", api_key=TEST_API_KEY) as judge_server,
        httpx.AsyncClient() as http,
        aprompt.OpenAICompatibleLM("fake", fake_server.base_url, api_key=TEST_API_KEY) as lm,
    ):
        judge = _OwnJudge(judge_server.base_url, http)

        async def judged(example: aprompt.Example, prediction: Any) -> bool:
            verdict = await judge.chat(
                [{"role": "user", "content": f"{prediction.answer} | {example.labels}"}]
            )
            return bool(namespace["exact"](example, prediction)) and verdict.text == "yes"

        result = await aprompt.optimize(
            namespace["QA"](), trainset, judged, lm=lm, limits=aprompt.Limits(max_lm_calls=10_000)
        )
    # The run's meter sees the program's requests, not those the metric sends through its own object.
    assert result.spent["lm_calls"] == len(fake_server.chat_requests) > 0
    assert len(judge_server.chat_requests) > 0
    page = " ".join(_text("docs/guarantees.md").split())
    assert "for any LM object (aprompt's clients and your own)" not in page
    assert "A call your code makes itself to an LM object that is neither" in page
    assert "is not seen, and counts against no limit" in page
    howto = " ".join(_text("docs/howto.md").split())
    said = "a call your code makes itself to one of your own (a metric's judge that is no aprompt client)"
    assert f"{said} is not seen" in howto


@pytest.mark.anyio
async def test_the_guarantees_say_a_metric_raising_on_some_predictions_scores_them_0(
    fake_server: FakeOpenAIServer,
) -> None:
    namespace: dict[str, Any] = {}
    exec(QA_PROGRAM, namespace)
    fake_server.responder = lambda request: "Answer: 1"
    trainset = [
        aprompt.Example(inputs={"question": f"q{i}"}, labels={"answer": str(i % 3)}, id=f"e{i}")
        for i in range(20)
    ]

    def fragile(example: aprompt.Example, prediction: Any) -> bool:
        if (
            int(example.inputs["question"][1:]) % 4 == 0
        ):  # a quarter of the examples: some of every evaluation
            raise ValueError("cannot read this one")
        return bool(namespace["exact"](example, prediction))

    async with aprompt.OpenAICompatibleLM("fake", fake_server.base_url, api_key=TEST_API_KEY) as lm:
        result = await aprompt.optimize(namespace["QA"](), trainset, fragile, lm=lm)
    baseline = result.full_evals[0]
    assert baseline.n_failed > 0 and baseline.n_unscored == 0  # scored, as 0: averaged into the score
    page = " ".join(_text("docs/guarantees.md").split())
    assert "a bug in the metric is never averaged into scores" not in page
    assert "A metric that raises on some predictions only scores those examples 0" in page
