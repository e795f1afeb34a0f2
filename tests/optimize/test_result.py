"""What a run returns: saving and loading the optimized prompts, usage by phase, wall times."""

from __future__ import annotations

import copy
import datetime
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import attrs
import pytest

import aprompt
from aprompt import OptimizeResult, Predict
from aprompt.testing.fake_openai import RecordedRequest
from tests.optimize.qa_task import WORLD_PHASES, optimize_in_world
from tests.optimize.world import TwoStageProgram

Run = tuple[OptimizeResult, list[RecordedRequest]]


@pytest.fixture(scope="module")
def run() -> Run:
    """One small optimization shared by this module's tests (they only read it)."""
    return anyio.run(optimize_in_world)


def prompts_of(program: object) -> dict[str, tuple[str, list[dict[str, object]]]]:
    return {
        name: (predictor.instruction, [d.to_dict() for d in predictor.demos])
        for name, predictor in aprompt.named_predictors(program)
    }


def test_a_saved_result_loads_into_a_fresh_program_exactly(run: Run, tmp_path: Path) -> None:
    result, _ = run
    assert any(demos for _, demos in prompts_of(result.program).values()), "the best prompts have demos"
    assert prompts_of(result.program) != prompts_of(TwoStageProgram())
    path = result.save(tmp_path / "out" / "optimized.json")
    fresh = aprompt.load(TwoStageProgram(), path)
    assert prompts_of(fresh) == prompts_of(result.program)


def test_a_result_whose_prompts_hold_a_lone_surrogate_saves_and_loads_exactly(
    run: Run, tmp_path: Path
) -> None:
    result, _ = run
    program = copy.deepcopy(result.program)
    program.answer.instruction = "Give the caf\udce9 answer."
    path = attrs.evolve(result, program=program).save(tmp_path / "optimized.json")
    assert prompts_of(aprompt.load(TwoStageProgram(), path)) == prompts_of(program)


def test_a_result_whose_demos_json_cannot_keep_saves_its_run_record_and_says_so(
    run: Run, tmp_path: Path
) -> None:
    result, _ = run
    program = copy.deepcopy(result.program)
    program.answer.demos = [{"question": "q", "code": datetime.date(2024, 5, 1), "answer": "a"}]
    path = tmp_path / "optimized.json"
    with pytest.raises(aprompt.StateError, match=r"answer\.demos\[0\]\.code.*run record was saved"):
        attrs.evolve(result, program=program).save(path)
    data = json.loads(path.read_text())
    assert data["state"] is None
    assert data["trials"] == json.loads(json.dumps([attrs.asdict(t) for t in result.trials], default=str))
    assert data["score"] == result.score
    with pytest.raises(aprompt.StateError, match=r"without its prompts.*date value cannot be saved"):
        aprompt.load(TwoStageProgram(), path)


def test_the_saved_json_holds_the_run_record(run: Run, tmp_path: Path) -> None:
    result, _ = run
    data = json.loads(result.save(tmp_path / "optimized.json").read_text())
    assert data["format"] == "aprompt-result" and data["strategy"] == "mipro"
    assert (data["score"], data["baseline_score"]) == (result.score, result.baseline_score)
    assert data["best_choice"] == dict(result.best_choice)
    assert [t["number"] for t in data["trials"]] == [t.number for t in result.trials]
    assert len(data["full_evals"]) == len(result.full_evals)
    assert data["candidates"] == result.candidates.describe()
    assert [p["phase"] for p in data["phases"]] == [p.phase for p in result.phases]
    assert [p["started"] for p in data["phases"]] == [p.started for p in result.phases]
    assert not list(tmp_path.glob("*.tmp")), "written atomically"


def test_loading_into_a_program_of_another_shape_is_a_state_error(run: Run, tmp_path: Path) -> None:
    result, _ = run
    path = result.save(tmp_path / "optimized.json")

    class Other:
        def __init__(self) -> None:
            self.extract = Predict("text -> code")
            self.answer = Predict("question, code -> answer")

    with pytest.raises(aprompt.StateError):
        aprompt.load(Other(), path)


@pytest.mark.parametrize(
    ("version", "message"), [(2, "written by a newer aprompt: upgrade aprompt"), ("1", "'1' is unknown")]
)
def test_a_result_of_another_version_is_a_state_error(
    run: Run, version: object, message: str, tmp_path: Path
) -> None:
    """Its prompts may be laid out otherwise: read as this version's, they could load wrong."""
    result, _ = run
    path = result.save(tmp_path / "optimized.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "version": version}), encoding="utf-8")
    program = TwoStageProgram()
    with pytest.raises(aprompt.StateError, match=f"optimized\\.json: result version .*{message}"):
        aprompt.load(program, path)
    assert prompts_of(program) == prompts_of(TwoStageProgram())


def test_a_file_nested_too_deep_to_read_is_a_state_error(tmp_path: Path) -> None:
    """A damaged or hostile file whose JSON nests past the recursion limit cannot be read: a StateError
    naming the file, as for any other unreadable file, not Python's RecursionError."""
    path = tmp_path / "optimized.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    program = TwoStageProgram()
    with pytest.raises(aprompt.StateError, match=r"cannot read saved prompts from .*optimized\.json"):
        aprompt.load(program, path)
    assert prompts_of(program) == prompts_of(TwoStageProgram())


def test_saves_of_one_path_at_once_leave_one_whole_result_and_raise_nothing(run: Run, tmp_path: Path) -> None:
    result, _ = run
    shorter = attrs.evolve(result, trials=result.trials[:1], full_evals=())
    path, errors = tmp_path / "optimized.json", []

    def save(each: OptimizeResult, start: threading.Barrier) -> None:
        start.wait()
        try:
            each.save(path)
        except Exception as exc:
            errors.append(exc)

    for _ in range(150):
        start = threading.Barrier(2)
        savers = [threading.Thread(target=save, args=(each, start)) for each in (result, shorter)]
        for saver in savers:
            saver.start()
        for saver in savers:
            saver.join()
        assert not errors
        assert json.loads(path.read_text(encoding="utf-8"))["trials"] in (
            json.loads(json.dumps(r.to_dict()["trials"])) for r in (result, shorter)
        )
    assert [p.name for p in tmp_path.iterdir()] == ["optimized.json"]


def test_a_saved_result_read_as_a_state_file_is_a_state_error_naming_load(run: Run, tmp_path: Path) -> None:
    result, _ = run
    path = result.save(tmp_path / "optimized.json")
    with pytest.raises(aprompt.StateError, match=r"optimization result.*aprompt\.load\(program, path\)"):
        aprompt.load_state_file(TwoStageProgram(), path)


def test_usage_is_the_sum_of_the_phases_and_counts_every_request(run: Run) -> None:
    result, requests = run
    total = aprompt.UsageSnapshot()
    for phase in result.phases:
        total = total + phase.usage
    assert result.usage == total
    assert result.usage.requests == len(requests), "no LM call was made outside a phase"
    assert result.usage.prompt_tokens > 0 and result.usage.lm_calls == result.usage.requests > 0


def test_every_phase_has_a_wall_time_within_the_runs(run: Run) -> None:
    result, _ = run
    assert sorted(p.phase for p in result.phases) == WORLD_PHASES
    assert [p.started for p in result.phases] == sorted(p.started for p in result.phases)
    assert all(p.seconds > 0 and p.started >= 0 for p in result.phases)
    assert all(p.started + p.seconds <= result.seconds for p in result.phases)


SAVE_AND_LOAD_IN_AN_ASCII_LOCALE = """
import sys, anyio, aprompt
from tests.optimize.qa_task import optimize_in_world
from tests.optimize.world import TwoStageProgram
result, _ = anyio.run(optimize_in_world)
result.program.answer.instruction = "R\\u00e9ponds en fran\\u00e7ais \\u2014 \\u00ab exactement \\u00bb."
path = result.save(sys.argv[1])
loaded = aprompt.load(TwoStageProgram(), path)
sys.stdout.buffer.write(loaded.answer.instruction.encode("utf-8"))
"""


def test_saved_prompts_read_back_as_written_whatever_the_locales_encoding(tmp_path: Path) -> None:
    """The files are UTF-8 (as the state files always were): under an ASCII locale a result could not be
    saved, a state not loaded, and on a cp1252 one it loaded garbled without an error."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", SAVE_AND_LOAD_IN_AN_ASCII_LOCALE, str(tmp_path / "saved")],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    assert done.stdout.decode("utf-8") == "R\u00e9ponds en fran\u00e7ais \u2014 \u00ab exactement \u00bb."
