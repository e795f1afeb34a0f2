"""Progress displays follow a run's events: plain lines off a terminal, a rich panel on one, or nothing."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import aprompt
from aprompt import (
    CandidateDropped,
    CandidateProposed,
    Event,
    FullEvaluation,
    NewBest,
    PhaseFinished,
    PhaseStarted,
    RunFinished,
    RunPlanned,
    TrialScored,
    UsageSnapshot,
)
from aprompt.progress import (
    LineProgress,
    LiveProgress,
    Progress,
    RunProgress,
    format_duration,
    progress_display,
)
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.optimize.qa_task import SMALL_BUDGET, lm_for
from tests.optimize.world import TwoStageProgram, World, examples, metric

CHOICE = {"extract.instruction": 1, "extract.demos": 2}
USAGE = UsageSnapshot(
    calls=100, cache_hits=25, requests=75, prompt_tokens=9000, completion_tokens=1000, rate_limited=3
)


def run_events() -> list[Event]:
    return [
        RunPlanned("mipro", 3, 40, 500),
        PhaseStarted("propose"),
        CandidateProposed("extract", "instruction", 1, "Find the code, carefully."),
        PhaseFinished("propose", 2.0, UsageSnapshot(calls=10, prompt_tokens=800, completion_tokens=100)),
        PhaseStarted("search", "3 trials"),
        FullEvaluation({"extract.instruction": 0, "extract.demos": 0}, 0.1, 40, 0, is_baseline=True),
        NewBest({"extract.instruction": 0, "extract.demos": 0}, 0.1),
        TrialScored(0, CHOICE, 0.5, 15, 0),
        TrialScored(1, CHOICE, None, 15, 15),
        TrialScored(2, CHOICE, 0.4, 15, 0),
        FullEvaluation(CHOICE, 0.375, 40, 0),
        NewBest(CHOICE, 0.375),
        PhaseFinished("search", 5.0, USAGE),
        RunFinished(0.375, 0.1, 7.5, USAGE),
    ]


def feed(progress: Progress, events: Sequence[Event]) -> None:
    for event in events:
        progress(event)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_tell_the_plan_the_trials_and_the_result() -> None:
    out = io.StringIO()
    feed(LineProgress(out), run_events())
    lines = out.getvalue().splitlines()
    assert lines[0] == "plan: mipro, 3 trials on 40 validation examples, about 500 LM calls before caching"
    assert "[search] started: 3 trials" in lines
    assert "  trial 0 (1/3 done): 0.500 (extract.instruction=1, extract.demos=2)" in lines
    assert "  trial 1 (2/3 done): failed (extract.instruction=1, extract.demos=2)" in lines
    assert any(line.startswith("  baseline: 0.100 on 40 examples") for line in lines)
    assert "  new best: 0.375" in lines
    assert lines[-1] == (
        "finished in 8s: best 0.375 (baseline 0.100); 75 LM calls sent (0 retries), 25 cache hits, "
        "10,000 tokens, 3 rate-limited (429)"
    )


def test_the_last_line_names_the_limit_that_stopped_the_run() -> None:
    out = io.StringIO()
    feed(LineProgress(out), [*run_events()[:-1], RunFinished(0.375, 0.1, 7.5, USAGE, "max_lm_calls")])
    assert out.getvalue().splitlines()[-1].startswith("finished in 8s, stopped by max_lm_calls: best 0.375")


def test_quiet_shows_nothing_but_still_follows_the_run() -> None:
    out = io.StringIO()
    progress = progress_display(quiet=True, stream=out)
    feed(progress, run_events())
    assert out.getvalue() == ""
    assert progress.state.trials_done == 3 and progress.state.best_score == 0.375


def test_a_stream_that_is_not_a_terminal_gets_plain_lines() -> None:
    assert isinstance(progress_display(stream=io.StringIO()), LineProgress)


def test_without_rich_a_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setitem(sys.modules, "rich", None)  # import rich now raises ImportError
    assert isinstance(progress_display(stream=Terminal()), LineProgress)


def test_usage_comes_from_finished_phases_or_from_the_live_source() -> None:
    source = [UsageSnapshot(calls=3)]  # a client that answered 3 calls before the run
    from_events = RunProgress()
    live = RunProgress(usage_source=lambda: source[0])
    for event in run_events()[:4]:
        from_events.apply(event)
        live.apply(event)
    source[0] = UsageSnapshot(calls=10)
    assert from_events.usage.calls == 10
    assert live.usage.calls == 7


def test_overlapping_phases_are_shown_together_until_each_finishes() -> None:
    state = RunProgress()
    state.apply(PhaseStarted("bootstrap"))
    state.apply(PhaseStarted("baseline"))
    assert state.phase == "bootstrap + baseline"
    state.apply(PhaseFinished("baseline", 1.0, UsageSnapshot()))
    assert state.phase == "bootstrap"
    state.apply(PhaseFinished("bootstrap", 2.0, UsageSnapshot()))
    state.apply(PhaseStarted("search", "3 trials"))
    assert (state.phase, state.phase_detail) == ("search", "3 trials")


def test_eta_follows_the_pace_of_the_trials() -> None:
    clock = FakeClock()
    state = RunProgress(clock=clock)
    for event in run_events()[:5]:  # plan ... search started
        state.apply(event)
    clock.now += 10.0
    state.apply(TrialScored(0, CHOICE, 0.5, 15, 0))
    assert state.eta() == pytest.approx(20.0)  # 10 s a trial, two trials left
    state.apply(RunFinished(0.5, 0.1, 10.0, USAGE))
    assert state.eta() == 0.0


def test_eta_of_a_resumed_run_follows_the_new_trials_not_the_replayed_ones() -> None:
    clock = FakeClock()
    state = RunProgress(clock=clock)
    state.apply(RunPlanned("mipro", 50, 40, 5000))
    state.apply(PhaseStarted("search", "50 trials"))
    for number in range(40):  # journaled by the interrupted run: replayed at once
        state.apply(TrialScored(number, CHOICE, 0.5, 15, 0))
    for number in range(40, 48):
        clock.now += 10.0
        state.apply(TrialScored(number, CHOICE, 0.5, 15, 0))
    assert state.eta() == pytest.approx(20.0)  # 10 s a trial, two trials left


def test_eta_just_after_a_resume_takes_the_pace_of_this_calls_trials_only() -> None:
    clock = FakeClock()
    state = RunProgress(clock=clock)
    state.apply(RunPlanned("mipro", 50, 40, 5000))
    state.apply(PhaseStarted("search", "50 trials"))
    clock.now += 3.0  # reading the journal back
    for number in range(40):  # journaled by the interrupted run: replayed at once
        state.apply(TrialScored(number, CHOICE, 0.5, 15, 0, replayed=True))
    assert state.eta() is None  # no trial of this call's yet: no pace
    clock.now += 10.0
    state.apply(TrialScored(40, CHOICE, 0.5, 15, 0))
    assert state.eta() == pytest.approx(90.0)  # 10 s a trial, nine trials left


class _Stop(Exception):
    pass


@pytest.mark.anyio
async def test_a_resumed_run_tells_which_trials_it_read_back_from_its_journal(tmp_path: Path) -> None:
    budget = {**SMALL_BUDGET, "n_trials": 10, "parallel_trials": 1}
    told: list[list[TrialScored]] = [[], []]
    async with FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server, lm_for(server) as lm:
        for call, stop_after in ((0, 4), (1, None)):

            def follow(
                event: Event, trials: list[TrialScored] = told[call], stop: int | None = stop_after
            ) -> None:
                if isinstance(event, TrialScored):
                    trials.append(event)
                    if len(trials) == stop:
                        raise _Stop

            try:
                await aprompt.optimize(
                    TwoStageProgram(),
                    examples(0, 60),
                    metric,
                    valset=examples(200, 230),
                    lm=lm,
                    budget=budget,
                    seed=1,
                    run_dir=tmp_path,
                    on_event=follow,
                )
            except _Stop:
                assert call == 0
    assert [(t.number, t.replayed) for t in told[0]] == [(n, False) for n in range(4)]
    assert [(t.number, t.replayed) for t in told[1]] == [(n, n < 4) for n in range(10)]
    assert [t.choice for t in told[1][:4]] == [t.choice for t in told[0]]


def test_eta_before_the_search_uses_the_planned_calls() -> None:
    clock = FakeClock()
    source = [UsageSnapshot()]
    state = RunProgress(usage_source=lambda: source[0], clock=clock)
    state.apply(RunPlanned("mipro", 3, 40, 500))
    source[0] = UsageSnapshot(calls=100)
    clock.now += 10.0
    assert state.eta() == pytest.approx(40.0)  # 100 of 500 calls in 10 s


def test_durations_read_naturally() -> None:
    assert [format_duration(s) for s in (None, 4.4, 75.2, 3725)] == ["?", "4s", "1m 15s", "1h 02m"]


@pytest.mark.anyio
async def test_the_live_panel_renders_to_a_rich_console() -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    source = [UsageSnapshot()]
    async with LiveProgress(console, usage=lambda: source[0], refresh_per_second=50) as progress:
        progress(run_events()[0])
        source[0] = USAGE  # what the run has used since its plan
        feed(progress, run_events()[1:-1])
        panel = out.getvalue()
        progress(run_events()[-1])
    text = out.getvalue()
    for label in ("phase", "trials", "best score", "LM calls", "tokens", "cache hits", "429s", "ETA"):
        assert label in panel, label
    assert "3/3" in panel and "(1 failed)" in panel
    assert "0.375  (baseline 0.100)" in panel
    assert "75 of ~500 planned" in panel  # LM calls sent: 100 calls answered, 25 of them cache hits
    assert "25% of 100 calls" in panel and "3  (retries 0" in panel
    assert "new best: 0.375" in text  # notable events are logged above the panel
    last_frame = text[text.rindex("aprompt · mipro") :]  # it stays on screen
    assert "phase       done" in last_frame and "ETA 0s" in last_frame


def test_the_live_panel_shows_the_state_before_any_trial() -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    progress = LiveProgress(console)
    progress(RunPlanned("mipro", 12, 40, 500))
    progress(PhaseStarted("bootstrap"))
    console.print(progress.render())
    text = out.getvalue()
    assert "aprompt · mipro" in text and "bootstrap" in text and "0/12" in text and "ETA ?" in text


@pytest.mark.anyio
async def test_the_lines_above_the_live_panel_are_plain_text_not_markup() -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    async with LiveProgress(console) as progress:
        progress(PhaseFinished("propose", 2.0, UsageSnapshot(calls=10)))
        # A proposer's reply quoted in a drop reason may hold anything, a stray closing tag included.
        progress(CandidateDropped("answer", 1, "reads as no instruction: [/INST] [bold]Answer"))
    text = out.getvalue()
    assert "[propose] done in 2s" in text
    assert "reads as no instruction: [/INST] [bold]Answer" in text


#: A drop's reason as a proposal refused by the provider gives it: the provider's message, quoted whole.
HOSTILE_REASON = "dropped after 3 attempt(s): RequestRejectedError: HTTP 400: policy \x1b]0;owned\x07 \x1b[2J"


@pytest.mark.anyio
async def test_both_displays_write_the_control_characters_of_a_drop_reason_as_escapes() -> None:
    from rich.console import Console

    lines, live = io.StringIO(), io.StringIO()
    console = Console(file=live, force_terminal=True, width=200, color_system=None)
    async with LiveProgress(console) as panel:
        for display in (LineProgress(lines), panel):
            display(CandidateDropped("answer", 1, HOSTILE_REASON))
    for text in (lines.getvalue(), live.getvalue()):
        assert "\x1b]0;owned" not in text and "\x07" not in text and "\x1b[2J" not in text
        assert "policy \\x1b]0;owned\\x07 \\x1b[2J" in text


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::aprompt.InexactResumeWarning")
async def test_a_resumed_run_on_the_same_client_shows_its_own_calls_not_the_earlier_calls(
    tmp_path: Path,
) -> None:
    """A run stopped by a limit and resumed with the same client: the client's count holds the first
    call's requests, which the display of the second must not show as its own."""
    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
    ):
        # The second call resumes with the limit raised, which the run warns of.
        for limits in (aprompt.Limits(max_lm_calls=200), None):
            display = progress_display(quiet=True, usage=lambda: lm.usage)
            shown: list[int] = []

            def follow(event: Event, display: Progress = display, shown: list[int] = shown) -> None:
                display(event)
                shown.append(display.state.usage.lm_calls)

            result = await aprompt.optimize(
                TwoStageProgram(),
                examples(0, 60),
                metric,
                valset=examples(200, 230),
                lm=lm,
                budget=SMALL_BUDGET,
                seed=1,
                run_dir=tmp_path,
                limits=limits,
                on_event=follow,
            )
            assert shown[0] == 0 and max(shown) == shown[-1] == result.usage.lm_calls
    assert result.stopped_by is None and lm.usage.lm_calls > result.usage.lm_calls > 0


@pytest.mark.anyio
async def test_a_log_closed_during_the_run_leaves_the_run_going(tmp_path: Path) -> None:
    """The app closes the log the lines go to (a handler rotated, a file closed early): the run returns
    its result, not the log's error."""
    log = (tmp_path / "progress.log").open("w")
    display = LineProgress(log)

    def follow(event: Event) -> None:
        display(event)
        if isinstance(event, RunPlanned):
            log.close()

    async with (
        FakeOpenAIServer(responder=World(), api_key=TEST_API_KEY) as server,
        lm_for(server) as lm,
    ):
        result = await aprompt.optimize(
            TwoStageProgram(),
            examples(0, 60),
            metric,
            valset=examples(200, 230),
            lm=lm,
            budget=SMALL_BUDGET,
            seed=1,
            on_event=follow,
        )
    assert len(result.trials) == 6 and display.state.finished
    assert (tmp_path / "progress.log").read_text().startswith("plan: mipro, 6 trials")
