"""The runnable examples in ``docs/examples/``, run against a loopback fake OpenAI-compatible server.

Each example is imported by path (``docs/`` is not a package), afresh for every test so that module
globals never carry over, and its ``main`` is called in-process with a client of the fake server; a last
test runs every example as a script, the way a user would, with ``OPENAI_BASE_URL`` pointing at it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

import aprompt
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.anyio
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
REPLY_FORMAT = "Reply in exactly this format, each field on its own line, in this order:\n"
#: Tiny runs: 3 candidates per predictor, 4 trials on mini-batches of 5 of the 15 validation examples.
TINY_BUDGET = {"n_candidates": 3, "n_trials": 4, "minibatch_size": 5, "full_eval_every": 2}
TICKETS = {
    "Please refund the duplicate charge on my invoice.": "billing",
    "Error 500 and a crash every time I upload a photo.": "bug",
    "I cannot log in after resetting my password.": "account",
    "Why was my card charged for a plan I cancelled?": "billing",
    "The export button throws an error in Firefox.": "bug",
    "Please delete my account and my profile data.": "account",
}
ROUTING_INSTRUCTION = "Route precisely: charges and refunds to billing, errors and crashes to bug."


class ExampleWorld:
    """Answers every prompt the examples send, in the ``Label: value`` reply format the adapter reads.

    A task predictor answers right when its prompt shows demos or an instruction saying "precisely" (which
    every proposed instruction does); otherwise only when its input's checksum is even. So the unoptimized
    programs score about half and any optimized choice scores 1.0: optimizing has something to find.
    """

    def __init__(self) -> None:
        self.proposals = 0

    def __call__(self, request: ChatRequest) -> str:
        system = str(request.messages[0]["content"])
        labels = re.findall(r"^(.+?): <", system.split(REPLY_FORMAT)[-1], re.MULTILINE)
        skilled = "precisely" in system or any(m["role"] == "assistant" for m in request.messages)
        right = skilled or zlib.crc32(request.last_user.encode()) % 2 == 0
        return "\n".join(f"{label}: {self.value(label, request.last_user, right)}" for label in labels)

    def value(self, label: str, query: str, right: bool) -> str:
        if label == "Proposed Instruction":
            self.proposals += 1
            return f"Read the input carefully and answer precisely (take {self.proposals})."
        if label == "Team":
            team = route(query)
            return team if right else "account" if team != "account" else "billing"
        if label == "Sentiment":
            good = re.search(r"\b(love|great|excellent)\b", query, re.IGNORECASE) is not None
            return "positive" if good == right else "negative"
        if label == "Answer" and (found := re.search(r"(\d+) \+ (\d+)", query)):
            return str(int(found[1]) + int(found[2]) + (0 if right else 1))
        if label == "Days" and (found := re.search(r"(\d+) weeks", query)):
            return str(7 * int(found[1]) + (0 if right else 1))
        return "Work it out from the inputs, one short step at a time."


def route(ticket: str) -> str:
    text = ticket.lower()
    if any(word in text for word in ("charge", "refund", "invoice")):
        return "billing"
    return "bug" if any(word in text for word in ("error", "crash")) else "account"


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh import of ``docs/examples/<name>.py``, registered so that ``inspect`` finds its source."""
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(responder=ExampleWorld(), api_key=TEST_API_KEY) as fake:
        yield fake


@pytest.fixture
async def lm(server: FakeOpenAIServer) -> AsyncIterator[aprompt.OpenAICompatibleLM]:
    async with aprompt.OpenAICompatibleLM("fake-model", server.base_url, api_key=TEST_API_KEY) as client:
        yield client


def system_prompts(server: FakeOpenAIServer) -> list[str]:
    return [str(r.body["messages"][0]["content"]) for r in server.chat_requests if r.body is not None]


def saved_router_prompts(app_module: ModuleType, path: Path) -> Path:
    """Prompts as an optimization would have saved them: a better instruction and one demo."""
    router = app_module.TicketRouter()
    router.route.instruction = ROUTING_INSTRUCTION
    router.route.demos = [{"ticket": "My invoice shows the wrong amount.", "team": "billing"}]
    aprompt.save_state(router, path)
    return path


# -- fastapi_style_app.py -----------------------------------------------------------------------------------
@both_backends
async def test_app_answers_concurrent_requests_with_the_saved_prompts(
    server: FakeOpenAIServer, lm: aprompt.LM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_module = load_example("fastapi_style_app", monkeypatch)
    prompts = saved_router_prompts(app_module, tmp_path / "router.json")
    server.latency = 0.01  # long enough for the requests to overlap at the server
    tickets = [*TICKETS] * 8
    answers = await app_module.main(lm, prompts, tickets)
    assert answers == [{"team": TICKETS[ticket]} for ticket in tickets]
    assert len(server.chat_requests) == len(tickets)
    assert server.max_in_flight > 1, "requests were served concurrently through the one shared client"
    assert all(s.startswith(ROUTING_INSTRUCTION) for s in system_prompts(server))


async def test_app_answers_bad_requests_with_json_errors(
    server: FakeOpenAIServer, lm: aprompt.LM, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_module = load_example("fastapi_style_app", monkeypatch)
    transport = httpx.ASGITransport(app=app_module.RouterApp(lm))
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        wrong_path = await client.post("/route", json={"ticket": "hi"})
        wrong_body = await client.post("/classify", content=b"not json")
        wrong_method = await client.get("/classify")
    assert (wrong_path.status_code, wrong_body.status_code, wrong_method.status_code) == (404, 400, 404)
    assert "error" in wrong_body.json()
    assert server.chat_requests == []


async def test_app_opens_its_lm_at_lifespan_startup_and_closes_it_at_shutdown(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    app = load_example("fastapi_style_app", monkeypatch).create_app()
    to_app, app_receives = anyio.create_memory_object_stream[dict[str, Any]](4)
    app_sends, from_app = anyio.create_memory_object_stream[dict[str, Any]](4)
    async with anyio.create_task_group() as group:
        group.start_soon(app, {"type": "lifespan"}, app_receives.receive, app_sends.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            response = await client.post("/classify", json={"ticket": "Error 500 when I log in"})
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"
    assert response.status_code == 200 and response.json()["team"] in ("billing", "bug", "account")
    assert len(server.chat_requests) == 1
    with pytest.raises(aprompt.LMError):
        await app.lm.chat([{"role": "user", "content": "closed?"}])


# -- agent_function.py --------------------------------------------------------------------------------------
@both_backends
async def test_agent_function_is_optimized_in_place_saved_and_reloadable(
    server: FakeOpenAIServer,
    lm: aprompt.LM,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    agent = load_example("agent_function", monkeypatch)
    original = aprompt.program_state(agent.answer)
    assert [name for name, _ in aprompt.named_predictors(agent.answer)] == ["PLAN", "RESPOND"]
    result = await agent.main(lm, tmp_path / "agent.json", budget=TINY_BUDGET)
    assert result.baseline_score < 1.0 and result.score == 1.0
    assert len(result.trials) == 4
    assert result.program is agent.answer, "in place"
    assert aprompt.program_state(agent.answer) != original
    # After the run, main calls the plain function once (two LM calls): it now sends the optimized prompt.
    assert result.usage.requests == len(server.chat_requests) - 2
    assert system_prompts(server)[-1].startswith(agent.RESPOND.instruction)
    assert "What is 19 + 23? -> 42" in capsys.readouterr().out
    restarted = load_example("agent_function", monkeypatch)
    aprompt.load(restarted.answer, tmp_path / "agent.json")
    assert aprompt.program_state(restarted.answer) == aprompt.program_state(result.program)


async def test_the_agent_function_without_in_place_is_refused_before_any_call(
    server: FakeOpenAIServer, lm: aprompt.LM, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = load_example("agent_function", monkeypatch)
    with pytest.raises(aprompt.ConfigError, match="pass in_place=True"):
        await aprompt.optimize(agent.answer, agent.TRAINSET, agent.exact_answer, lm=lm, budget=TINY_BUDGET)
    assert server.chat_requests == []


# -- inside_running_loop.py ---------------------------------------------------------------------------------
async def test_optimization_runs_as_a_task_beside_the_apps_own_tasks(
    server: FakeOpenAIServer,
    lm: aprompt.LM,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    loop_app = load_example("inside_running_loop", monkeypatch)
    server.latency = 0.002
    report = await loop_app.main(lm, budget=TINY_BUDGET, period=0.002)
    assert report.result.baseline_score < 1.0 and report.result.score == 1.0
    assert report.beats_during_run >= 5, "the heartbeat kept beating while the run awaited the LM"
    assert report.result.usage.requests == len(server.chat_requests)
    assert "running event loop" in report.refusal and "await aprompt.optimize" in report.refusal
    assert f"optimize_sync refused, as it should here: {report.refusal}" in capsys.readouterr().out


# -- trio_app.py --------------------------------------------------------------------------------------------
@both_backends
async def test_trio_example_optimizes_and_saves_under_either_backend(
    server: FakeOpenAIServer, lm: aprompt.LM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weeks = load_example("trio_app", monkeypatch)
    result = await weeks.main(lm, tmp_path / "weeks.json", budget=TINY_BUDGET)
    assert result.baseline_score < 1.0 and result.score == 1.0
    assert result.usage.requests == len(server.chat_requests)
    saved = json.loads((tmp_path / "weeks.json").read_text())
    assert saved["score"] == result.score and len(saved["trials"]) == 4
    reloaded = aprompt.load(weeks.WeeksToDays(), tmp_path / "weeks.json")
    assert aprompt.program_state(reloaded) == aprompt.program_state(result.program)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_app_stops_cleanly_at_its_time_limit(
    server: FakeOpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    server.latency = 0.5
    await load_example("trio_app", monkeypatch).run(str(tmp_path / "weeks.json"), limit=0.2)
    assert "stopped after 0.2 s; nothing was saved" in capsys.readouterr().out
    assert not (tmp_path / "weeks.json").exists()


# -- own_executor.py ----------------------------------------------------------------------------------------
@both_backends
async def test_own_executor_runs_every_program_run_and_gives_the_in_process_result(
    server: FakeOpenAIServer,
    lm: aprompt.LM,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = load_example("own_executor", monkeypatch)
    result, runs = await example.main(lm, budget=TINY_BUDGET)
    assert result.baseline_score < 1.0 and result.score == 1.0
    assert runs > len(example.TRAINSET)  # bootstrap, trials and full evaluations all went through it
    assert "same as in-process: True" in capsys.readouterr().out


# -- every example as a script ------------------------------------------------------------------------------
#: Per example: its command-line arguments, lines its output must hold, and the result files it must save.
SCRIPTS = {
    "fastapi_style_app": (["router.json"], [f"{team:>8}  " for team in ("billing", "bug", "account")], []),
    "agent_function": (
        ["agent.json"],
        ["-> 1.00; saved to agent.json", "What is 19 + 23? -> 42"],
        ["agent.json"],
    ),
    "inside_running_loop": (
        [],
        ["optimize_sync refused, as it should here", "-> 1.00 in", "heartbeat beat"],
        [],
    ),
    "trio_app": (["weeks.json"], ["-> 1.00; saved to weeks.json"], ["weeks.json"]),
    "own_executor": ([], ["program runs through FreshCopyExecutor", "-> 1.00; same as in-process: True"], []),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
async def test_each_example_runs_as_a_script_against_the_environments_endpoint(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    args, expected, saved = SCRIPTS[name]
    saved_router_prompts(load_example("fastapi_style_app", monkeypatch), tmp_path / "router.json")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OPENAI_BASE_URL": server.base_url,
        "APROMPT_MODEL": "fake-model",
        "OPENAI_API_KEY": TEST_API_KEY,
    }
    done = await anyio.run_process(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args], cwd=tmp_path, env=env, check=False
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert all(line in out for line in expected), out
    assert {r.body["model"] for r in server.chat_requests if r.body} == {"fake-model"}
    for file in saved:
        assert json.loads((tmp_path / file).read_text())["format"] == "aprompt-result"
