"""The conventions a user brings from other tools: the environment variables of OpenAI's and Anthropic's
SDKs, a client per provider on the command line, a proposer model of its own, a spend limit in USD, and one
documented table of every environment variable aprompt reads.

The command line runs as a real ``python -m aprompt`` child against loopback fake servers served from a
thread of this process (or, for refusals that never reach an LM, as ``main(argv)`` in this process).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

import aprompt
from aprompt._cli import main
from aprompt.testing.fake_anthropic import FakeAnthropicServer
from aprompt.testing.fake_openai import FakeOpenAIServer, RecordedRequest
from tests.conftest import TEST_API_KEY
from tests.optimize.world import World, examples

ROOT = Path(__file__).resolve().parents[1]
OPENAI_KEY = "sk-conventions-openai"
ANTHROPIC_KEY = "sk-ant-conventions"
#: A small optimization of the simulated world (tests/optimize/world.py).
SIZES = ["--trials", "6", "--candidates", "3", "--val-size", "20", "--minibatch-size", "8", "--seed", "1"]
#: Every variable this module's children could inherit from the developer's shell and be steered by.
STEERING = (
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "APROMPT_MODEL",
    "APROMPT_LM",
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def served(make: Callable[[], FakeOpenAIServer]) -> Iterator[FakeOpenAIServer]:
    """A fake server (OpenAI's or Anthropic's) served from a thread of this process."""
    ready, stop = threading.Event(), threading.Event()
    box: list[FakeOpenAIServer] = []

    async def serve() -> None:
        async with make() as server:
            box.append(server)
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield box[0]
    finally:
        stop.set()
        thread.join(10)


def answer_42(request: object) -> str:
    return "Answer: 42"


def write_task(folder: Path) -> Path:
    """A one-predictor program, four examples of which two expect the fake's answer, and the world's task."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qa.py").write_text(
        "import aprompt\n\n"
        "class QA:\n"
        "    def __init__(self):\n"
        '        self.answer = aprompt.Predict("question -> answer")\n\n'
        "    async def __call__(self, question):\n"
        "        return await self.answer(question=question)\n\n"
        "def exact(example, prediction):\n"
        '    return prediction.answer == example.labels["answer"]\n',
        encoding="utf-8",
    )
    rows = [("six times seven?", "42"), ("two plus two?", "4"), ("forty-two?", "42"), ("one?", "1")]
    (folder / "qa.jsonl").write_text(
        "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows), encoding="utf-8"
    )
    (folder / "world.py").write_text("from tests.optimize.world import TwoStageProgram, metric\n")
    with (folder / "train.jsonl").open("w", encoding="utf-8") as f:
        for example in examples(0, 40):
            f.write(json.dumps({**example.inputs, **example.labels}) + "\n")
    return folder


def aprompt_cli(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m aprompt ARGS`` in ``folder``, with only ``env`` of the variables in STEERING."""
    child_env = {k: v for k, v in os.environ.items() if k not in STEERING and not k.startswith("APROMPT_")}
    child_env["PYTHONPATH"] = os.pathsep.join([str(Path(aprompt.__file__).parents[1]), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "aprompt", *args],
        cwd=folder,
        env={**child_env, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


EVALUATE = ["evaluate", "qa.py:QA", "--data", "qa.jsonl", "--metric", "qa.py:exact", "--json"]


def optimize_args(*more: str) -> list[str]:
    return [
        "optimize",
        "world.py:TwoStageProgram",
        "--train",
        "train.jsonl",
        "--metric",
        "world.py:metric",
        "--quiet",
        *SIZES,
        *more,
    ]


def is_program_request(request: RecordedRequest) -> bool:
    """A request of the program's two predictors, whose input is the question (the proposer's predictors,
    which summarize the data and the program and propose instructions, take other inputs)."""
    assert request.body is not None
    return "\nInput fields:\n- Question\n" in str(request.body["messages"][0]["content"])


# -- the providers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url_from", ["--base-url", "ANTHROPIC_BASE_URL"])
def test_lm_anthropic_sends_messages_api_requests_with_the_anthropic_key(
    tmp_path: Path, base_url_from: str
) -> None:
    folder = write_task(tmp_path)
    with served(lambda: FakeAnthropicServer(responder=answer_42, api_key=ANTHROPIC_KEY)) as server:
        flag = ["--base-url", server.base_url] if base_url_from == "--base-url" else []
        env = {"ANTHROPIC_BASE_URL": server.base_url} if base_url_from == "ANTHROPIC_BASE_URL" else {}
        done = aprompt_cli(
            folder,
            *EVALUATE,
            "--lm",
            "anthropic",
            *flag,
            "--model",
            "fake-claude",
            ANTHROPIC_API_KEY=ANTHROPIC_KEY,
            **env,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["score"] == 0.5
    assert len(server.chat_requests) == 4
    assert {r.body["model"] for r in server.chat_requests if r.body} == {"fake-claude"}


def test_openai_base_url_and_aprompt_model_choose_the_endpoint_without_flags(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with served(lambda: FakeOpenAIServer(responder=answer_42, api_key=OPENAI_KEY)) as server:
        done = aprompt_cli(
            folder,
            *EVALUATE,
            OPENAI_BASE_URL=server.base_url,
            OPENAI_API_KEY=OPENAI_KEY,
            APROMPT_MODEL="env-model",
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["score"] == 0.5
    assert {r.body["model"] for r in server.chat_requests if r.body} == {"env-model"}


def test_a_model_flag_alone_targets_the_openai_compatible_endpoint(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with served(lambda: FakeOpenAIServer(responder=answer_42)) as server:
        done = aprompt_cli(folder, *EVALUATE, "--model", "flag-model", OPENAI_BASE_URL=server.base_url)
    assert done.returncode == 0, done.stderr
    assert {r.body["model"] for r in server.chat_requests if r.body} == {"flag-model"}


@pytest.mark.anyio
async def test_openai_client_takes_its_base_url_from_openai_base_url_when_given_none(
    fake_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    async with FakeOpenAIServer(api_key=TEST_API_KEY) as other:
        async with aprompt.OpenAICompatibleLM("env-routed") as lm:
            completion = await lm.chat([{"role": "user", "content": "Hi"}])
        async with aprompt.OpenAICompatibleLM("explicit", other.base_url) as lm:
            await lm.chat([{"role": "user", "content": "Hi"}])
    assert completion.text == "Answer: ok"
    assert [r.body["model"] for r in fake_server.chat_requests if r.body] == ["env-routed"]
    assert [r.body["model"] for r in other.chat_requests if r.body] == ["explicit"]


def test_an_old_variable_name_still_set_draws_a_warning_naming_the_new_one(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with served(lambda: FakeOpenAIServer(responder=answer_42)) as server:
        done = aprompt_cli(
            folder, *EVALUATE, "--lm", server.base_url, "--model", "m", APROMPT_LM="http://old.example/v1"
        )
    assert done.returncode == 0, done.stderr
    assert "$APROMPT_LM is no longer read: use $OPENAI_BASE_URL" in done.stderr
    assert len(server.chat_requests) == 4  # the old variable steered nothing


# -- the proposer ------------------------------------------------------------------------------------------


def test_proposer_model_writes_every_proposal_and_no_program_call(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with served(lambda: FakeOpenAIServer(responder=World())) as server:
        done = aprompt_cli(
            folder,
            *optimize_args("--lm", server.base_url, "--model", "task-model", "--proposer-model", "big-model"),
        )
    assert done.returncode == 0, done.stderr
    by_model: dict[str, list[RecordedRequest]] = {}
    for request in server.chat_requests:
        assert request.body is not None
        by_model.setdefault(request.body["model"], []).append(request)
    assert set(by_model) == {"task-model", "big-model"}
    assert all(is_program_request(r) for r in by_model["task-model"])
    assert not any(is_program_request(r) for r in by_model["big-model"])
    assert any("You write instructions" in str(r.body) for r in by_model["big-model"])


def test_proposer_lm_url_sends_the_proposals_to_their_own_endpoint(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with (
        served(lambda: FakeOpenAIServer(responder=World())) as task,
        served(lambda: FakeOpenAIServer(responder=World())) as proposer,
    ):
        done = aprompt_cli(
            folder,
            *optimize_args(
                "--lm", task.base_url, "--model", "task-model", "--proposer-lm", proposer.base_url
            ),
        )
    assert done.returncode == 0, done.stderr
    assert task.chat_requests and all(is_program_request(r) for r in task.chat_requests)
    assert proposer.chat_requests and not any(is_program_request(r) for r in proposer.chat_requests)
    # The proposer's client keeps the task's model when only its endpoint is given.
    assert {r.body["model"] for r in proposer.chat_requests if r.body} == {"task-model"}


class Terminal(io.StringIO):
    """Standard output as a terminal: the command draws its live panel there."""

    def isatty(self) -> bool:
        return True


def test_the_live_panel_counts_the_calls_of_the_proposer_model_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    monkeypatch.chdir(write_task(tmp_path))
    for name in STEERING:
        monkeypatch.delenv(name, raising=False)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with served(lambda: FakeOpenAIServer(responder=World())) as server:
        args = optimize_args("--lm", server.base_url, "--model", "task-model", "--proposer-model", "big")
        assert main([arg for arg in args if arg != "--quiet"]) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    spent = re.search(r"^usage: ([\d,]+) LM calls sent", text, re.MULTILINE)
    assert spent is not None, text[-2000:]
    # The frames drawn while the run went on, the last one after every call was answered.
    live = re.findall(r"LM calls\s+([\d,]+)", text[: text.index("finished in")])
    assert live and max(int(n.replace(",", "")) for n in live) == int(spent[1].replace(",", ""))


# -- the spend limit ---------------------------------------------------------------------------------------


def test_max_cost_stops_the_run_once_the_priced_tokens_reach_it(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with served(lambda: FakeOpenAIServer(responder=World())) as server:
        free = aprompt_cli(
            folder, *optimize_args("--lm", server.base_url, "--model", "m", "--out", "free.json")
        )
        # USD 1 per thousand tokens: the whole run reads about 16,000 tokens (USD 16), far above USD 3.
        limited = aprompt_cli(
            folder,
            *optimize_args("--lm", server.base_url, "--model", "m", "--out", "limited.json"),
            "--max-cost",
            "3",
            "--price",
            "m=1000,1000",
        )
    assert free.returncode == 0 and limited.returncode == 0, free.stderr + limited.stderr
    unlimited = json.loads((folder / "free.json").read_text())
    stopped = json.loads((folder / "limited.json").read_text())
    assert unlimited["stopped_by"] is None and stopped["stopped_by"] == "max_cost"
    assert "(stopped by max_cost)" in limited.stdout
    assert stopped["spent"]["cost"] == pytest.approx(stopped["spent"]["tokens"] * 1000 / 1e6)
    assert 3 <= stopped["spent"]["cost"] and stopped["spent"]["tokens"] < unlimited["spent"]["tokens"] / 2


def test_max_cost_without_the_models_price_exits_2_naming_the_price_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(write_task(tmp_path))
    args = optimize_args("--lm", "http://127.0.0.1:9/v1", "--model", "gpt-x", "--max-cost", "2")
    assert main([*args, "--price", "other=1,2"]) == 2
    err = capsys.readouterr().err
    assert "--max-cost needs the price of model 'gpt-x': give --price gpt-x=IN,OUT" in err


def test_a_model_given_two_different_prices_exits_2_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(write_task(tmp_path))
    args = optimize_args("--lm", "http://127.0.0.1:9/v1", "--model", "gpt-x", "--max-cost", "2")
    assert main([*args, "--price", "gpt-x=1000,1000", "--price", "gpt-x=0,0"]) == 2
    assert (
        "--price gives model 'gpt-x' two prices (1000,1000 and 0,0): give it once" in capsys.readouterr().err
    )


@pytest.mark.parametrize("price", ["gpt-x=1", "gpt-x", "=1,2", "gpt-x=a,b", "gpt-x=-1,2", "gpt-x=1,inf"])
def test_a_price_not_of_the_shape_model_in_out_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], price: str
) -> None:
    monkeypatch.chdir(write_task(tmp_path))
    args = optimize_args("--lm", "http://127.0.0.1:9/v1", "--model", "gpt-x", "--max-cost", "2")
    assert main([*args, "--price", price]) == 2
    assert f"argument --price: {price!r}" in capsys.readouterr().err


# -- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--lm", "ftp://example.org"],
            "--lm must be 'local', 'openai', 'anthropic' or an http(s):// base URL",
        ),
        (["--lm", "anthropic"], "--model is required with --lm anthropic (or set $APROMPT_MODEL)"),
        (["--lm", "local", "--model", "gpt-x"], "--model 'gpt-x' names a server model, but --lm local"),
        (
            ["--lm", "local", "--base-url", "http://h/v1"],
            "--lm local runs the embedded model: it takes no base",
        ),
        (
            ["--lm", "http://h/v1", "--base-url", "http://g/v1"],
            "is already a base URL; give it or the base URL",
        ),
        (["--lm", "openai", "--base-url", "h:8000"], "the base URL must be an http(s):// URL, not 'h:8000'"),
        (
            ["--proposer-lm", "local", "--proposer-model", "gpt-x"],
            "--proposer-model 'gpt-x' names a server model, but --proposer-lm local",
        ),
    ],
)
def test_an_lm_choice_that_names_no_client_exits_2_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(write_task(tmp_path))
    for name in STEERING:
        monkeypatch.delenv(name, raising=False)
    assert main(optimize_args(*args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("aprompt: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_an_lm_url_given_twice_is_named_without_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(write_task(tmp_path))
    url = "https://user:sk-url-password@h.example/v1?key=sk-url-query-key"
    assert main(optimize_args("--lm", url, "--base-url", "http://g/v1")) == 2
    err = capsys.readouterr().err
    assert "'https://h.example/v1?key=***' is already a base URL" in err
    assert "sk-url-password" not in err and "sk-url-query-key" not in err


# -- one table of every environment variable -----------------------------------------------------------------

ENVIRONMENT_PAGE = ROOT / "docs" / "environment.md"
#: Where aprompt, its docs, examples and scripts live (tests and benchmarks read variables of their own).
SCANNED = [
    *sorted((ROOT / "aprompt").rglob("*.py")),
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "docs").rglob("*.py")),
    *sorted((ROOT / "scripts").glob("*")),
    ROOT / "README.md",
]
_READ_CALL = re.compile(
    r"""(?:environ(?:\.get|\.setdefault|\.pop)?\s*[(\[]|getenv\s*\(|setenv\s*\()\s*["']([A-Za-z_]\w*)["']"""
)
_PREFIXED = re.compile(r"\b((?:APROMPT|OPENAI|ANTHROPIC)_[A-Z0-9_]+)\b")
_ENV_CONSTANT = re.compile(r"""\b\w*(?:ENV|env)\w*\s*(?::[^=\n]+)?=\s*["']([A-Z][A-Z0-9_]+)["']""")
_PY_CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]+)\s*(?::[^=\n]+)?=", re.MULTILINE)
_SHELL_DEFAULTED = re.compile(r"\$\{([A-Za-z_]\w*):?[-=]")
_SHELL_READ = re.compile(r"\$\{?([A-Za-z_]\w*)")
_SHELL_ASSIGNED = re.compile(r"^\s*(?:export\s+|local\s+)?([A-Za-z_]\w*)=", re.MULTILINE)


def _names_in(path: Path) -> set[str]:
    """The environment variable names ``path`` reads or names."""
    text = path.read_text(encoding="utf-8")
    names = set(_READ_CALL.findall(text))
    constants: set[str] = set()
    if path.suffix == ".py":  # (the docs' api_key_env="MY_KEY_VAR" names a variable of the reader's)
        names |= set(_ENV_CONSTANT.findall(text))
        constants = set(_PY_CONSTANT.findall(text))
    names |= set(_PREFIXED.findall(text)) - constants  # e.g. ANTHROPIC_VERSION is a Python constant
    if path.suffix == ".sh":
        assigned = set(_SHELL_ASSIGNED.findall(text))
        names |= set(_SHELL_DEFAULTED.findall(text))
        names |= {name for name in _SHELL_READ.findall(text) if name not in assigned}
    return names


def _table(section: str) -> set[str]:
    """The first-column names of the table under ``## section`` of the environment page."""
    text = ENVIRONMENT_PAGE.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z_]\w*)` \|", body, re.MULTILINE))


def test_every_environment_variable_aprompt_reads_is_in_the_environment_table() -> None:
    documented = _table("Variables aprompt reads") | _table("Names no longer read")
    undocumented = {
        str(path.relative_to(ROOT)): sorted(_names_in(path) - documented)
        for path in SCANNED
        if _names_in(path) - documented
    }
    assert undocumented == {}


def test_every_variable_in_the_environment_table_is_read_by_code() -> None:
    read = set().union(*(_names_in(path) for path in SCANNED if path.suffix in (".py", ".sh")))
    assert _table("Variables aprompt reads") - read == set()


def test_names_no_longer_read_appear_only_in_their_warning_and_the_environment_page() -> None:
    old = _table("Names no longer read")
    assert old == {"APROMPT_LM", "APROMPT_BASE_URL"}
    allowed = {ENVIRONMENT_PAGE, ROOT / "aprompt" / "_cli" / "lms.py"}
    still_used = {str(p.relative_to(ROOT)) for p in SCANNED if p not in allowed and _names_in(p) & old}
    assert still_used == set()


def test_a_refused_anthropic_key_points_at_anthropic_api_key(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with served(lambda: FakeAnthropicServer(responder=answer_42, api_key=ANTHROPIC_KEY)) as server:
        done = aprompt_cli(
            folder,
            *optimize_args(),
            "--lm",
            "anthropic",
            "--base-url",
            server.base_url,
            "--model",
            "fake-claude",
            ANTHROPIC_API_KEY="sk-ant-not-the-right-one",
        )
    assert done.returncode == 3, done.stderr
    assert "$ANTHROPIC_API_KEY" in done.stderr and "OPENAI_API_KEY" not in done.stderr
    assert "sk-ant-not-the-right-one" not in done.stderr


def test_a_refused_key_in_evaluate_points_at_its_variable(tmp_path: Path) -> None:
    """The endpoint probe need not check the key: the refusals come back on every example, and the
    warning must say where the key was read from, as optimize's error does."""
    folder = write_task(tmp_path)
    with served(lambda: FakeOpenAIServer(responder=answer_42, api_key=OPENAI_KEY)) as server:
        done = aprompt_cli(
            folder, *EVALUATE, "--lm", server.base_url, "--model", "m", OPENAI_API_KEY="sk-not-the-right-one"
        )
    assert done.returncode == 3, done.stderr
    assert "examples unscored; first error: AuthenticationError" in done.stderr
    assert "(check the API key in $OPENAI_API_KEY, or name its variable with --api-key-env)" in done.stderr
    assert "sk-not-the-right-one" not in done.stderr


def test_a_refused_proposer_key_points_at_its_own_variable_beside_api_key_env(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with (
        served(lambda: FakeOpenAIServer(responder=answer_42, api_key=OPENAI_KEY)) as task,
        served(lambda: FakeAnthropicServer(responder=answer_42, api_key=ANTHROPIC_KEY)) as proposer,
    ):
        done = aprompt_cli(
            folder,
            *optimize_args("--lm", task.base_url, "--model", "m", "--api-key-env", "MY_OPENAI_KEY"),
            *("--proposer-lm", "anthropic", "--proposer-base-url", proposer.base_url),
            *("--proposer-model", "fake-claude"),
            MY_OPENAI_KEY=OPENAI_KEY,
            ANTHROPIC_API_KEY="sk-ant-not-the-right-one",
        )
    assert done.returncode == 3, done.stderr
    assert "(check the API key in $MY_OPENAI_KEY or $ANTHROPIC_API_KEY," in done.stderr
    assert "sk-ant-not-the-right-one" not in done.stderr


@pytest.mark.parametrize(
    ("flag", "message"), [("--lm-concurrency", "max_concurrency"), ("--rpm", "rate limit")]
)
def test_a_zero_concurrency_or_rate_limit_exits_2_rather_than_lifting_the_limit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    message: str,
) -> None:
    monkeypatch.chdir(write_task(tmp_path))
    assert main(optimize_args("--lm", "http://127.0.0.1:9/v1", "--model", "gpt-x", flag, "0")) == 2
    err = capsys.readouterr().err
    assert err.startswith("aprompt: error: ") and message in err


@pytest.mark.parametrize("lm", [["--lm", "local"], []])
def test_a_rate_limit_for_the_embedded_model_exits_2_rather_than_being_dropped(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    lm: list[str],
) -> None:
    """The embedded server takes no rate limit: --rpm was dropped in silence and the run went on."""
    monkeypatch.chdir(write_task(tmp_path))
    for name in ("OPENAI_BASE_URL", "APROMPT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert main(optimize_args(*lm, "--rpm", "60")) == 2
    err = capsys.readouterr().err
    assert err.startswith("aprompt: error: --rpm limits a server endpoint's requests"), err


@pytest.mark.local_model
def test_a_timeout_given_for_the_embedded_model_holds_rather_than_being_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--timeout was dropped in silence for the embedded model: its client waited 600 s a request."""
    monkeypatch.chdir(write_task(tmp_path))
    for name in ("OPENAI_BASE_URL", "APROMPT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    args = ["evaluate", "qa.py:QA", "--data", "qa.jsonl", "--metric", "qa.py:exact", "--lm", "local"]
    assert main([*args, "--timeout", "0.001", "--json"]) == 3
    out, err = capsys.readouterr()
    assert json.loads(out)["unscored"] == 4
    assert "no complete response within the 0.001 s timeout" in err
