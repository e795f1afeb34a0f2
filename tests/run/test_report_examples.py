"""What a run shows per example: the validation examples the returned program still fails, and those it
fixed or broke compared with the unoptimized program — in ``OptimizeResult``, ``aprompt show`` and the HTML
report, read back from the journal — and why the returned program was chosen."""

from __future__ import annotations

import html
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

import aprompt
from aprompt._optimize.per_example import ExampleRow, output_value
from aprompt.run._report_html import FAILING_ROW, MAX_EXAMPLES_SHOWN
from aprompt.run.report import ORIGINAL_FILE, RESULT_FILE, describe_run, load_run, write_report
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import TwoStageProgram, World, examples, metric
from tests.run._optimize_worker import MAX_CONCURRENCY, run_world
from tests.run.test_report import _journaled_run
from tests.set_order import sets_filled_in_two_orders

API_KEY = "sk-report-examples-test"
FAILING_RGB = tuple(int(FAILING_ROW[i : i + 2], 16) for i in (1, 3, 5))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, aprompt.OptimizeResult]:
    run_dir = tmp_path_factory.mktemp("examples") / "run"
    result = _journaled_run(run_dir)
    assert result is not None
    return run_dir, result


def full_scores(result: aprompt.OptimizeResult, choice: Any) -> dict[str, float]:
    """The example scores of the last full evaluation of ``choice``."""
    found = [f for f in result.full_evals if dict(f.choice) == dict(choice)]
    return dict(found[-1].scores)


def test_failing_examples_are_those_the_returned_program_scored_below_full_marks(
    finished_run: tuple[Path, aprompt.OptimizeResult],
) -> None:
    _, result = finished_run
    scores = full_scores(result, result.best_choice)
    failing = result.failing_examples()
    assert failing and {r.example_id for r in failing} == {i for i, s in scores.items() if s < 1.0}
    valset = {e.id: e for e in examples(200, 240)}
    for row in failing:  # each with the validation example's own inputs and labels
        assert (row.inputs, row.labels) == (valset[row.example_id].inputs, valset[row.example_id].labels)
        assert row.outcome.score == scores[row.example_id] and row.outcome.recorded


def test_fixed_and_broken_compare_the_two_programs_full_evaluations(
    finished_run: tuple[Path, aprompt.OptimizeResult],
) -> None:
    _, result = finished_run
    best = full_scores(result, result.best_choice)
    base = full_scores(result, result.full_evals[0].choice)
    assert {r.example_id for r in result.fixed_examples()} == {i for i in best if best[i] > base[i]}
    assert {r.example_id for r in result.broken_examples()} == {i for i in best if best[i] < base[i]}
    assert result.fixed_examples()  # the world's optimized program does fix some


def _outputs_of(program: object, rows: list[ExampleRow]) -> list[Any]:
    """What ``program`` answers, run again against a fresh world server, on each row's inputs."""

    async def main() -> list[Any]:
        async with (
            FakeOpenAIServer(responder=World(), api_key=API_KEY) as server,
            aprompt.OpenAICompatibleLM("world", server.base_url, api_key=API_KEY) as lm,
        ):
            with aprompt.use_lm(lm):
                return [(await program(**row.inputs)).to_dict() for row in rows]  # type: ignore[operator]

    return anyio.run(main)


def test_the_outputs_are_what_each_program_answers_on_the_example(
    finished_run: tuple[Path, aprompt.OptimizeResult],
) -> None:
    _, result = finished_run
    rows = result.failing_examples()[:4] + result.fixed_examples()[:4]
    assert [r.outcome.output for r in rows] == _outputs_of(result.program, rows)
    assert [r.baseline.output for r in rows if r.baseline] == _outputs_of(TwoStageProgram(), rows)


def test_an_output_is_its_fields_as_json_reads_them_back() -> None:
    class Label(str):
        pass

    answer = "a reply of several words"
    plain = output_value(aprompt.Prediction({"answer": answer, "n": 3, "p": math.nan, "ok": True}))
    # Fields JSON gives back as they are are kept, not copied through JSON once per example scored.
    assert plain["answer"] is answer and plain["n"] == 3 and math.isnan(plain["p"]) and plain["ok"] is True
    assert output_value({1: Label("x"), "d": (1, 2)}) == {"1": "x", "d": [1, 2]}
    assert type(output_value({"label": Label("x")})["label"]) is str


def test_a_set_shows_its_items_in_one_order_whatever_order_it_was_filled_in() -> None:
    # A set's own order follows the hash seed and how it was filled: a finished run resumed in another
    # process would return another table, and journal it again on every such call.
    tags, forward, backward = sets_filled_in_two_orders()
    in_order = "{" + ", ".join(repr(tag) for tag in sorted(tags)) + "}"
    assert output_value({"tags": forward}) == output_value({"tags": backward}) == {"tags": in_order}
    frozen = output_value({"t": frozenset({"b", "a"}), "e": set()})
    assert frozen == {"t": "frozenset({'a', 'b'})", "e": "set()"}


def test_show_reads_the_failing_examples_and_the_reason_back_from_the_journal_alone(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    run_dir, result = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / RESULT_FILE).unlink()
    (copy / ORIGINAL_FILE).unlink()
    view = load_run(copy)
    assert view.examples is not None and view.examples.failing() == result.failing_examples()
    text = describe_run(view)
    assert result.pick is not None and f"why this program: {result.pick.reason}" in text
    assert f"examples still failing: {len(result.failing_examples())} of 40 scored" in text
    first = result.failing_examples()[0]
    assert f"  {first.example_id}: score {first.outcome.score:.3f} (baseline " in text
    assert f"    expected: answer: {first.labels['answer']}" in text
    assert f"fixed compared with the baseline: {len(result.fixed_examples())}" in text


def test_a_resumed_finished_run_returns_the_same_examples_with_their_outputs(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    run_dir, result = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)

    async def again() -> tuple[aprompt.OptimizeResult, int]:
        async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
            replayed = await run_world(server.base_url, copy, API_KEY)
            return replayed, len(server.chat_requests)

    replayed, sent = anyio.run(again)
    assert sent == 0  # replayed from the journal: the outputs come from it too
    assert replayed.examples == result.examples
    assert all(r.outcome.recorded and r.outcome.output is not None for r in replayed.examples)


def test_the_report_shows_failing_fixed_and_broken_examples_and_why(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    run_dir, result = finished_run
    page = write_report(run_dir, tmp_path / "report.html").read_text(encoding="utf-8")
    failing = result.failing_examples()
    assert f"Still failing: {len(failing)} of 40 validation examples" in page
    assert f"Fixed compared with the baseline: {len(result.fixed_examples())}" in page
    assert f"Broken compared with the baseline: {len(result.broken_examples())}" in page
    assert f"<td>{failing[0].example_id}</td>" in page
    assert result.pick is not None and f"<b>Why this program:</b> {html.escape(result.pick.reason)}" in page


class Opaque:
    """A program's output with a ``to_dict`` that needs an argument and a ``repr`` that raises."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def to_dict(self, orient: str) -> dict[str, str]:
        return {"answer": self.answer}

    def __repr__(self) -> str:
        raise RuntimeError("no text for this one")


class OpaqueProgram(TwoStageProgram):
    async def __call__(self, question: str) -> Any:
        return Opaque((await super().__call__(question)).answer)


def test_an_output_that_cannot_be_shown_is_named_by_its_type_and_the_run_goes_on() -> None:
    async def main() -> aprompt.OptimizeResult:
        async with (
            FakeOpenAIServer(responder=World(), api_key=API_KEY) as server,
            aprompt.OpenAICompatibleLM("world", server.base_url, api_key=API_KEY) as lm,
        ):
            return await aprompt.optimize(
                OpaqueProgram(),
                examples(0, 40),
                metric,
                valset=examples(200, 220),
                lm=lm,
                budget={"n_candidates": 3, "val_size": 20, "n_trials": 4, "minibatch_size": 10},
            )

    result = anyio.run(main)
    assert len(result.trials) == 4
    assert {row.outcome.output for row in result.examples.rows} == {"<Opaque object>"}


def test_the_report_escapes_the_examples(tmp_path: Path) -> None:
    marked = [
        aprompt.Example(
            {"question": f"<b>What</b> is the answer for item-{i}? & why"}, {"answer": f"ans-{i}"}
        )
        for i in range(200, 220)
    ]

    async def main() -> aprompt.OptimizeResult:
        async with (
            FakeOpenAIServer(responder=World(), api_key=API_KEY) as server,
            aprompt.OpenAICompatibleLM("world", server.base_url, api_key=API_KEY) as lm,
        ):
            return await aprompt.optimize(
                TwoStageProgram(),
                examples(0, 40),
                metric,
                valset=marked,
                lm=lm,
                budget={"n_candidates": 3, "val_size": 20, "n_trials": 4, "minibatch_size": 10},
                run_dir=tmp_path / "run",
            )

    result = anyio.run(main)
    assert result.failing_examples()
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "<b>What</b>" not in page and "&lt;b&gt;What&lt;/b&gt; is the answer for item-" in page
    assert "? &amp; why" in page


def test_the_report_charts_the_requests_in_flight(finished_run: tuple[Path, aprompt.OptimizeResult]) -> None:
    run_dir, _ = finished_run
    view = load_run(run_dir)
    assert view.in_flight  # the run sent its requests at most MAX_CONCURRENCY at a time
    assert 0 < max(n for _, n in view.in_flight) <= MAX_CONCURRENCY
    assert [t for t, _ in view.in_flight] == sorted(t for t, _ in view.in_flight)
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert '<svg class="inflight"' in page


def test_the_failing_examples_are_seen_in_headless_chromium(
    finished_run: tuple[Path, aprompt.OptimizeResult], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    image = pytest.importorskip("matplotlib.image")
    page = write_report(finished_run[0], tmp_path / "report.html")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,6000",  # tall enough to hold the page down to its examples
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pixels = (image.imread(shot)[..., :3] * 255).round().astype(int)
    # The rows of the failing examples have a background of their own (FAILING_ROW in report_html):
    # many pixels of it mean the rows were laid out and painted, not just present in the markup.
    tinted = int((pixels == FAILING_RGB).all(axis=-1).sum())
    assert tinted > 2000 * len(finished_run[1].failing_examples()[:MAX_EXAMPLES_SHOWN])
