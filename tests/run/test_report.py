"""A run's journal read back: ``describe_run`` (aprompt show), ``choice_stats`` and the HTML report."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import aprompt
from aprompt.run._report_html import render_report
from aprompt.run.journal import RunJournal
from aprompt.run.report import (
    ORIGINAL_FILE,
    RESULT_FILE,
    choice_stats,
    describe_run,
    load_run,
    write_report,
)
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.optimize.qa_task import optimize_in_world
from tests.optimize.world import TwoStageProgram, World
from tests.run._optimize_worker import BUDGET, run_world

API_KEY = "sk-report-test"


def _journaled_run(run_dir: Path, stop_after_events: int | None = None) -> aprompt.OptimizeResult | None:
    """Optimize the simulated world into ``run_dir``, saving the files the CLI writes beside the journal
    (or stop after ``stop_after_events`` events, leaving an unfinished run)."""

    async def main() -> aprompt.OptimizeResult | None:
        seen = 0
        async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
            with anyio.CancelScope() as scope:

                def stop_at(event: aprompt.Event) -> None:
                    nonlocal seen
                    seen += 1
                    if seen == stop_after_events:
                        scope.cancel()

                return await run_world(server.base_url, run_dir, API_KEY, on_event=stop_at)
        return None

    result = anyio.run(main)
    if result is not None:
        result.save(run_dir / RESULT_FILE)
        aprompt.save_state(TwoStageProgram(), run_dir / ORIGINAL_FILE)
    return result


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, aprompt.OptimizeResult]:
    run_dir = tmp_path_factory.mktemp("report") / "run"
    result = _journaled_run(run_dir)
    assert result is not None
    return run_dir, result


def test_load_run_reads_back_what_the_run_returned(finished_run: tuple[Path, aprompt.OptimizeResult]) -> None:
    run_dir, result = finished_run
    view = load_run(run_dir)
    assert view.finished and view.strategy == "mipro"
    assert [(t["number"], dict(t["choice"]), t["score"]) for t in view.trials] == [
        (t.number, dict(t.choice), t.score) for t in result.trials
    ]
    assert [f["score"] for f in view.full_evals] == [f.score for f in result.full_evals]
    assert (dict(view.best_choice or {}), view.best_score) == (dict(result.best_choice), result.score)
    assert view.baseline_score == result.baseline_score
    for name in view.predictors:  # every candidate instruction, the original one included
        assert [view.instructions[name][i] for i in range(len(view.instructions[name]))] == list(
            result.candidates.instructions[name]
        )
    assert view.phases and view.seconds == result.seconds


def test_choice_stats_count_each_candidates_trials(finished_run: tuple[Path, aprompt.OptimizeResult]) -> None:
    run_dir, result = finished_run
    stats = choice_stats(load_run(run_dir))
    assert set(stats) == set(result.trials[0].choice)
    for param, rows in stats.items():
        assert sum(row.tried for row in rows) == len(result.trials)
        assert sum(row.tried_late for row in rows) == len(result.trials) - len(result.trials) // 2
        for row in rows:
            scores = [t.score for t in result.trials if t.choice[param] == row.index and t.score is not None]
            assert row.mean_score == (pytest.approx(sum(scores) / len(scores)) if scores else None)


def test_describe_run_lists_trials_full_evaluations_and_best_prompts(
    finished_run: tuple[Path, aprompt.OptimizeResult],
) -> None:
    run_dir, result = finished_run
    text = describe_run(load_run(run_dir))
    assert f"{len(result.trials)} trials, {len(result.full_evals)} full evaluations" in text
    assert f"baseline {result.baseline_score:.3f} -> best {result.score:.3f}" in text
    for trial in result.trials:
        assert f"{trial.number:>4}  {trial.score:>6.3f}  " in text
    state = aprompt.program_state(result.program)["predictors"]
    for name, prompt in state.items():
        index = result.best_choice.get(f"{name}.instruction", 0)
        assert f"{name}: instruction #{index}, {len(prompt['demos'])} demos" in text
        assert prompt["instruction"] in text


def test_the_report_is_one_html_file_with_plots_and_prompts(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    run_dir, result = finished_run
    path = write_report(run_dir, tmp_path / "out" / "report.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == 2
    assert "Find the code." in page  # the original instruction, beside the optimized one
    for name, prompt in aprompt.program_state(result.program)["predictors"].items():
        assert prompt["instruction"] in page
        assert f"<h3>{name}.instruction</h3>" in page or f"<h3>{name}.demos</h3>" in page
    assert "Usage and time" in page and "<b>total</b>" in page


def test_the_report_escapes_the_prompts(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    run_dir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with RunJournal.open(copy) as journal:  # the prompts the run started from, as it journals them
        original = journal.latest("original_state")
        original["predictors"]["extract"]["instruction"] = "<script>alert(1)</script> & more"
        journal.append("original_state", original)
    (copy / RESULT_FILE).unlink()  # the originals now come from the journal alone
    page = write_report(copy).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page


def test_a_run_made_from_python_shows_its_original_prompts_from_the_journal(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    """Only the command line writes original_program.json and result.json; every run journals the
    prompts it started from, and the report must not call them "not in the journal"."""
    run_dir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / ORIGINAL_FILE).unlink()
    (copy / RESULT_FILE).unlink()
    view = load_run(copy)
    original = aprompt.program_state(TwoStageProgram())["predictors"]
    for name, state in original.items():
        assert view.prompt(name, None).instruction == state["instruction"]
    page = write_report(copy).read_text(encoding="utf-8")
    assert "not in the journal" not in page
    assert all(state["instruction"] in page for state in original.values())


def test_a_run_started_over_from_python_shows_its_own_original_prompts(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    """Started over (resume=False) from Python in a run_dir of the command line, a run leaves the earlier
    run's original_program.json there: its prompts are another program's, never shown as this run's."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    program = TwoStageProgram()
    program.extract.instruction = "Extract the item's code, reworded."
    limits = aprompt.Limits(max_lm_calls=120)  # stopped beside the baseline: returns the program as written
    result, _ = anyio.run(
        lambda: optimize_in_world(program=program, run_dir=run_dir, resume=False, limits=limits)
    )
    assert result.best_choice == {}
    view = load_run(run_dir)
    assert view.prompt("extract", None).instruction == "Extract the item's code, reworded."
    assert "  extract: instruction #0, 0 demos\n    Extract the item's code, reworded." in describe_run(view)
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "Find the code." not in page


def test_an_earlier_runs_result_file_with_the_same_score_and_pick_is_not_read_as_this_runs(
    tmp_path: Path,
) -> None:
    """Two runs a limit stopped at the baseline return the same score and pick: the result.json the
    command line saved of the first is not the second's (started over from Python), nor its usage,
    nor its candidates."""
    limits = aprompt.Limits(max_lm_calls=250)
    run_dir = tmp_path / "run"
    first, _ = anyio.run(lambda: optimize_in_world(seed=1, run_dir=tmp_path / "first", limits=limits))
    first.save(run_dir / RESULT_FILE)  # as the command line left it (the first run's cache elsewhere)
    again, _ = anyio.run(lambda: optimize_in_world(seed=2, run_dir=run_dir, limits=limits, resume=False))
    assert (again.score, dict(again.best_choice)) == (first.score, dict(first.best_choice))
    assert [t.choice for t in again.trials] != [t.choice for t in first.trials]
    view = load_run(run_dir)
    assert view.phases == () and view.lm_calls is None  # this run saved no usage
    for name, texts in again.candidates.instructions.items():
        assert view.instructions[name] == dict(enumerate(texts))


def test_without_matplotlib_the_report_says_how_to_get_plots(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = write_report(finished_run[0], tmp_path / "report.html").read_text(encoding="utf-8")
    assert "data:image/png" not in page and "aprompt[ui]" in page


def test_an_unfinished_run_is_shown_and_reported_as_far_as_it_went(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert _journaled_run(run_dir, stop_after_events=30) is None
    view = load_run(run_dir)
    assert not view.finished and 0 < len(view.trials) < BUDGET["n_trials"]
    assert "not finished" in describe_run(view)
    page = write_report(run_dir).read_text(encoding="utf-8")
    # No original_program.json here: the original prompts come from the journal.
    assert "not finished" in page and "Find the code." in page


def test_a_run_that_writes_while_it_is_read_is_shown_as_it_stood_not_torn(tmp_path: Path) -> None:
    writer = RunJournal.open(tmp_path)
    writer.append("config", {"strategy": "mipro", "seed": 0})
    for number in range(2):
        writer.append("trial", {"number": number, "choice": {}, "score": 0.5}, key=str(number))

    def finish_the_run() -> None:  # the run's last trial, then its result, as a running process writes them
        writer.append("trial", {"number": 2, "choice": {}, "score": 0.5}, key="2")
        writer.append("result", {"best_choice": {}, "score": 0.5})

    def after_the_trials_are_read(frame: Any, event: str, arg: object) -> None:
        # The other process's timing made exact: it writes just after the reader has read the trials.
        if event == "return" and frame.f_code.co_name == "_execute" and frame.f_locals["args"] == ("trial",):
            sys.setprofile(None)
            finish_the_run()

    sys.setprofile(after_the_trials_are_read)
    try:
        view = load_run(tmp_path)
    finally:
        sys.setprofile(None)
        writer.close()
    assert not view.finished and len(view.trials) == 2  # as it stood when the read began
    finished = load_run(tmp_path)
    assert finished.finished and len(finished.trials) == 3


@pytest.mark.parametrize("name", [RESULT_FILE, ORIGINAL_FILE])
def test_a_file_beside_the_journal_nested_too_deep_to_read_is_left_out(tmp_path: Path, name: str) -> None:
    """The files beside the journal are optional: one that cannot be read (here JSON nested past the
    recursion limit) is done without, as a missing or damaged one is, and the run is still shown."""
    with RunJournal.open(tmp_path) as writer:
        writer.append("config", {"strategy": "mipro", "seed": 0})
        writer.append("trial", {"number": 0, "choice": {}, "score": 0.5}, key="0")
        writer.append("result", {"best_choice": {}, "score": 0.5})
    (tmp_path / name).write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    view = load_run(tmp_path)
    assert view.finished and len(view.trials) == 1 and view.phases == ()
    assert "best prompts (0.500: the program as written)" in describe_run(view)


@pytest.mark.parametrize(
    "damaged",
    [
        {"phases": 5},
        {"phases": [5]},
        {"phases": [{"phase": "search", "seconds": 1.0, "usage": {"requests": "many"}}]},
        {"spent": [1]},
        {"candidates": {"answer": []}},
        {"candidates": {"answer": {"instructions": 5}}},
        {"candidates": {"answer": {"demo_sets": [5]}}},
    ],
)
def test_a_result_file_edited_out_of_shape_is_done_without_where_it_is_out_of_shape(
    tmp_path: Path, damaged: dict[str, Any]
) -> None:
    """result.json beside the journal is optional: a part of it not as the run writes it (edited by
    hand) is left out, and the run is still shown and reported, never a Python error."""
    with RunJournal.open(tmp_path) as writer:
        writer.append("config", {"strategy": "mipro", "seed": 0})
        writer.append("result", {"best_choice": {}, "score": 0.5})
    result = {"score": 0.5, "best_choice": {}, "trials": [], **damaged}
    (tmp_path / RESULT_FILE).write_text(json.dumps(result), encoding="utf-8")
    view = load_run(tmp_path)
    assert view.finished and view.phases == () and view.spent == {}
    assert "best prompts (0.500: the program as written)" in describe_run(view)
    assert "Usage per phase is saved by" in write_report(tmp_path).read_text(encoding="utf-8")


@pytest.mark.parametrize("damaged", [{"predictors": []}, {"predictors": {"answer": 5}}])
def test_an_original_program_file_edited_out_of_shape_is_done_without(
    tmp_path: Path, damaged: dict[str, Any]
) -> None:
    """original_program.json is read only for a journal without its own copy of the prompts: one not as
    save_state writes it is left out, and the run is still shown."""
    with RunJournal.open(tmp_path) as writer:
        writer.append("config", {"strategy": "mipro", "seed": 0})
        writer.append("result", {"best_choice": {}, "score": 0.5})
    (tmp_path / ORIGINAL_FILE).write_text(json.dumps(damaged), encoding="utf-8")
    view = load_run(tmp_path)
    assert view.finished and view.reply_formats == {}
    assert "best prompts (0.500: the program as written)" in describe_run(view)


def test_calling_a_finished_run_again_does_not_journal_its_examples_again(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = _journaled_run(run_dir)
    again = _journaled_run(run_dir)
    assert first is not None and again is not None and again.best_choice == first.best_choice
    with RunJournal.open(run_dir) as journal:
        assert journal.kinds()["examples"] == 1
    view = load_run(run_dir)
    assert view.examples is not None and len(view.examples) > 0


def test_a_run_stopped_before_the_search_shows_the_baseline_it_returned(tmp_path: Path) -> None:
    # 120 calls stop the run beside the baseline's evaluation, before the search records it.
    limits = aprompt.Limits(max_lm_calls=120)
    result, _ = anyio.run(lambda: optimize_in_world(run_dir=tmp_path, limits=limits))
    assert result.stopped_by == "max_lm_calls" and len(result.full_evals) == 1
    view = load_run(tmp_path)
    assert [(f["choice"], f["score"]) for f in view.full_evals] == [
        (dict(f.choice), f.score) for f in result.full_evals
    ]
    assert view.baseline_score == result.baseline_score
    assert (view.best_choice, view.best_score) == (dict(result.best_choice), result.score)
    assert "1 full evaluations; baseline 0.033 -> best 0.033" in describe_run(view)


def test_a_run_made_from_python_that_a_limit_stopped_says_so(tmp_path: Path) -> None:
    """Without the command line's result.json, the journal alone must tell that a limit cut the run
    short: never "finished" as if it had spent its whole budget."""
    limits = aprompt.Limits(max_lm_calls=120)
    result, _ = anyio.run(lambda: optimize_in_world(run_dir=tmp_path, limits=limits))
    assert result.stopped_by == "max_lm_calls" and not (tmp_path / RESULT_FILE).exists()
    view = load_run(tmp_path)
    assert view.finished and view.stopped_by == "max_lm_calls"
    assert "state: finished, stopped by max_lm_calls;" in describe_run(view)
    assert "finished (stopped by max_lm_calls)" in write_report(tmp_path).read_text(encoding="utf-8")


class ScreenedWorld(World):
    """The world, but every even-numbered proposal is off-task and answers everything wrong (the screen
    drops it); the other prompts answer everything right."""

    OFF_TASK = "Xylophone quartz lemur."

    def __call__(self, request: ChatRequest) -> str:
        reply = super().__call__(request)
        variant = re.search(r"variant (\d+)", reply)
        if reply.startswith("Proposed instruction") and variant is not None:
            return f"Proposed instruction: {self.OFF_TASK}" if int(variant[1]) % 2 == 0 else reply
        field = reply.partition(":")[0]
        if field in ("Code", "Answer"):
            wrong = self.OFF_TASK in str(request.messages[0]["content"])
            item = re.findall(r"item-(\d+)", request.last_user)[0]
            return f"{field}: {'zz' if wrong else {'Code': 'code', 'Answer': 'ans'}[field] + '-' + item}"
        return reply


def test_a_run_resumed_after_its_result_is_unfinished_until_the_resumed_call_returns(tmp_path: Path) -> None:
    """Resumed with a higher limit after a limit stopped it, a run whose new call is killed (or still
    runs) has trials past the earlier call's result: not that call's finished run and pick."""
    first, _ = anyio.run(lambda: optimize_in_world(run_dir=tmp_path, limits=aprompt.Limits(max_lm_calls=250)))
    assert first.stopped_by == "max_lm_calls"

    async def resumed_and_killed() -> None:
        with anyio.CancelScope() as scope:

            def kill_at_the_third_new_trial(event: aprompt.Event) -> None:
                if isinstance(event, aprompt.TrialScored) and event.number == len(first.trials) + 2:
                    scope.cancel()

            limits = aprompt.Limits(max_lm_calls=5000)
            await optimize_in_world(run_dir=tmp_path, limits=limits, on_event=kill_at_the_third_new_trial)

    anyio.run(resumed_and_killed)
    view = load_run(tmp_path)
    assert len(view.trials) > len(first.trials)
    assert not view.finished and view.stopped_by is None and view.examples is None
    assert "state: not finished (resume it with the same command);" in describe_run(view)


def test_instructions_after_a_screened_out_proposal_are_shown_at_their_own_index(tmp_path: Path) -> None:
    """A proposal the screen drops is no candidate: those after it move up one index. Without the command
    line's result.json, the journal alone must tell each index's instruction, and the drop."""

    async def main() -> aprompt.OptimizeResult:
        async with FakeOpenAIServer(responder=ScreenedWorld(), api_key=API_KEY) as server:
            return await run_world(server.base_url, tmp_path, API_KEY)

    result = anyio.run(main)
    screened = [(name, reason) for name, _, reason in result.dropped if "on the screen" in reason]
    assert screened and not (tmp_path / RESULT_FILE).exists()
    view = load_run(tmp_path)
    for name, texts in result.candidates.instructions.items():
        assert view.instructions[name] == dict(enumerate(texts))
    assert set(screened) <= set(view.dropped)


class EscapingWorld(World):
    """The world, with terminal control sequences in its wrong answers and its proposals."""

    def __call__(self, request: ChatRequest) -> str:
        reply = super().__call__(request)
        if reply.startswith("Proposed instruction"):
            return reply + "\x1b[2J"  # clears the screen
        return reply.replace("no idea", "no idea\x1b]0;owned\x07")  # retitles the terminal


def test_show_writes_the_control_characters_of_replies_and_proposals_as_escapes(tmp_path: Path) -> None:
    async def main() -> aprompt.OptimizeResult:
        async with FakeOpenAIServer(responder=EscapingWorld(), api_key=API_KEY) as server:
            return await run_world(server.base_url, tmp_path, API_KEY)

    result = anyio.run(main)
    returned = aprompt.program_state(result.program)["predictors"].values()
    assert result.failing_examples() and any("\x1b[2J" in p["instruction"] for p in returned)
    text = describe_run(load_run(tmp_path))
    assert "\x1b" not in text and "\x07" not in text
    assert "answer: no idea\\x1b]0;owned\\x07" in text and "\\x1b[2J" in text


def test_the_baselines_empty_choice_is_named_not_left_blank(tmp_path: Path) -> None:
    """Before the search, the best program is the baseline, whose choice is empty: show and report
    say it is the program as written, never a blank."""
    run_dir = tmp_path / "run"
    assert _journaled_run(run_dir, stop_after_events=8) is None
    view = load_run(run_dir)
    assert view.best_choice == {} and [f["choice"] for f in view.full_evals] == [{}]
    text = describe_run(view)
    assert f"best prompts ({view.best_score:.3f}: the program as written):" in text
    assert f"      0  {view.best_score:>6.3f}  the program as written" in text
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "<td>the program as written</td>" in page


def test_an_earlier_runs_result_file_is_not_read_as_the_unfinished_runs(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    """A run started over in a run_dir leaves the earlier run's result.json there until it finishes: its
    candidates, usage and reason are another run's, never shown as this one's."""
    run_dir = tmp_path / "run"
    assert _journaled_run(run_dir, stop_after_events=30) is None
    earlier = json.loads((finished_run[0] / RESULT_FILE).read_text(encoding="utf-8"))
    for cands in earlier["candidates"].values():  # another run: other proposals
        cands["instructions"] = [f"Stale instruction {i}." for i in range(len(cands["instructions"]))]
    (run_dir / RESULT_FILE).write_text(json.dumps(earlier), encoding="utf-8")
    view = load_run(run_dir)
    assert not view.finished and view.phases == () and view.pick is None
    with RunJournal.open(run_dir) as journal:
        for name, items in journal.entries("proposals"):
            kept = [p["instruction"] for p in items if p.get("instruction") is not None]
            assert [view.instructions[name][i] for i in range(1, len(kept) + 1)] == kept
    assert "Stale instruction" not in write_report(run_dir).read_text(encoding="utf-8")
    assert "Stale instruction" not in describe_run(view)


def _damage(run_dir: Path, kind: str) -> None:
    """Change the first ``kind`` record's payload on disk, past its checksum (as a failing disk would)."""
    db = sqlite3.connect(run_dir / "journal.sqlite3")
    try:
        with db:
            db.execute(
                "UPDATE records SET payload = payload || ' ' WHERE seq = "
                "(SELECT min(seq) FROM records WHERE kind = ?)",
                (kind,),
            )
    finally:
        db.close()


def test_show_and_report_leave_a_damaged_record_out_name_it_and_resuming_still_refuses(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    """One damaged record does not hide the rest of a run from show and report: they show what they can
    read and name what they cannot; optimize still refuses to resume from it."""
    run_dir, result = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    _damage(copy, "trial")
    view = load_run(copy)
    assert [t["number"] for t in view.trials] == [t.number for t in result.trials[1:]]
    assert view.finished and view.best_score == result.score
    [named] = view.unreadable
    assert named.startswith("trial record '0' (#")
    assert named.endswith("is damaged (its checksum does not match)")
    text = describe_run(view)
    assert "warning: 1 journal record could not be read and is left out (trial record '0' (#" in text
    assert "--fresh" in text
    page = write_report(copy).read_text(encoding="utf-8")
    assert '<p class="warn">Warning: 1 journal record could not be read' in page
    with pytest.raises(aprompt.JournalError, match=r"trial record '0' .* is damaged"):
        _journaled_run(copy)


def test_a_damaged_result_record_leaves_the_runs_state_unknown(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished_run[0], copy)
    _damage(copy, "result")
    view = load_run(copy)
    assert not view.finished and view.result_unreadable
    text = describe_run(view)
    assert "state: unknown (its result record cannot be read)" in text and "not finished" not in text


SHOW_AS_A_READER = """
import os, sys
from aprompt.run.report import describe_run, load_run
if os.geteuid() == 0:  # root writes anywhere: read as a user who cannot write the run_dir
    os.setuid(65534)
print(describe_run(load_run(sys.argv[1])))
"""


def test_a_run_on_read_only_media_is_shown(finished_run: tuple[Path, aprompt.OptimizeResult]) -> None:
    """``aprompt show`` and ``aprompt report`` read a run: a run_dir they cannot write (read-only media,
    another user's run) reads back as it is, and is left as it is."""
    run_dir, result = finished_run
    shelf = Path(tempfile.mkdtemp(prefix="aprompt-ro-"))  # not under pytest's base, which only root enters
    copy = shelf / "run"
    try:
        shutil.copytree(run_dir, copy)
        (copy / "cache").chmod(0o555)
        for path in copy.iterdir():
            if path.is_file():
                path.chmod(0o444)
        copy.chmod(0o555)
        shelf.chmod(0o755)
        before = sorted((p.name, p.stat().st_size) for p in copy.iterdir())
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        done = subprocess.run(
            [sys.executable, "-c", SHOW_AS_A_READER, str(copy)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"baseline {result.baseline_score:.3f} -> best {result.score:.3f}" in done.stdout
        assert sorted((p.name, p.stat().st_size) for p in copy.iterdir()) == before
    finally:
        for path in (shelf, copy, copy / "cache"):
            if path.exists():
                path.chmod(0o755)
        shutil.rmtree(shelf)


def test_a_folder_without_a_journal_is_a_config_error_and_stays_untouched(tmp_path: Path) -> None:
    with pytest.raises(aprompt.ConfigError, match="no run journal"):
        load_run(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def _screenshot(chromium: str, page: Path, shot: Path, profile: Path) -> None:
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_the_report_renders_in_headless_chromium(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    image = pytest.importorskip("matplotlib.image")
    page = write_report(finished_run[0], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    _screenshot(chromium, page, shot, tmp_path / "profile")
    pixels = image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05  # not a blank page
    colours = {tuple(c) for c in (rgb[::97] * 255).round().astype(int).tolist()}
    assert len(colours) > 50  # text, cards and plots, not one or two flat colours


@pytest.mark.parametrize(
    ("kept_baseline", "title"), [(True, "Best challenger vs baseline"), (False, "Evidence vs baseline")]
)
def test_the_evidence_card_says_whose_lead_it_shows(
    finished_run: tuple[Path, aprompt.OptimizeResult], kept_baseline: bool, title: str
) -> None:
    """With the baseline kept, the pick's evidence is the strongest challenger's lead, not the returned
    program's: the card must not read as the returned program's gain."""
    run_dir, _ = finished_run
    view = load_run(run_dir)
    evidence = {"n": 37, "mean": 0.27, "low": 0.1, "high": 0.4, "level": 0.95}
    pick = {**(view.pick or {}), "kept_baseline": kept_baseline, "evidence": evidence}
    page = render_report(attrs.evolve(view, pick=pick), choice_stats(view), None)
    assert f"{title}</div>" in page and "+0.270 on 37" in page
    other = "Evidence vs baseline" if kept_baseline else "Best challenger vs baseline"
    assert other not in page
