"""Outage tolerance: an LM outage mid-run does not change the result; one past the tolerance stops the run
with EndpointDownError, and a later call resumes it; an example that fails alone is reported, not waited on.

The outage is the fake server's own (every request answered 503, or every connection closed), started by
the responder once the run has had a given number of answers, so it falls in a chosen phase: bootstrap
(30), summaries and proposals (75), the baseline's evaluation (140) or the search trials (300 of 761),
for 2 s (longer than a step) or 0.2 s (over before the step that lost examples to it ends).
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt._optimize.evaluate import Evaluation
from aprompt._optimize.outage import OutageGuard, OutagePolicy
from aprompt.lm.retry import RetryPolicy
from aprompt.program.overrides import PromptOverride
from aprompt.run.journal import RunJournal
from aprompt.testing._wire import Fault
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.lm.test_retry import untrusted_tls_server
from tests.optimize.qa_task import SMALL_BUDGET, QAProgram, exact_match, lm_for, qa_examples
from tests.optimize.world import TwoStageProgram, World, examples
from tests.run._optimize_worker import optimize_world, run_world, summary, world_lm
from tests.run.test_faults import BreakingTransport, _run_through, asks_about
from tests.run.test_limits_hold import responder as qa_responder

pytestmark = pytest.mark.anyio

# Requests give up fast, so an outage leaves examples unscored at once (the run, not the client, waits).
FAST_RETRY = RetryPolicy(max_retries=2, initial_backoff=0.01, max_backoff=0.02)
# No re-sends: every request the outage refuses fails, so a step loses examples to an outage of 0.2 s
# however slowly a loaded machine runs (with re-sends, three attempts could outlast it).
NO_RETRY = RetryPolicy(max_retries=0)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class OutageAfter:
    """The World's responder that starts a server outage once it has answered ``n_answered`` requests."""

    def __init__(self, n_answered: int, seconds: float, mode: str) -> None:
        self.world = World()
        self.n_answered, self.seconds, self.mode = n_answered, seconds, mode
        self.server: FakeOpenAIServer | None = None
        self.answers = 0

    def __call__(self, request: ChatRequest) -> str:
        self.answers += 1
        if self.server is not None and self.answers == self.n_answered:
            self.server.outage(seconds=self.seconds, mode=self.mode)
        return self.world(request)


async def clean_run() -> aprompt.OptimizeResult:
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server:
        return await run_world(server.base_url, None, TEST_API_KEY)


@pytest.mark.parametrize(
    ("answered_before_outage", "mode", "seconds"),
    [
        (30, "503", 2.0),
        (75, "close", 2.0),
        (140, "503", 2.0),
        (300, "close", 2.0),
        # Over before the step ends: the check passes, yet the step lost examples to the outage.
        (300, "503", 0.2),
    ],
)
async def test_an_outage_mid_run_ends_with_the_clean_result(
    answered_before_outage: int, mode: str, seconds: float
) -> None:
    clean = await clean_run()
    responder = OutageAfter(answered_before_outage, seconds, mode)
    async with FakeOpenAIServer(responder=responder, api_key=TEST_API_KEY) as server:
        responder.server = server
        result = await run_world(
            server.base_url, None, TEST_API_KEY, lm_options={"retry": NO_RETRY}, outage_tolerance=60
        )
        refused = server.refused_in_outage
    assert refused > 0, "the outage refused requests"
    assert result.usage.errors > 0, "requests failed after their retries: steps lost examples"
    assert summary(result) == summary(clean)
    assert result.failures == {} and clean.failures == {}
    assert all(t.n_unscored == 0 for t in result.trials) and all(f.n_unscored == 0 for f in result.full_evals)


class FaultyRepliesAfter:
    """The World's responder that, once it has answered ``n_answered`` requests, answers every request
    for ``seconds`` with a 200 whose reply the provider stopped on a fault (OpenRouter's
    ``finish_reason: "error"`` for an upstream failure)."""

    def __init__(self, n_answered: int, seconds: float) -> None:
        self.world = World()
        self.n_answered, self.seconds = n_answered, seconds
        self.answers = 0
        self.until = -math.inf
        self.faulty = 0

    def __call__(self, request: ChatRequest) -> str | Fault:
        self.answers += 1
        if self.answers == self.n_answered:
            self.until = time.monotonic() + self.seconds
        if time.monotonic() < self.until:
            self.faulty += 1
            return Fault.reply("Answer: ans-", finish_reason="error")
        return self.world(request)


async def test_an_outage_of_replies_stopped_on_a_fault_ends_with_the_clean_result() -> None:
    """Such replies were taken for the example's own failure, as a reply cut at its budget is: the
    steps the outage hit were recorded with examples unscored, and the result changed."""
    clean = await clean_run()
    responder = FaultyRepliesAfter(140, 2.0)
    async with FakeOpenAIServer(responder=responder, api_key=TEST_API_KEY) as server:
        result = await run_world(
            server.base_url, None, TEST_API_KEY, lm_options={"retry": NO_RETRY}, outage_tolerance=60
        )
    assert responder.faulty > 0 and result.usage.errors > 0, "steps lost examples to the outage"
    assert summary(result) == summary(clean)
    assert result.failures == {}
    assert all(t.n_unscored == 0 for t in result.trials) and all(f.n_unscored == 0 for f in result.full_evals)


async def test_an_outage_longer_than_the_tolerance_stops_the_run_and_a_later_call_resumes_it(
    tmp_path: Path,
) -> None:
    clean = await clean_run()
    responder = OutageAfter(300, math.inf, "503")
    run_dir = tmp_path / "run"
    async with FakeOpenAIServer(responder=responder, api_key=TEST_API_KEY) as server:
        responder.server = server
        options: dict[str, Any] = {"lm_options": {"retry": FAST_RETRY}, "outage_tolerance": 1.0}
        with pytest.raises(aprompt.EndpointDownError, match="outage_tolerance=1 s") as stopped:
            await run_world(server.base_url, run_dir, TEST_API_KEY, **options)
        assert stopped.value.waited >= 1.0
        assert "calling again with the same run_dir resumes" in str(stopped.value)
        with RunJournal.open(run_dir) as journal:
            journaled = [payload for _, payload in journal.entries("trial")]
        assert journaled, "trials before the outage were journaled"
        assert all(trial["n_unscored"] == 0 for trial in journaled), "no trial the outage cut short"

        server.end_outage()
        before = len(server.chat_requests)
        resumed = await run_world(server.base_url, run_dir, TEST_API_KEY, **options)
        resumed_requests = len(server.chat_requests) - before
    assert summary(resumed) == summary(clean)
    assert resumed.failures == {}
    assert resumed_requests < 761 - 300, "the resumed run read back what the first call paid for"


class RevokeKeyAfter:
    """The World's responder that, once it has answered ``n_answered`` requests, makes its server refuse
    the run's key (401) from then on: the key revoked on that one replica."""

    def __init__(self, n_answered: int) -> None:
        self.world = World()
        self.n_answered = n_answered
        self.server: FakeOpenAIServer | None = None
        self.answers = 0

    def __call__(self, request: ChatRequest) -> str:
        self.answers += 1
        if self.server is not None and self.answers == self.n_answered:
            self.server.api_key = "sk-the-replicas-new-key-0000"
        return self.world(request)


@pytest.mark.parametrize("answered_before_revoking", [30, 140])
async def test_a_key_revoked_on_one_of_two_replicas_mid_run_ends_with_the_clean_result(
    answered_before_revoking: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The examples that reached the refusing replica failed, and the one-token check went to one
    replica: on the refusing one it stopped the run with EndpointDownError though the other answered;
    on the other, the steps were re-run with the refusing replica still taking a share of the calls."""
    clean = await clean_run()
    responder = RevokeKeyAfter(answered_before_revoking)
    async with (
        FakeOpenAIServer(responder=responder, api_key=TEST_API_KEY) as revoked,
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as working,
    ):
        responder.server = revoked
        urls = [revoked.base_url, working.base_url]
        async with world_lm(urls, TEST_API_KEY, retry=NO_RETRY) as lm:
            result = await optimize_world(lm, None, outage_tolerance=60)
    assert 401 in {r.status for r in revoked.chat_requests}, "the replica refused the key mid-run"
    assert summary(result) == summary(clean)
    assert result.failures == {}
    assert all(t.n_unscored == 0 for t in result.trials) and all(f.n_unscored == 0 for f in result.full_evals)
    assert "refused the API key" in caplog.text and TEST_API_KEY not in caplog.text


class QuotaSpentAfter:
    """The World's responder that, once it has answered ``n_answered`` requests, has its server answer
    every request after with OpenAI's 429 ``insufficient_quota``: the account's quota spent mid-run."""

    def __init__(self, n_answered: int) -> None:
        self.world = World()
        self.n_answered = n_answered
        self.server: FakeOpenAIServer | None = None
        self.answers = 0

    def __call__(self, request: ChatRequest) -> str:
        self.answers += 1
        if self.server is not None and self.answers == self.n_answered:
            self.server.fault_rates = [(Fault.quota_exhausted(), 1.0)]
        return self.world(request)


async def test_a_quota_spent_mid_run_stops_it_at_once_and_a_later_call_resumes_it(tmp_path: Path) -> None:
    """The 429s were retried as rate limits, then the run waited out its whole outage_tolerance (300 s
    by default) before stopping, though only billing could end it."""
    clean = await clean_run()
    responder = QuotaSpentAfter(300)
    run_dir = tmp_path / "run"
    async with FakeOpenAIServer(responder=responder, api_key=TEST_API_KEY) as server:
        responder.server = server
        started = time.monotonic()
        with pytest.raises(aprompt.EndpointDownError, match="QuotaExhaustedError") as stopped:
            await run_world(server.base_url, run_dir, TEST_API_KEY)  # the default tolerance and retries
        assert time.monotonic() - started < 60 and stopped.value.waited < 1
        assert "outage_tolerance" not in str(stopped.value) and "add credit" in str(stopped.value)
        assert stopped.value.endpoint == server.base_url and TEST_API_KEY not in str(stopped.value)
        assert {r.status for r in server.chat_requests[-5:]} == {429}

        server.fault_rates = []  # credit added
        before = len(server.chat_requests)
        resumed = await run_world(server.base_url, run_dir, TEST_API_KEY)
        resumed_requests = len(server.chat_requests) - before
    assert summary(resumed) == summary(clean)
    assert resumed.failures == {}
    assert resumed_requests < 761 - 300, "the resumed run read back what the first call paid for"


async def test_an_example_failing_alone_while_the_lm_works_is_unscored_and_reported() -> None:
    broken = next(e.id for i, e in enumerate(examples(200, 240), start=200) if i == 215)
    transport = BreakingTransport(asks_about({215}))
    result = await _run_through(transport, None)  # the default tolerance: nothing is waited for

    steps = [f"full_eval:{index}" for index in range(len(result.full_evals))] + [
        f"trial:{t.number}" for t in result.trials if broken in t.example_ids
    ]
    assert result.failures.keys() == {f"{step}:{broken}" for step in steps}
    assert all(error.startswith("ServerError") for error in result.failures.values())
    assert result.to_dict()["failures"] == dict(result.failures)  # the saved record keeps them
    assert all(f.n_unscored == 1 and f.lm_failures.keys() == {broken} for f in result.full_evals)
    # Each step sent it once and re-ran it twice (the LM answered every check), each time with 2 retries;
    # steps running beside each other may share one send of the same request (the run's cache coalesces).
    assert transport.refused % 3 == 0 and len(steps) * 3 * 2 < transport.refused <= len(steps) * 3 * 3
    assert len(result.trials) == 12


@pytest.mark.parametrize("fault", [Fault.empty_content(), Fault.null_content(), Fault.content_filter()])
async def test_a_judge_answering_nothing_on_an_example_leaves_it_unscored_without_reruns(
    fault: Fault,
) -> None:
    """The program's LM answers; the metric's judge draws no answer on one example: the endpoint works and,
    asked again, would answer the same, so that example is unscored (not 0) at once, with no re-run."""
    broken = "q104"

    def judge_says(request: ChatRequest) -> str | Fault:
        return fault if f"for {broken}?" in request.last_user else "yes"

    async with (
        FakeOpenAIServer(responder=qa_responder, api_key=TEST_API_KEY) as server,
        FakeOpenAIServer(responder=judge_says, api_key=TEST_API_KEY) as judge_server,
        lm_for(server) as lm,
        aprompt.OpenAICompatibleLM(
            "judge", judge_server.base_url, api_key=TEST_API_KEY, retry=FAST_RETRY
        ) as judge,
    ):

        async def by_judge(example: aprompt.Example, prediction: Any) -> bool:
            asked = f"Same for {example.id}? {prediction.answer} | {example.labels['answer']}"
            return (await judge.chat([{"role": "user", "content": asked}])).text.strip() == "yes"

        result = await aprompt.optimize(
            QAProgram(),
            qa_examples(0, 12),
            by_judge,
            valset=qa_examples(100, 110),
            lm=lm,
            budget={"n_candidates": 2, "n_trials": 2, "val_size": 10, "minibatch_size": 5},
            seed=1,
        )
        asked = [str((r.body or {}).get("messages")) for r in judge_server.chat_requests]
    steps = [f"full_eval:{index}" for index in range(len(result.full_evals))] + [
        f"trial:{t.number}" for t in result.trials if broken in t.example_ids
    ]
    assert result.failures.keys() == {f"{step}:{broken}" for step in steps}
    assert all(f.n_unscored == 1 and f.n_failed == 0 for f in result.full_evals)
    # Each step asked once, with the client's 2 retries: no check of the LM, no re-run.
    assert sum(f"for {broken}?" in messages for messages in asked) == 3 * len(steps)


async def test_a_check_refused_for_its_token_budget_is_asked_again_with_the_lms_own() -> None:
    # OpenAI's reasoning models refuse max_tokens (they take max_completion_tokens): the check's refusal is
    # not the LM's, and the example the 503 left unscored is re-run and scored.
    refusal = "Unsupported parameter: 'max_tokens' is not supported with this model."

    def script(n: int) -> Fault | None:
        return Fault.http_status(503) if n == 0 else Fault.http_status(400, refusal) if n == 3 else None

    async with FakeOpenAIServer(responder=lambda request: "Answer: ok", api_key=TEST_API_KEY) as server:
        server.script(script)
        async with aprompt.OpenAICompatibleLM(
            model="fake-model",
            base_url=server.base_url,
            api_key=TEST_API_KEY,
            retry=NO_RETRY,
            default_params={"max_completion_tokens": 64},
        ) as lm:
            guard = OutageGuard((lm,), OutagePolicy(tolerance=5.0))
            program = aprompt.Predict("question -> answer")
            batch = [aprompt.Example({"question": f"question {i}?"}, {"answer": "ok"}) for i in range(3)]

            async def run(examples: Sequence[aprompt.Example]) -> Evaluation:
                return await aprompt.evaluate(program, examples, exact_match, lm=lm)

            evaluation = await guard.evaluate(run, batch, "a test step")
    assert evaluation.scores == {e.id: 1.0 for e in batch}
    checks = [(r.body or {}).get("max_tokens") for r in server.chat_requests[3:5]]
    assert checks == [1, None]  # the check, refused, then asked with the client's own budget


@pytest.mark.parametrize("fault", [Fault.event_stream(), Fault.encoded("br")], ids=["sse", "brotli"])
async def test_replies_in_a_form_never_read_stop_the_run_at_once(fault: Fault) -> None:
    # A server (or proxy) that streams or brotli-encodes every reply: waiting cannot change it.
    async with FakeOpenAIServer(responder=lambda request: "Answer: ok", api_key=TEST_API_KEY) as server:
        server.script(lambda n: None if n == 0 else fault)
        async with aprompt.OpenAICompatibleLM(
            model="fake-model", base_url=server.base_url, api_key=TEST_API_KEY, retry=NO_RETRY
        ) as lm:
            guard = OutageGuard((lm,), OutagePolicy(tolerance=30.0))
            program = aprompt.Predict("question -> answer")
            batch = [aprompt.Example({"question": f"question {i}?"}, {"answer": "ok"}) for i in range(3)]

            async def run(examples: Sequence[aprompt.Example]) -> Evaluation:
                return await aprompt.evaluate(program, examples, exact_match, lm=lm)

            started = time.monotonic()
            with pytest.raises(aprompt.EndpointDownError, match="UnreadableResponseError") as stopped:
                await guard.evaluate(run, batch, "a test step")
    assert time.monotonic() - started < 10 and stopped.value.waited < 1
    assert "outage_tolerance" not in str(stopped.value)


async def test_a_refused_tls_certificate_stops_the_run_at_once() -> None:
    # A certificate that expired or was replaced mid-run: waiting out the tolerance cannot change it.
    async with untrusted_tls_server() as (url, _):
        async with aprompt.OpenAICompatibleLM(model="m", base_url=url, api_key=TEST_API_KEY) as lm:
            guard = OutageGuard((lm,), OutagePolicy(tolerance=30.0))
            started = time.monotonic()
            with pytest.raises(aprompt.EndpointDownError, match="TLSCertificateError") as stopped:
                await guard.wait_until_answering("a test step", "TLSCertificateError: refused")
    assert time.monotonic() - started < 10 and stopped.value.waited < 1
    assert "outage_tolerance" not in str(stopped.value)


@pytest.mark.parametrize("tolerance", [-1, math.nan, math.inf, "300", True])
async def test_a_bad_outage_tolerance_is_refused_before_any_call(
    fake_server: FakeOpenAIServer, tolerance: Any
) -> None:
    async with lm_for(fake_server) as lm:
        with pytest.raises(aprompt.ConfigError, match=r"outage_tolerance .*" + re.escape(repr(tolerance))):
            await aprompt.optimize(
                QAProgram(), qa_examples(0, 10), exact_match, lm=lm, outage_tolerance=tolerance
            )
    assert fake_server.chat_requests == []


@pytest.mark.anyio
async def test_a_reply_cut_before_its_answer_is_the_examples_own_failure_without_reruns(
    fake_server: FakeOpenAIServer,
) -> None:
    # The model runs past its budget on one question every time it is asked: the endpoint works, so
    # that example is the prompt's failure (scored 0, its error kept), never re-run as if the LM were down.
    fake_server.responder = lambda request: (
        Fault.truncated("Answer: 9") if "question 3?" in request.last_user else "Answer: ok"
    )
    program = aprompt.Predict("question -> answer", max_tokens=8)
    examples = [aprompt.Example({"question": f"question {i}?"}, {"answer": "ok"}) for i in range(6)]
    async with aprompt.OpenAICompatibleLM(
        model="fake-model", base_url=fake_server.base_url, api_key=TEST_API_KEY
    ) as lm:
        guard = OutageGuard((lm,), OutagePolicy(tolerance=5.0))

        async def run(batch: Sequence[aprompt.Example]) -> Evaluation:
            return await aprompt.evaluate(program, batch, exact_match, lm=lm)

        evaluation = await guard.evaluate(run, examples, "a test step")
    assert evaluation.scores == {e.id: 0.0 if i == 3 else 1.0 for i, e in enumerate(examples)}
    assert (evaluation.results[3].error or "").startswith("TruncatedResponseError: ")
    cut = [r for r in fake_server.chat_requests if r.body and "question 3?" in json.dumps(r.body)]
    assert len(cut) == 2  # the request and its one re-send with a larger budget; no re-run, no check


@pytest.mark.anyio
async def test_a_prompt_whose_demos_overflow_the_context_is_the_examples_own_failure_without_reruns(
    fake_server: FakeOpenAIServer,
) -> None:
    # The candidate's long demo leaves no room for the long questions: the program as optimized fails
    # there, so they score 0 (left unscored, the candidate would be ranked on the short ones alone).
    fake_server.context_tokens = 400
    program = aprompt.Predict("question -> answer")
    examples = [
        aprompt.Example(
            {"question": f"question {i}?" + (" and more" * 100 if i % 2 else "")}, {"answer": "ok"}
        )
        for i in range(6)
    ]
    demo = aprompt.Demo({"question": "a long question " * 60, "answer": "ok"})
    candidate = {"self": PromptOverride("Answer the question.", (demo,))}
    async with aprompt.OpenAICompatibleLM(
        model="fake-model", base_url=fake_server.base_url, api_key=TEST_API_KEY
    ) as lm:
        guard = OutageGuard((lm,), OutagePolicy(tolerance=5.0))

        async def run(batch: Sequence[aprompt.Example], prompts: Any = None) -> Evaluation:
            return await aprompt.evaluate(program, batch, exact_match, lm=lm, prompts=prompts)

        baseline = await guard.evaluate(run, examples, "a test step")
        fake_server.reset_records()
        evaluation = await guard.evaluate(partial(run, prompts=candidate), examples, "a test step")
    assert baseline.mean == 1.0 and baseline.n_unscored == 0, "every question fits the baseline's prompt"
    assert evaluation.scores == {e.id: 0.0 if i % 2 else 1.0 for i, e in enumerate(examples)}
    assert all((evaluation.results[i].error or "").startswith("ContextOverflowError: ") for i in (1, 3, 5))
    assert len(fake_server.chat_requests) == 6  # one each: no re-send, no check, no re-run


@pytest.mark.anyio
async def test_a_single_request_over_the_context_window_is_raised_at_once(
    fake_server: FakeOpenAIServer,
) -> None:
    # A proposal or a summary whose prompt overflows would overflow again: no check, no re-run.
    fake_server.context_tokens = 100
    async with aprompt.OpenAICompatibleLM(
        model="fake-model", base_url=fake_server.base_url, api_key=TEST_API_KEY
    ) as lm:
        guard = OutageGuard((lm,), OutagePolicy(tolerance=5.0))
        with pytest.raises(aprompt.ContextOverflowError):
            await guard.call(lambda: lm.chat([{"role": "user", "content": "apples " * 100}]), "a summary")
    assert len(fake_server.chat_requests) == 1


@pytest.mark.anyio
async def test_a_metric_whose_own_lm_never_answers_stops_the_run_instead_of_scoring_nothing() -> None:
    """The program's LM works, the judge the metric asks is down: no example can be scored, which is no
    result (it used to come back as a run scored 0.0 from start to end, every example unscored)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = int(probe.getsockname()[1])
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
        aprompt.OpenAICompatibleLM(
            "judge", f"http://127.0.0.1:{closed}/v1", api_key=TEST_API_KEY, retry=RetryPolicy(max_retries=0)
        ) as judge,
    ):
        with pytest.raises(aprompt.EndpointDownError, match=r"LMConnectionError") as info:
            await aprompt.optimize(
                TwoStageProgram(),
                examples(0, 40),
                partial(judged, judge),
                valset=examples(200, 230),
                lm=lm,
                budget=SMALL_BUDGET,
                seed=1,
                outage_tolerance=1,
            )
    assert info.value.endpoint == f"http://127.0.0.1:{closed}/v1"


async def judged(judge: aprompt.LM, example: aprompt.Example, prediction: Any) -> bool:
    """The World's metric, asked of ``judge`` (a :class:`Judge`)."""
    asked = f"Same? {prediction.answer} | {example.labels['answer']}"
    return (await judge.chat([{"role": "user", "content": asked}])).text.strip() == "yes"


class Judge:
    """The responder of a judge for :func:`judged` that starts a server outage once it has answered
    ``n_answered`` requests (none without one)."""

    def __init__(self, n_answered: int | None = None, seconds: float = 0.0) -> None:
        self.n_answered, self.seconds = n_answered, seconds
        self.server: FakeOpenAIServer | None = None
        self.answers = 0

    def __call__(self, request: ChatRequest) -> str:
        self.answers += 1
        if self.server is not None and self.answers == self.n_answered:
            self.server.outage(seconds=self.seconds, mode="503")
        if " | " not in request.last_user:
            return "OK"  # the run's check of the judge
        answer, expected = request.last_user.removeprefix("Same? ").split(" | ")
        return "yes" if answer.strip() == expected.strip() else "no"


@asynccontextmanager
async def judged_world(responder: Judge) -> AsyncIterator[Callable[..., Awaitable[aprompt.OptimizeResult]]]:
    """Runs of the world scored by a judge on its own server, answered by ``responder``; the servers
    stay up between runs (a resumed run's judge is the same)."""
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        FakeOpenAIServer(responder=responder, api_key=TEST_API_KEY) as judge_server,
        aprompt.OpenAICompatibleLM(
            "judge", judge_server.base_url, api_key=TEST_API_KEY, retry=FAST_RETRY
        ) as judge,
    ):
        responder.server = judge_server

        async def run(run_dir: Path | None = None, **options: Any) -> aprompt.OptimizeResult:
            async with world_lm(server.base_url, TEST_API_KEY, retry=FAST_RETRY) as lm:
                return await optimize_world(lm, run_dir, scored_by=partial(judged, judge), **options)

        yield run


async def judged_clean_run() -> aprompt.OptimizeResult:
    async with judged_world(Judge()) as run:
        return await run()


async def test_an_outage_of_the_metrics_own_lm_mid_run_ends_with_the_clean_result() -> None:
    """The guard checked only the program's LMs: they answered, so the examples the judge's outage left
    unscored were taken for their own failures, and the run returned trials scored on none of them."""
    clean = await judged_clean_run()
    responder = Judge(400, 2.0)
    async with judged_world(responder) as run:
        result = await run(outage_tolerance=60)
        assert responder.server is not None and responder.server.refused_in_outage > 0
    assert result.usage.errors > 0, "requests failed after their retries: steps lost examples"
    assert summary(result) == summary(clean)
    assert result.failures == {} and clean.failures == {}
    assert all(t.n_unscored == 0 for t in result.trials) and all(f.n_unscored == 0 for f in result.full_evals)


async def test_the_metrics_own_lm_down_past_the_tolerance_stops_the_run_and_a_later_call_resumes_it(
    tmp_path: Path,
) -> None:
    clean = await judged_clean_run()
    run_dir = tmp_path / "run"
    responder = Judge(400, math.inf)
    async with judged_world(responder) as run:
        with pytest.raises(aprompt.EndpointDownError, match="outage_tolerance=1 s") as stopped:
            await run(run_dir, outage_tolerance=1.0)
        assert responder.server is not None
        assert stopped.value.waited >= 1.0 and stopped.value.endpoint == responder.server.base_url
        with RunJournal.open(run_dir) as journal:
            journaled = [payload for _, payload in journal.entries("trial")]
        assert journaled, "trials before the outage were journaled"
        assert all(trial["n_unscored"] == 0 for trial in journaled), "no trial the outage cut short"

        responder.server.end_outage()
        resumed = await run(run_dir, outage_tolerance=1.0)
    assert summary(resumed) == summary(clean)
    assert resumed.failures == {}


async def test_a_judge_made_for_each_judgement_that_failed_once_is_not_taken_for_an_outage() -> None:
    # A judge closed after its one failed call cannot answer a check: that is no outage, and the example
    # is re-run with a judge of its own, as any example failing alone while its LMs work.
    clean = await judged_clean_run()
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        FakeOpenAIServer(responder=Judge(), api_key=TEST_API_KEY) as judge_server,
        world_lm(server.base_url, TEST_API_KEY, retry=FAST_RETRY) as lm,
    ):
        judge_server.script(lambda n: Fault.http_status(503) if n == 20 else None)

        async def by_fresh_judge(example: aprompt.Example, prediction: Any) -> bool:
            async with aprompt.OpenAICompatibleLM(
                "judge", judge_server.base_url, api_key=TEST_API_KEY, retry=NO_RETRY
            ) as judge:
                return await judged(judge, example, prediction)

        result = await optimize_world(lm, None, scored_by=by_fresh_judge, outage_tolerance=60)
    assert summary(result) == summary(clean)
    assert result.failures == {}
    assert len(judge_server.chat_requests) > 20, "the scripted 503 was sent"
