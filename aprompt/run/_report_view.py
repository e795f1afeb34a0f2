"""A run read back from its ``run_dir``: :func:`load_run` gathers a :class:`RunView` (the journal's trials,
full evaluations, candidates and result, plus ``original_program.json`` and ``result.json`` beside it when
the command line wrote them), and :func:`choice_stats` sums up how the search treated each candidate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt._optimize.per_example import ExampleTable
from aprompt._optimize.run_context import BASELINE_KIND
from aprompt._optimize.run_outputs import EXAMPLES_KIND
from aprompt._optimize.strategies.instruction_steps import INSTRUCTIONS_KIND
from aprompt.lm.usage import IN_FLIGHT_KIND
from aprompt.program.adapter import REPLY_FORMATS
from aprompt.run.journal import JOURNAL_FILE, RunJournal

__all__ = [
    "ORIGINAL_FILE",
    "RESULT_FILE",
    "CandidateStats",
    "PromptView",
    "RunView",
    "choice_stats",
    "load_run",
]

ORIGINAL_FILE = "original_program.json"
RESULT_FILE = "result.json"


@attrs.frozen
class PromptView:
    """One predictor's prompt: its instruction (``None`` when the journal does not hold it), demos, and
    reply format (``None`` when the run does not show it: no original program beside the journal)."""

    instruction: str | None
    demos: tuple[Mapping[str, Any], ...]
    reply_format: str | None = None


@attrs.frozen
class CandidateStats:
    """How the search treated one candidate of one parameter."""

    index: int
    tried: int
    tried_late: int
    mean_score: float | None
    best_full: float | None


@attrs.frozen
class RunView:
    """A run as recorded in its ``run_dir`` (finished or not)."""

    run_dir: Path
    config: Mapping[str, Any]
    predictors: tuple[str, ...]
    trials: tuple[Mapping[str, Any], ...]
    full_evals: tuple[Mapping[str, Any], ...]
    instructions: Mapping[str, Mapping[int, str]]
    demo_sets: Mapping[str, tuple[tuple[Mapping[str, Any], ...], ...]]
    dropped: tuple[tuple[str, str], ...]
    best_choice: Mapping[str, int] | None
    best_score: float | None
    finished: bool
    phases: tuple[Mapping[str, Any], ...] = ()
    seconds: float | None = None
    stopped_by: str | None = None
    #: per predictor, its reply formats as the search indexes them (its own first).
    reply_formats: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    #: the returned and the unoptimized program per validation example (a finished run's; ``None``
    #: when the run has not finished, or was journaled by an aprompt before per-example records).
    examples: ExampleTable | None = None
    #: why the returned program was chosen: ``reason``, ``evidence`` (n, mean, low, high, level), ...
    #: (:class:`~aprompt._optimize.final_pick.FinalPick` as JSON), when the run journaled it.
    pick: Mapping[str, Any] | None = None
    #: requests in flight over the last call of the run: ``(seconds since it began, mean in flight)``.
    in_flight: tuple[tuple[float, float], ...] = ()
    #: what the run spent against its limits, earlier calls of a resumed run included (``result.spent``:
    #: ``lm_calls``, ``tokens``, ...); ``phases`` cover the last call alone.
    spent: Mapping[str, Any] = attrs.field(factory=dict)
    #: journal records that failed their check and are left out of this view, each described.
    unreadable: tuple[str, ...] = ()

    @property
    def lm_calls(self) -> int | None:
        """Requests the run sent, retries and earlier calls of a resumed run included (what
        ``max_lm_calls`` counts); ``None`` when no result.json tells."""
        found = self.spent.get("lm_calls")
        if isinstance(found, int | float) and not isinstance(found, bool):
            return int(found)
        if self.phases:
            return sum(int(p.get("usage", {}).get("requests", 0)) for p in self.phases)
        return None

    @property
    def result_unreadable(self) -> bool:
        """Whether the run's result record failed its check: whether it finished is unknown."""
        return not self.finished and any(u.startswith("result record ") for u in self.unreadable)

    @property
    def strategy(self) -> str:
        return str(self.config.get("strategy", "?"))

    @property
    def baseline_score(self) -> float | None:
        for full in self.full_evals:
            if not any(full["choice"].values()):
                return float(full["score"])
        return None

    def prompt(self, predictor: str, choice: Mapping[str, int] | None) -> PromptView:
        """The prompt ``predictor`` uses under ``choice`` (``None``: the original)."""
        choice = choice or {}
        i = choice.get(f"{predictor}.instruction", 0)
        d = choice.get(f"{predictor}.demos", 0)
        f = choice.get(f"{predictor}.format", 0)
        sets = self.demo_sets.get(predictor, ())
        formats = self.reply_formats.get(predictor, ())
        return PromptView(
            self.instructions.get(predictor, {}).get(i),
            sets[d] if d < len(sets) else (),
            formats[f] if f < len(formats) else None,
        )


def _read_json(path: Path) -> Any:
    """An optional file beside the journal, or ``None`` when it cannot be read (missing, not JSON, nested
    too deep to decode): the view does without it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _latest_by_key(journal: RunJournal, kind: str, unreadable: list[str]) -> list[Any]:
    """One payload per key (the last readable one written), in the order keys first appeared."""
    found: dict[str, Any] = {}
    for key, payload in journal.entries(kind, unreadable=unreadable):
        found.pop(key, None)  # a resumed run may have rewritten it; keep the position of the newest
        found[key] = payload
    return list(found.values())


def load_run(run_dir: str | os.PathLike[str]) -> RunView:
    """Read the journal (and the optional files beside it) of ``run_dir``.

    A record that fails its check (damaged on disk, or written before checksums) is left out and named
    in :attr:`RunView.unreadable`: the rest of the run is shown (a resume of it is refused).

    Raises:
        ConfigError: ``run_dir`` holds no run journal.
        JournalError: the journal cannot be opened.
    """
    folder = Path(run_dir)
    if not (folder / JOURNAL_FILE).is_file():
        raise ConfigError(f"{folder} holds no run journal ({JOURNAL_FILE}); is it a --run-dir of a run?")
    unreadable: list[str] = []
    # One snapshot: a run in progress that appends between two reads (its last trials, then its result)
    # would otherwise be shown torn, finished with trials missing, or with the config of a run since cleared.
    with RunJournal.open_read_only(folder) as journal, journal.snapshot():

        def latest(kind: str, key: str | None = None) -> Any:
            return journal.latest(kind, key, unreadable=unreadable)

        config = latest("config") or {}
        trials = sorted(_latest_by_key(journal, "trial", unreadable), key=lambda t: int(t.get("number", 0)))
        full_evals = _latest_by_key(journal, "full_eval", unreadable)
        if not full_evals:
            # Scored beside the bootstrap, before the search recorded it: a run a limit stopped then (or
            # a run still going) has the baseline's evaluation alone, and returns (or will) that program.
            baseline = latest(BASELINE_KIND, "all")
            full_evals = [baseline] if isinstance(baseline, Mapping) else []
        raw_sets = latest("demo_sets", "all") or {}
        proposals = dict(journal.entries("proposals", unreadable=unreadable))
        searched = dict(journal.entries(INSTRUCTIONS_KIND, unreadable=unreadable))
        final = latest("result")
        if final is not None and journal.last_kind() != "result":
            # A later call resumed the run after this result and has not returned (it runs, or was
            # stopped): what it has journaled since is shown, not an earlier call's pick as the run's.
            final = None
        examples = _examples(latest(EXAMPLES_KIND)) if final is not None else None
        in_flight = _series(latest(IN_FLIGHT_KIND))
        # Every run journals the prompts it started from; a run made from Python has no ORIGINAL_FILE.
        journaled_original = latest("original_state")
    predictors = tuple(config.get("program", {})) or tuple(raw_sets) or tuple(proposals)
    instructions: dict[str, dict[int, str]] = {name: {} for name in predictors}
    dropped: list[tuple[str, str]] = []
    for name, items in proposals.items():
        kept = [p for p in items if p.get("instruction") is not None]
        dropped += [(name, str(p.get("reason", ""))) for p in items if p.get("instruction") is None]
        instructions.setdefault(name, {}).update({i: str(p["instruction"]) for i, p in enumerate(kept, 1)})
    for name, record in searched.items():
        # The search's own indices: the screen may have dropped proposals, shifting those after them.
        # Index 0, the original, comes from the original prompts below, as for every predictor.
        instructions[name] = {i: str(text) for i, text in enumerate(record.get("instructions", ())) if i}
        dropped += [(name, str(reason)) for reason in record.get("dropped", ())]
    demo_sets = {name: tuple(tuple(s.get("demos", ())) for s in sets) for name, sets in raw_sets.items()}
    # The journal's copy is this run's: a run started over from Python (resume=False) leaves the command
    # line's file of an earlier run there. The file serves journals written before the copy.
    original = journaled_original
    if not isinstance(original, dict):
        original = _read_json(folder / ORIGINAL_FILE)
    result = _read_json(folder / RESULT_FILE)
    if not _same_run(result, final, trials):
        result = None  # an earlier run's: this one started over and has not finished
    for name, (texts, sets) in _candidates(result).items():
        instructions.setdefault(name, {}).update(dict(enumerate(texts)))
        if name not in demo_sets:
            demo_sets[name] = sets
    reply_formats: dict[str, tuple[str, ...]] = {}
    # A file not as save_state writes it (edited by hand) is done without, as a missing one.
    states = original.get("predictors") if isinstance(original, dict) else None
    if isinstance(states, dict):
        for name, state in states.items():
            if not isinstance(state, dict):
                continue
            instructions.setdefault(name, {}).setdefault(0, str(state.get("instruction", "")))
            # Index 0 is the predictor's own format; a searched format parameter's other choice is the other.
            own = str(state.get("reply_format", "fields"))
            reply_formats[name] = (own, *(f for f in REPLY_FORMATS if f != own))
    best_choice, best_score = _best(final, full_evals)
    return RunView(
        run_dir=folder,
        config=config,
        predictors=predictors,
        trials=tuple(trials),
        full_evals=tuple(full_evals),
        instructions=instructions,
        demo_sets=demo_sets,
        dropped=tuple(dropped),
        best_choice=best_choice,
        best_score=best_score,
        finished=final is not None,
        phases=_phases(result),
        seconds=result.get("seconds") if isinstance(result, dict) else None,
        stopped_by=_stopped_by(final, result),
        reply_formats=reply_formats,
        examples=examples,
        pick=_pick(final, result),
        in_flight=in_flight,
        spent=_spent(result),
        unreadable=tuple(unreadable),
    )


def _same_run(result: Any, final: Any, trials: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``result`` (RESULT_FILE) is the result the journal's run returned: a run started over in
    the same run_dir leaves the earlier run's file there until it finishes, or for good when made from
    Python. Its score and pick alone may match another run's (two runs a limit stopped at the baseline):
    its trials must be the journal's too."""
    return (
        isinstance(result, dict)
        and isinstance(final, Mapping)
        and result.get("score") == final.get("score")
        and result.get("best_choice") == final.get("best_choice")
        and _trial_keys(result.get("trials")) == _trial_keys(trials)
    )


def _trial_keys(trials: Any) -> list[tuple[Any, ...]] | None:
    """What tells runs' trials apart: each one's number, choice, mini-batch and score."""
    if not isinstance(trials, Sequence):
        return None
    try:
        return [
            (t["number"], json.dumps(t["choice"], sort_keys=True), list(t["example_ids"]), t["score"])
            for t in trials
        ]
    except (KeyError, TypeError):
        return None


def _phases(result: Any) -> tuple[Mapping[str, Any], ...]:
    """RESULT_FILE's usage per phase; none when a phase is not as the run writes it (a file edited by
    hand): the report leaves usage out rather than fail on it."""
    found = result.get("phases") if isinstance(result, dict) else None
    if not isinstance(found, list) or not all(_is_phase(phase) for phase in found):
        return ()
    return tuple(found)


def _is_phase(phase: Any) -> bool:
    """Whether ``phase`` is a phase as :meth:`OptimizeResult.save` writes it: a name, numbers of seconds
    and a usage of counts."""
    if not isinstance(phase, dict) or not isinstance(phase.get("phase", ""), str):
        return False
    usage = phase.get("usage", {})
    if not isinstance(usage, dict):
        return False
    numbers = [phase.get("seconds", 0.0), phase.get("started", 0.0), *usage.values()]
    return all(isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) for n in numbers)


def _spent(result: Any) -> dict[str, Any]:
    """RESULT_FILE's amounts spent against the limits (none when not a mapping: a file edited by hand)."""
    found = result.get("spent") if isinstance(result, dict) else None
    return dict(found) if isinstance(found, dict) else {}


def _candidates(result: Any) -> dict[str, tuple[list[Any], tuple[tuple[Mapping[str, Any], ...], ...]]]:
    """RESULT_FILE's candidates per predictor: its instructions and demo sets, each predictor's left out
    when not as the run writes them (a file edited by hand)."""
    found = result.get("candidates") if isinstance(result, dict) else None
    if not isinstance(found, dict):
        return {}
    out = {}
    for name, cands in found.items():
        texts = cands.get("instructions", []) if isinstance(cands, dict) else None
        sets = cands.get("demo_sets", []) if isinstance(cands, dict) else None
        if not isinstance(texts, list) or not isinstance(sets, list):
            continue
        if not all(isinstance(s, dict) and isinstance(s.get("demos", []), list) for s in sets):
            continue
        if not all(isinstance(d, dict) for s in sets for d in s.get("demos", [])):
            continue
        out[name] = (texts, tuple(tuple(s.get("demos", ())) for s in sets))
    return out


def _stopped_by(final: Any, result: Any) -> str | None:
    """The limit that stopped the run: journaled with its result (by this aprompt version), else from
    RESULT_FILE (a run journaled before the result record held it)."""
    for source in (final, result):
        if isinstance(source, Mapping) and "stopped_by" in source:
            found = source["stopped_by"]
            return None if found is None else str(found)
    return None


def _examples(found: Any) -> ExampleTable | None:
    if not isinstance(found, Mapping):
        return None
    try:
        return ExampleTable.from_dict(found)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a damaged or foreign record: the report does without it


def _pick(final: Any, result: Any) -> Mapping[str, Any] | None:
    for source in (final, result):
        if isinstance(source, Mapping) and isinstance(source.get("pick"), Mapping):
            return dict(source["pick"])
    return None


def _series(found: Any) -> tuple[tuple[float, float], ...]:
    points = found.get("points") if isinstance(found, Mapping) else None
    if not isinstance(points, list):
        return ()
    try:
        return tuple((float(t), float(n)) for t, n in points)
    except (TypeError, ValueError):
        return ()


def _best(final: Any, full_evals: Sequence[Mapping[str, Any]]) -> tuple[dict[str, int] | None, float | None]:
    if isinstance(final, dict) and "best_choice" in final:
        return dict(final["best_choice"]), float(final["score"])
    if not full_evals:
        return None, None
    top = max(full_evals, key=lambda f: float(f["score"]))  # the first of equals, like the search
    return dict(top["choice"]), float(top["score"])


def choice_stats(view: RunView) -> dict[str, list[CandidateStats]]:
    """Per searched parameter, per candidate: trials that tried it (in all, and in the later half —
    where the surrogate's preference shows), its mean mini-batch score, and its best full evaluation."""
    params: list[str] = []
    for trial in view.trials:
        params += [p for p in trial["choice"] if p not in params]
    half = len(view.trials) // 2
    out: dict[str, list[CandidateStats]] = {}
    for param in params:
        name, _, part = param.rpartition(".")
        size = len(view.instructions.get(name, {})) if part == "instruction" else 0
        size = max(size, len(view.demo_sets.get(name, ())) if part == "demos" else 0)
        size = max([size, *(t["choice"].get(param, 0) + 1 for t in view.trials)])
        rows = []
        for index in range(size):
            picked = [(n, t) for n, t in enumerate(view.trials) if t["choice"].get(param) == index]
            scores = [float(t["score"]) for _, t in picked if t.get("score") is not None]
            fulls = [float(f["score"]) for f in view.full_evals if f["choice"].get(param, 0) == index]
            rows.append(
                CandidateStats(
                    index=index,
                    tried=len(picked),
                    tried_late=sum(1 for n, _ in picked if n >= half),
                    mean_score=math.fsum(scores) / len(scores) if scores else None,
                    best_full=max(fulls) if fulls else None,
                )
            )
        out[param] = rows
    return out
