"""Progress of an optimization run, followed from its events: a live panel on a terminal, lines elsewhere.

:class:`RunProgress` folds the events into a few numbers (phase, trials, best score, usage, ETA); the
displays render it. :func:`progress_display` picks one: a live `rich <https://rich.readthedocs.io>`_ panel
when the stream is a terminal and rich is installed (``pip install 'aprompt[ui]'``), one plain line per
notable event otherwise, nothing when quiet. Each display is an async context manager and, inside it, the
``on_event`` callback of :func:`aprompt.optimize`.

Example::

    async with aprompt.OpenAICompatibleLM("gpt-4o-mini") as lm:
        async with progress_display(usage=lambda: lm.usage) as on_event:
            result = await aprompt.optimize(program, trainset, metric, lm=lm, on_event=on_event)
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import anyio.abc
import attrs

from aprompt._optimize.events import (
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
)
from aprompt._terminal import terminal_safe
from aprompt.lm.usage import UsageSnapshot

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = [
    "LineProgress",
    "LiveProgress",
    "Progress",
    "RunProgress",
    "UsageSource",
    "format_duration",
    "progress_display",
    "rich_available",
]

UsageSource = Callable[[], UsageSnapshot]
"""Returns the LM usage so far (e.g. ``lambda: lm.usage``), for usage figures between phases."""


#: How many of the latest trials the ETA takes the pace of.
PACE_WINDOW = 8


def rich_available() -> bool:
    """Whether the optional ``rich`` package (the ``ui`` extra) can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def format_duration(seconds: float | None) -> str:
    """``75.2`` → ``"1m 15s"``; ``None`` → ``"?"``."""
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


@attrs.define
class RunProgress:
    """What a run has done so far, folded from its events; every display renders one of these.

    ``usage`` is the live figure when a :data:`UsageSource` is given, less what the source had counted
    when the run was planned (a client that served earlier calls, an earlier call of a resumed run), else
    the sum of the finished phases' usage (events carry usage only when a phase ends).
    """

    usage_source: UsageSource | None = None
    clock: Callable[[], float] = time.monotonic
    strategy: str = ""
    phase: str = "starting"
    phase_detail: str = ""
    trials_done: int = 0
    trials_planned: int = 0
    trials_failed: int = 0
    full_evals: int = 0
    best_score: float | None = None
    baseline_score: float | None = None
    expected_lm_calls: int = 0
    finished: bool = False
    phase_usage: UsageSnapshot = attrs.field(factory=UsageSnapshot)
    #: Phases started and not finished, with their details, in the order they started.
    running: list[tuple[str, str]] = attrs.field(factory=list)
    started: float = attrs.field(init=False)
    search_started: float | None = attrs.field(default=None, init=False)
    ended: float | None = attrs.field(default=None, init=False)
    #: When the search started and its latest trials were scored: the pace of the recent trials.
    recent_trials: deque[float] = attrs.field(
        factory=lambda: deque(maxlen=PACE_WINDOW + 1), init=False, repr=False
    )
    #: The source's figure when the run was planned: its usage before this run is not this run's.
    usage_before: UsageSnapshot = attrs.field(factory=UsageSnapshot, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.started = self.clock()

    def apply(self, event: Event) -> None:
        """Fold one event in."""
        if isinstance(event, RunPlanned):
            if self.usage_source is not None:
                self.usage_before = self.usage_source()
            self.strategy = event.strategy
            self.trials_planned = event.n_trials
            self.expected_lm_calls = event.expected_lm_calls
        elif isinstance(event, PhaseStarted):
            self.running.append((event.phase, event.detail))
            self._show_running()
            if event.phase == "search" and self.search_started is None:
                self.search_started = self.clock()
                self.recent_trials.append(self.search_started)
        elif isinstance(event, PhaseFinished):
            self.phase_usage = self.phase_usage + event.usage
            running = [name for name, _ in self.running]
            if event.phase in running:
                del self.running[running.index(event.phase)]
            self._show_running()
        elif isinstance(event, TrialScored):
            self.trials_done += 1
            self.trials_failed += event.score is None
            if self.search_started is not None:
                if not event.replayed:
                    self.recent_trials.append(self.clock())
                elif len(self.recent_trials) == 1:
                    # Read back before this call ran a trial: its pace starts when the replay is over.
                    self.recent_trials[0] = self.clock()
        elif isinstance(event, FullEvaluation):
            self.full_evals += 1
            if event.is_baseline:
                self.baseline_score = event.score
        elif isinstance(event, NewBest):
            self.best_score = event.score
        elif isinstance(event, RunFinished):
            self.finished, self.phase, self.phase_detail = True, "done", ""
            self.best_score, self.baseline_score = event.best_score, event.baseline_score
            self.phase_usage = event.usage
            self.ended = self.clock()

    def _show_running(self) -> None:
        """Phases overlap (a step starts when its inputs exist): show every one going on, the latest's
        detail; between phases, the last one shown stays."""
        if self.running:
            self.phase = " + ".join(name for name, _ in self.running)
            self.phase_detail = self.running[-1][1]

    @property
    def usage(self) -> UsageSnapshot:
        if self.usage_source is not None and not self.finished:
            return self.usage_source() - self.usage_before
        return self.phase_usage

    @property
    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else self.clock()) - self.started

    def eta(self) -> float | None:
        """Seconds left: from the pace of the latest trials once the search runs, before it from the LM
        calls against the planned total (an over-estimate: the plan counts calls before caching).

        The pace is that of the last ``PACE_WINDOW`` trials this call ran: a resumed run's trials read
        back from its journal (``TrialScored.replayed``) come at once, and would make the trials still
        to run look nearly free."""
        if self.finished:
            return 0.0
        now = self.clock()
        scored = len(self.recent_trials) - 1  # the trials in the window (its first time is no trial)
        if scored > 0 and self.trials_planned:
            per_trial = (now - self.recent_trials[0]) / scored
            return per_trial * max(0, self.trials_planned - self.trials_done)
        calls = self.usage.calls
        if calls and self.expected_lm_calls:
            return (now - self.started) * max(0, self.expected_lm_calls - calls) / calls
        return None


def _choice_text(choice: Any) -> str:
    return ", ".join(f"{key}={value}" for key, value in dict(choice).items())


def _usage_text(usage: UsageSnapshot) -> str:
    return usage.describe()


def event_line(event: Event, state: RunProgress) -> str | None:
    """One human line for a notable event (``None`` for the rest); ``state`` has already applied it.
    Its control characters are written as escapes: a drop's reason may quote a provider's message."""
    line = _event_text(event, state)
    return None if line is None else terminal_safe(line)


def _event_text(event: Event, state: RunProgress) -> str | None:
    if isinstance(event, RunPlanned):
        return (
            f"plan: {event.strategy}, {event.n_trials} trials on {event.val_size} validation examples, "
            f"about {event.expected_lm_calls:,} LM calls before caching"
        )
    if isinstance(event, PhaseStarted):
        return f"[{event.phase}] started" + (f": {event.detail}" if event.detail else "")
    if isinstance(event, PhaseFinished):
        return f"[{event.phase}] done in {format_duration(event.seconds)}: {_usage_text(event.usage)}"
    if isinstance(event, CandidateProposed) and event.kind == "instruction":
        return f"  proposed {event.predictor} instruction #{event.index}: {str(event.value)[:100]!r}"
    if isinstance(event, CandidateDropped):
        return f"  proposal dropped ({event.predictor} #{event.index}): {event.reason[:100]}"
    if isinstance(event, TrialScored):
        score = "failed" if event.score is None else f"{event.score:.3f}"
        done = f"{state.trials_done}/{state.trials_planned} done"
        return f"  trial {event.number} ({done}): {score} ({_choice_text(event.choice)})"
    if isinstance(event, FullEvaluation):
        kind = "baseline" if event.is_baseline else "full evaluation"
        return f"  {kind}: {event.score:.3f} on {event.n_examples} examples ({_choice_text(event.choice)})"
    if isinstance(event, NewBest):
        return f"  new best: {event.score:.3f}"
    if isinstance(event, RunFinished):
        stopped = f", stopped by {event.stopped_by}" if event.stopped_by else ""
        return (
            f"finished in {format_duration(event.seconds)}{stopped}: best {event.best_score:.3f} "
            f"(baseline {event.baseline_score:.3f}); {_usage_text(event.usage)}"
        )
    return None


class Progress:
    """A display that does nothing (``quiet``); the base of the others.

    Use it as an async context manager; inside, call it with each event (it is an ``on_event``).
    """

    def __init__(self, usage: UsageSource | None = None) -> None:
        self.state = RunProgress(usage_source=usage)

    def __call__(self, event: Event) -> None:
        self.state.apply(event)

    async def __aenter__(self) -> Progress:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class LineProgress(Progress):
    """One plain line per notable event, for logs and pipes (no cursor tricks)."""

    def __init__(self, stream: TextIO | None = None, usage: UsageSource | None = None) -> None:
        super().__init__(usage)
        self._stream: TextIO | None = stream if stream is not None else sys.stdout

    def __call__(self, event: Event) -> None:
        super().__call__(event)
        line = event_line(event, self.state)
        if line is not None and self._stream is not None:
            try:
                print(line, file=self._stream, flush=True)
            except (OSError, ValueError):
                # Its reader went away (`| head`: OSError) or the log was closed (ValueError): the run goes
                # on without the lines.
                self._stream = None


class LiveProgress(Progress):
    """A live rich panel (phase, trials, best score, calls, tokens, cache hits, 429s, ETA), redrawn a few
    times a second; phases, full evaluations and new bests are also logged above it.

    Needs ``rich`` (the ``ui`` extra). Pass ``console`` to draw somewhere else than the terminal.
    """

    def __init__(
        self,
        console: Console | None = None,
        usage: UsageSource | None = None,
        refresh_per_second: float = 4.0,
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__(usage)
        self.console = console if console is not None else Console()
        self._live = Live(
            console=self.console, auto_refresh=False, transient=False, get_renderable=self.render
        )
        self._interval = 1.0 / refresh_per_second
        self._group: anyio.abc.TaskGroup | None = None
        self._started = False

    def __call__(self, event: Event) -> None:
        super().__call__(event)
        if isinstance(event, PhaseFinished | FullEvaluation | NewBest | CandidateDropped | RunFinished):
            line = event_line(event, self.state)
            if line is not None:
                # Plain text: a phase's "[name]" or a proposal's "[/INST]" is no rich markup.
                self.console.print(line.strip(), markup=False, highlight=False)
        if self._started:
            self._live.refresh()

    def render(self) -> RenderableType:
        """The panel for the current state."""
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        state, usage = self.state, self.state.usage
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column()
        grid.add_row("phase", state.phase + (f" · {state.phase_detail}" if state.phase_detail else ""))
        planned = max(state.trials_planned, state.trials_done)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(
                total=planned or None,
                completed=state.trials_done,
                width=30,
                complete_style="cyan",
                finished_style="green",
            ),
            f"{state.trials_done}/{planned or '?'}"
            + (f" ({state.trials_failed} failed)" if state.trials_failed else ""),
        )
        grid.add_row("trials", bar)
        best = "–" if state.best_score is None else f"{state.best_score:.3f}"
        if state.baseline_score is not None:
            best += f"  (baseline {state.baseline_score:.3f})"
        grid.add_row("best score", best)
        planned_calls = f" of ~{state.expected_lm_calls:,} planned" if state.expected_lm_calls else ""
        grid.add_row("LM calls", f"{usage.lm_calls:,}{planned_calls}")
        split = f"{usage.prompt_tokens:,} prompt + {usage.completion_tokens:,} completion"
        grid.add_row("tokens", f"{usage.total_tokens:,} ({split})")
        hit_rate = f"{usage.cache_hits / usage.calls:.0%}" if usage.calls else "–"
        grid.add_row("cache hits", f"{hit_rate} of {usage.calls:,} calls")
        grid.add_row("429s", f"{usage.rate_limited}  (retries {usage.retries}, errors {usage.errors})")
        grid.add_row("time", f"{format_duration(state.elapsed)} elapsed, ETA {format_duration(state.eta())}")
        title = "aprompt" + (f" · {state.strategy}" if state.strategy else "")
        return Panel(grid, title=title, title_align="left", expand=False)

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            self._live.refresh()

    async def __aenter__(self) -> LiveProgress:
        self._live.start(refresh=True)
        self._started = True
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._tick)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._group is not None:
                self._group.cancel_scope.cancel()
                await self._group.__aexit__(None, None, None)
                self._group = None
        finally:
            self._started = False
            self._live.refresh()
            self._live.stop()


def progress_display(
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
    usage: UsageSource | None = None,
    live: bool | None = None,
) -> Progress:
    """The display that suits ``stream`` (default: stdout).

    Args:
        quiet: show nothing.
        usage: live usage figures (``lambda: lm.usage``); without it, usage updates when a phase ends.
        live: force the live panel (True) or plain lines (False); default: live when ``stream`` is a
            terminal and rich is installed.
    """
    target = stream if stream is not None else sys.stdout
    if quiet:
        return Progress(usage)
    if live is None:
        live = _isatty(target) and rich_available()
    if live and rich_available():
        from rich.console import Console

        return LiveProgress(Console(file=target), usage)
    return LineProgress(target, usage)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
