"""Fault storms: transient faults change nothing in the result; lasting ones show, example by example.

The transient storm is drawn by the fake server (30% 5xx, 5% answers slower than the client's timeout, 2%
invalid JSON, plus bursts of 429 with Retry-After). Lasting faults come from a transport in front of the
fake server that answers 500 to every request it is told to break, however often it is retried.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import aprompt
from aprompt._optimize import search
from aprompt.lm.retry import RetryPolicy
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, Fault
from aprompt.tpe import Suggestion, TPESampler
from tests.optimize.world import World, examples
from tests.run._optimize_worker import run_world, summary

pytestmark = pytest.mark.anyio

API_KEY = "sk-world-faults"
TIMEOUT = 0.25
# Small back-offs, many retries: a storm costs time, not results.
PATIENT = RetryPolicy(max_retries=30, initial_backoff=0.005, max_backoff=0.05, max_retry_after=0.2)
# Effective per-request rates: faults are drawn in order, each only if the ones before were not.
STORM = [
    (Fault.http_status(503), 0.30),
    (Fault.delay(2.5 * TIMEOUT), 0.05 / 0.70),
    (Fault.invalid_json(), 0.02 / (0.70 - 0.05)),
]
BURST_EVERY, BURST = 97, 4


class BurstyWorld:
    """The World's responder that, every ``BURST_EVERY`` answers, queues a burst of 429s."""

    def __init__(self) -> None:
        self.world = World()
        self.server: FakeOpenAIServer | None = None
        self.answers = 0

    def __call__(self, request: ChatRequest) -> str:
        self.answers += 1
        if self.server is not None and self.answers % BURST_EVERY == 0:
            self.server.queue_faults(*[Fault.rate_limited("0.05")] * BURST)
        return self.world(request)


async def test_a_transient_fault_storm_ends_with_the_clean_result() -> None:
    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as clean_server:
        clean = await run_world(clean_server.base_url, None, API_KEY)
    responder = BurstyWorld()
    async with FakeOpenAIServer(responder=responder, api_key=API_KEY, fault_rates=STORM, seed=5) as server:
        responder.server = server
        stormy = await run_world(
            server.base_url,
            None,
            API_KEY,
            lm_options={"retry": PATIENT, "timeout": TIMEOUT, "max_concurrency": 32},
            concurrency=32,
        )
        faults = Counter(r.fault for r in server.chat_requests)
        n_requests = len(server.chat_requests)
    print(f"\nfault storm: {n_requests} requests, faults {dict(faults)}, usage {stormy.usage}")
    assert faults["status:503"] >= 0.25 * n_requests
    assert faults["delay"] >= 0.03 * n_requests and faults["invalid_json"] >= 0.01 * n_requests
    assert faults["status:429"] >= BURST * 3
    assert summary(stormy) == summary(clean)
    assert all(t.n_unscored == 0 for t in stormy.trials)
    assert all(f.n_unscored == 0 for f in stormy.full_evals)
    assert stormy.usage.errors == 0 and stormy.usage.retries >= faults.total() - faults[None]


class BreakingTransport(httpx.AsyncBaseTransport):
    """Forwards to the real server, except requests ``broken`` selects: 500, every time."""

    def __init__(self, broken: Callable[[dict[str, Any]], bool]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.broken = broken
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = json.loads(await request.aread())
            if self.broken(body):
                self.refused += 1
                return httpx.Response(500, json={"error": {"message": "internal error"}})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def asks_about(items: set[int]) -> Callable[[dict[str, Any]], bool]:
    def broken(body: dict[str, Any]) -> bool:
        last = str(body["messages"][-1]["content"])
        return any(f"item-{i}?" in last for i in items)

    return broken


async def _run_through(
    transport: BreakingTransport, run_dir: Path | None, **options: Any
) -> aprompt.OptimizeResult:
    async with (
        FakeOpenAIServer(responder=World(), api_key=API_KEY) as server,
        httpx.AsyncClient(transport=transport) as client,
    ):
        lm_options = {"http_client": client, "retry": RetryPolicy(max_retries=2, initial_backoff=0.001)}
        return await run_world(server.base_url, run_dir, API_KEY, lm_options=lm_options, **options)


async def test_examples_an_endpoint_always_fails_are_counted_unscored_not_dropped(tmp_path: Path) -> None:
    broken_items = {3, 17, 204, 215, 231}  # two training and three validation examples
    transport = BreakingTransport(asks_about(broken_items))
    result = await _run_through(transport, tmp_path / "run")

    broken_val = {e.id for i, e in enumerate(examples(200, 240), start=200) if i in broken_items}
    for full in result.full_evals:
        assert full.n_unscored == len(broken_val) and set(full.scores).isdisjoint(broken_val), full
        assert len(full.scores) == 40 - len(broken_val)
    for trial in result.trials:
        unscored = {eid for eid in trial.example_ids if eid not in trial.scores}
        assert unscored <= broken_val and trial.n_unscored == len(unscored), trial
    assert sum(t.n_unscored for t in result.trials) > 0
    assert transport.refused > 0 and transport.refused * 2 == result.usage.retries * 3  # 1 try + 2 retries
    # Every failing call sent its 3 tries, or shared those of an identical one in flight (the baseline's
    # evaluation and the screen of the original instruction run the same program side by side).
    assert result.usage.errors >= transport.refused // 3
    # The journal keeps the counts: a resumed run reports them too.
    with RunJournal.open(tmp_path / "run") as journal:
        journaled = {int(key): payload for key, payload in journal.entries("trial")}
        full_journaled = journal.records("full_eval")
    assert [journaled[t.number]["n_unscored"] for t in result.trials] == [t.n_unscored for t in result.trials]
    assert all(f["n_unscored"] == len(broken_val) for f in full_journaled)


async def test_trials_left_wholly_unscored_are_told_to_the_tpe_as_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    told: dict[int, float | None] = {}

    class RecordingSampler(TPESampler):
        def tell(self, trial: int | Suggestion, value: float) -> None:
            told[trial if isinstance(trial, int) else trial.number] = value
            super().tell(trial, value)

        def tell_failed(self, trial: int | Suggestion) -> None:
            told[trial if isinstance(trial, int) else trial.number] = None
            super().tell_failed(trial)

    monkeypatch.setattr(search, "TPESampler", RecordingSampler)

    def proposed_answer_instruction(body: dict[str, Any]) -> bool:
        system = str(body["messages"][0]["content"])
        return "- Answer" in system and re.search(r"variant \d+", system) is not None

    result = await _run_through(BreakingTransport(proposed_answer_instruction), None)
    unscored = {t.number for t in result.trials if t.score is None}
    assert unscored, "some trials chose a proposed instruction for 'answer'"
    assert all(t.n_unscored == len(t.example_ids) and not t.scores for t in result.trials if t.score is None)
    assert {n for n, value in told.items() if value is None} == unscored
    assert all(told[t.number] == t.score for t in result.trials if t.score is not None)


def down_after(n_answered: int) -> Callable[[dict[str, Any]], bool]:
    """Requests pass until ``n_answered`` went through, then every one fails (an outage that lasts)."""
    seen = 0

    def broken(body: dict[str, Any]) -> bool:
        nonlocal seen
        seen += 1
        return seen > n_answered

    return broken


@pytest.mark.parametrize("answered_before_outage", [0, 150, 400])
async def test_an_outage_stops_the_run_and_the_resumed_run_ends_with_the_clean_result(
    tmp_path: Path, answered_before_outage: int
) -> None:
    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as clean_server:
        clean = await run_world(clean_server.base_url, None, API_KEY)
    down = BreakingTransport(down_after(answered_before_outage))
    with pytest.raises(aprompt.EndpointDownError, match=r"the LM failed on .* the endpoint looks down"):
        await _run_through(down, tmp_path / "run", outage_tolerance=0)
    assert down.refused > 0
    # Nothing computed while the endpoint was down (empty demo sets, dropped proposals, a score of 0)
    # may stand in for a result: on a working endpoint the resumed run ends where a clean run does.
    resumed = await _run_through(BreakingTransport(lambda body: False), tmp_path / "run")
    assert summary(resumed) == summary(clean)
