"""The ``aprompt`` command line, end to end: subprocesses against a fake server living in this process.

The fake server answers as the simulated world (:mod:`tests.optimize.world`) from a thread of the test
process; the CLI runs as a real ``python -m aprompt`` child with a program module and JSONL/CSV data written
to a temporary folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

import aprompt
from aprompt._cli import main
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import TwoStageProgram, World, examples

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-cli-test-key"
SIZES = ["--trials", "8", "--candidates", "3", "--val-size", "30", "--minibatch-size", "10", "--seed", "3"]


@contextmanager
def world_server(latency: float = 0.0) -> Iterator[FakeOpenAIServer]:
    """A fake server answering as the simulated world, served from a thread of this process."""
    ready, stop = threading.Event(), threading.Event()
    box: list[FakeOpenAIServer] = []

    async def serve() -> None:
        async with FakeOpenAIServer(responder=World(), api_key=API_KEY, latency=latency) as server:
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


def write_task(folder: Path) -> Path:
    """A program module, JSONL training data and CSV validation data in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cli_world.py").write_text(
        "from tests.optimize.world import TwoStageProgram, metric\n\n"
        "def build():\n    return TwoStageProgram()\n",
        encoding="utf-8",
    )
    with (folder / "train.jsonl").open("w", encoding="utf-8") as f:
        for example in examples(0, 60):
            f.write(json.dumps({**example.inputs, **example.labels}) + "\n")
    with (folder / "val.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows({**e.inputs, **e.labels} for e in examples(200, 230))
    return folder


def optimize_args(base_url: str, run_dir: str = "run") -> list[str]:
    return [
        "optimize",
        "cli_world.py:TwoStageProgram",
        "--train",
        "train.jsonl",
        "--val",
        "val.csv",
        "--metric",
        "cli_world.py:metric",
        "--lm",
        base_url,
        "--model",
        "world",
        "--lm-concurrency",
        "8",
        "--run-dir",
        run_dir,
        *SIZES,
    ]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": API_KEY}


def aprompt_cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aprompt", *args],
        cwd=folder,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, FakeOpenAIServer]]:
    """One finished ``aprompt optimize`` run (folder ``run``) with its server still up."""
    folder = write_task(tmp_path_factory.mktemp("cli"))
    with world_server() as server:
        done = aprompt_cli(folder, *optimize_args(server.base_url))
        assert done.returncode == 0, done.stderr
        yield folder, server


def test_optimize_saves_the_optimized_program_and_the_run(optimized: tuple[Path, FakeOpenAIServer]) -> None:
    folder, _ = optimized
    result = json.loads((folder / "run" / "result.json").read_text())
    assert result["format"] == "aprompt-result" and len(result["trials"]) == 8
    program = aprompt.load(TwoStageProgram(), folder / "run" / "result.json")
    assert aprompt.program_state(program) == result["state"]
    original = json.loads((folder / "run" / "original_program.json").read_text())
    assert original == aprompt.program_state(TwoStageProgram())


def test_a_finished_run_replays_from_its_journal_without_lm_calls(
    optimized: tuple[Path, FakeOpenAIServer],
) -> None:
    folder, server = optimized
    before = len(server.chat_requests)
    done = aprompt_cli(folder, *optimize_args(server.base_url), "--quiet", "--out", "again.json")
    assert done.returncode == 0, done.stderr
    assert len(server.chat_requests) == before
    assert "validation score: baseline" in done.stdout and "plan:" not in done.stdout
    assert (
        json.loads((folder / "again.json").read_text())["state"]
        == json.loads((folder / "run" / "result.json").read_text())["state"]
    )


def test_an_async_agent_function_is_optimized_from_the_command_line(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    (folder / "cli_agent.py").write_text(
        "from aprompt import Predict\n\n"
        'EXTRACT = Predict("question -> code", instruction="Find the code.")\n'
        'ANSWER = Predict("question, code -> answer", instruction="Give the answer.")\n\n'
        "async def agent(question):\n"
        "    found = await EXTRACT(question=question)\n"
        "    return await ANSWER(question=question, code=found.code)\n",
        encoding="utf-8",
    )
    args = optimize_args("", "agent-run")
    args[args.index("cli_world.py:TwoStageProgram")] = "cli_agent.py:agent"
    with world_server() as server:
        args[args.index("--lm") + 1] = server.base_url
        done = aprompt_cli(folder, *args, "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((folder / "agent-run" / "result.json").read_text())
    assert set(result["state"]["predictors"]) == {"EXTRACT", "ANSWER"}
    assert len(result["trials"]) == 8 and result["score"] >= result["baseline_score"]


def test_show_prints_the_trials_and_the_best_prompts(optimized: tuple[Path, FakeOpenAIServer]) -> None:
    folder, _ = optimized
    done = aprompt_cli(folder, "show", "run")
    assert done.returncode == 0, done.stderr
    result = json.loads((folder / "run" / "result.json").read_text())
    assert "state: finished; 8 trials" in done.stdout
    assert "trials (mini-batch scores):" in done.stdout and "full evaluations" in done.stdout
    for name, prompt in result["state"]["predictors"].items():
        assert f"{name}: instruction #" in done.stdout and prompt["instruction"] in done.stdout


def test_report_writes_the_html_page(optimized: tuple[Path, FakeOpenAIServer]) -> None:
    folder, _ = optimized
    done = aprompt_cli(folder, "report", "run", "--out", "out/run.html")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wrote out/run.html"
    page = (folder / "out" / "run.html").read_text(encoding="utf-8")
    assert "aprompt run report" in page and "data:image/png;base64," in page


def test_evaluate_scores_the_loaded_prompts(optimized: tuple[Path, FakeOpenAIServer]) -> None:
    folder, server = optimized
    common = ["--data", "val.csv", "--metric", "cli_world.py:metric", "--lm", server.base_url, "--model", "w"]
    done = aprompt_cli(
        folder, "evaluate", "cli_world.py:build", *common, "--load", "run/result.json", "--json"
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["examples"] == 30 and figures["unscored"] == 0
    result = json.loads((folder / "run" / "result.json").read_text())
    assert figures["score"] == pytest.approx(result["score"])  # the same 30 validation examples


def test_sigint_stops_cleanly_and_the_same_command_resumes_to_the_same_result(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with world_server(latency=0.05) as server:
        args = optimize_args(server.base_url, "interrupted")
        child = subprocess.Popen(
            [sys.executable, "-m", "aprompt", *args],
            cwd=folder,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        for line in child.stdout:  # plain progress lines: stdout is a pipe
            if line.startswith("  trial 1 "):
                break
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 130, stderr
        assert "resume it with:" in stderr and "aprompt optimize cli_world.py:TwoStageProgram" in stderr
        assert "Traceback" not in stderr
        assert not (folder / "interrupted" / "result.json").exists()
        server.latency = 0.0
        resumed = aprompt_cli(folder, *args, "--quiet")
        reference = aprompt_cli(folder, *optimize_args(server.base_url, "reference"), "--quiet")
    assert resumed.returncode == 0 and reference.returncode == 0, resumed.stderr + reference.stderr
    resumed_result = json.loads((folder / "interrupted" / "result.json").read_text())
    reference_result = json.loads((folder / "reference" / "result.json").read_text())
    for key in ("score", "best_choice", "trials", "full_evals", "candidates"):
        if key == "trials":
            strip = [{k: v for k, v in t.items() if k != "seconds"} for t in resumed_result[key]]
            assert strip == [{k: v for k, v in t.items() if k != "seconds"} for t in reference_result[key]]
        else:
            assert resumed_result[key] == reference_result[key], key


def test_a_run_whose_output_reader_went_away_finishes_and_saves_its_result(tmp_path: Path) -> None:
    """`aprompt optimize ... | head -2`: the progress lines go nowhere, the run and its result stay."""
    folder = write_task(tmp_path)
    with world_server() as server:
        for args in (optimize_args(server.base_url), ["show", "run"]):
            child = subprocess.Popen(
                [sys.executable, "-m", "aprompt", *args],
                cwd=folder,
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None
            child.stdout.close()  # before the child has written a line: every write finds no reader
            _, stderr = child.communicate(timeout=120)
            assert child.returncode == 141 and stderr == "", stderr
            result = json.loads((folder / "run" / "result.json").read_text())
            assert len(result["trials"]) == 8


def test_the_resume_hint_after_ctrl_c_shows_urls_without_their_credentials(tmp_path: Path) -> None:
    folder = write_task(tmp_path)
    with world_server(latency=0.05) as server:
        url = server.base_url.replace("://", "://user:sk-url-password@") + "?key=sk-url-query-key"
        child = subprocess.Popen(
            [sys.executable, "-m", "aprompt", *optimize_args(url, "interrupted")],
            cwd=folder,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("  trial 0 "):
                break
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert f"--lm '{server.base_url}?key=***' --model world" in stderr
    assert "sk-url-password" not in stderr and "sk-url-query-key" not in stderr
    assert "put back the credentials" in stderr


def test_python_dash_m_aprompt_teaches_with_examples(tmp_path: Path) -> None:
    done = aprompt_cli(tmp_path, "--help")
    assert done.returncode == 0
    assert "examples:" in done.stdout and "aprompt optimize qa.py:QA" in done.stdout
    assert "exit codes:" in done.stdout
    assert "130 interrupted (Ctrl-C), 143 stopped by SIGTERM" in " ".join(done.stdout.split())


# -- errors and exit codes (in this process: no LM is ever reached) -----------------------------


@pytest.fixture
def task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(write_task(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    return tmp_path


def base_args(lm: str = "http://127.0.0.1:9/v1") -> list[str]:
    return [*optimize_args(lm)[: -len(SIZES)], "--quiet"]


def test_bad_arguments_exit_2_with_usage(task: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", "cli_world.py:TwoStageProgram", "--metric", "cli_world.py:metric"]) == 2
    assert "the following arguments are required: --train" in capsys.readouterr().err
    assert main(["optimise"]) == 2
    assert main([*base_args(), "--budget", "huge"]) == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"--metric": "cli_world.py:no_such_metric"},
            "--metric: cli_world.py has no attribute 'no_such_metric'",
        ),
        ({"--metric": "no_such_module:metric"}, "--metric: cannot import no_such_module"),
        ({"--train": "missing.jsonl"}, "cannot read missing.jsonl"),
        ({"--train": "cli_world.py"}, "unknown data format '.py'"),
        ({"--lm": "ftp://example.org"}, "--lm must be 'local', 'openai', 'anthropic' or an http(s)://"),
        ({"--trials": "0"}, "budget values out of range: n_trials"),
    ],
)
def test_configuration_errors_exit_2_with_one_clear_line(
    task: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str], message: str
) -> None:
    args = base_args()
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("aprompt: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"--lm": "ftp://user:sk-url-password@example.org/v1"}, "not 'ftp://example.org/v1'"),
        ({"--base-url": "example.org/v1?key=sk-url-query-key"}, "not 'example.org/v1'"),
        ({"--proposer-base-url": "example.org/v1?api-key=sk-url-query-key"}, "not 'example.org/v1'"),
    ],
)
def test_a_refused_url_is_shown_without_its_credentials(
    task: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str], shown: str
) -> None:
    args = [arg for arg in base_args() if arg != "--lm" and not arg.startswith("http")]
    for flag, value in change.items():
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("aprompt: error: ") and shown in err
    assert "sk-url" not in err


def test_data_that_lacks_an_input_field_is_named_with_its_line(
    task: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (task / "bad.jsonl").write_text('{"question": "q", "answer": "a"}\n{"answer": "b"}\n')
    args = base_args()
    args[args.index("--train") + 1] = "bad.jsonl"
    assert main(args) == 2
    assert "bad.jsonl, line 2: lacks input field(s) ['question']" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["a_folder", "cli_world.py/optimized.json"])
def test_a_result_path_that_cannot_be_written_exits_2_before_any_lm_call(
    task: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    (task / "a_folder").mkdir()
    # The endpoint is unreachable: reaching it (exit 3) would mean the run started before the check.
    assert main([*base_args("http://127.0.0.1:9/v1"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aprompt: error: cannot write the result to {out}")


def test_a_result_path_gone_by_the_end_of_a_run_keeps_the_result_in_another_file(tmp_path: Path) -> None:
    """Without --run-dir the result is all the run paid for: saved elsewhere, and the error says where."""
    folder = write_task(tmp_path)
    (folder / "out").mkdir()
    (folder / "spoiler.py").write_text(
        "import pathlib, shutil\n"
        "from tests.optimize.world import metric as world_metric\n\n"
        "def metric(example, prediction):\n"
        "    out = pathlib.Path('out')\n"
        "    if out.is_dir():  # the folder of --out becomes a file while the run goes on\n"
        "        shutil.rmtree(out)\n"
        "        out.write_text('')\n"
        "    return world_metric(example, prediction)\n",
        encoding="utf-8",
    )
    with world_server() as server:
        args = [a for a in optimize_args(server.base_url) if a not in ("--run-dir", "run")]
        args[args.index("--metric") + 1] = "spoiler.py:metric"
        done = aprompt_cli(folder, *args, "--quiet", "--out", "out/result.json")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("aprompt: error: cannot write the result to out/result.json: ")
    kept = done.stderr.split("the result is saved in ")[1].strip()
    result = json.loads(Path(folder, kept).read_text())
    assert result["format"] == "aprompt-result" and len(result["trials"]) == 8


def test_a_negative_show_failures_exits_2_before_any_lm_call(
    task: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The endpoint is unreachable: reaching it (exit 3) would mean the evaluation ran before the check.
    common = ["--data", "val.csv", "--metric", "cli_world.py:metric", "--lm", "http://127.0.0.1:9/v1"]
    assert main(["evaluate", "cli_world.py:build", *common, "--model", "w", "--show-failures", "-1"]) == 2
    assert capsys.readouterr().err == "aprompt: error: --show-failures must be 0 or more, not -1\n"


@pytest.mark.parametrize("concurrency", ["0", "-3"])
def test_evaluate_refuses_a_concurrency_below_one_before_any_lm_call(
    task: Path, capsys: pytest.CaptureFixture[str], concurrency: str
) -> None:
    """Not read as 1 in silence: refused, as optimize refuses it."""
    with world_server() as server:
        common = ["--data", "val.csv", "--metric", "cli_world.py:metric", "--lm", server.base_url]
        code = main(["evaluate", "cli_world.py:build", *common, "--model", "w", "--concurrency", concurrency])
        assert code == 2 and server.chat_requests == []
    assert f"concurrency must be a whole number >= 1, got {concurrency}" in capsys.readouterr().err


def test_an_unreachable_endpoint_exits_3(task: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(base_args("http://127.0.0.1:9/v1")) == 3
    err = capsys.readouterr().err
    assert err.startswith("aprompt: LM error: cannot reach the LM endpoint") and "127.0.0.1:9" in err
    assert "Traceback" not in err and API_KEY not in err


def test_debug_shows_the_traceback(task: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*base_args("http://127.0.0.1:9/v1"), "--debug"]) == 3
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_log_lines_name_their_logger_once(capsys: pytest.CaptureFixture[str]) -> None:
    from aprompt._cli.main import _LogLines

    def line(name: str, message: str) -> str:
        return _LogLines().format(logging.LogRecord(name, logging.WARNING, __file__, 1, message, (), None))

    assert (
        line("aprompt._optimize.api", "aprompt: 2 training examples share")
        == "aprompt: 2 training examples share"
    )
    assert line("aprompt.lm._http", "HTTP 429, pausing") == "aprompt.lm._http: HTTP 429, pausing"


def test_show_of_a_folder_without_a_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(tmp_path / "nothing")]) == 2
    assert "holds no run journal" in capsys.readouterr().err


def test_demo_passes_its_arguments_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--trials" in out and "held-out" in out
    assert out.startswith("usage: aprompt demo [-h]")  # the command that was typed
