"""The tables of ``aprompt report``'s page: what the search favoured, the evaluations, usage and time, and
the validation examples (still failing, fixed, broken).

Every value from the run is escaped: prompts, demos and examples are user data and may hold markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from typing import Any

from aprompt._optimize.per_example import ExampleOutcome, ExampleRow, ExampleTable
from aprompt.run._report_text import AS_WRITTEN, score_text
from aprompt.run._report_view import CandidateStats, RunView

__all__ = [
    "MAX_EXAMPLES_SHOWN",
    "MAX_VALUE_CHARS",
    "USAGE_TERMS",
    "choice_cell",
    "escape",
    "evaluations_section",
    "examples_section",
    "html_table",
    "preferences_section",
    "usage_section",
]

#: Examples shown per list (failing, fixed, broken) before the rest fold away.
MAX_EXAMPLES_SHOWN = 20
#: Characters of one value (an input, an output, a label) shown in the examples' tables.
MAX_VALUE_CHARS = 600


def escape(value: object) -> str:
    """``value`` as text, escaped for HTML (attributes included)."""
    return html.escape(str(value), quote=True)


def choice_cell(choice: Mapping[str, int]) -> str:
    """A choice of candidates, escaped (an empty one is the program as written)."""
    return ", ".join(f"{escape(k)}={v}" for k, v in choice.items()) or AS_WRITTEN


def html_table(headers: Iterable[str], rows: Iterable[Iterable[str]], numeric: Iterable[int] = ()) -> str:
    """A table of ready-made (escaped) cells; the columns ``numeric`` are aligned right."""
    right = set(numeric)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{cell}</td>' if i in right else f"<td>{cell}</td>" for i, cell in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _bar(count: int, most: int, css: str = "") -> str:
    width = 0 if most == 0 else round(120 * count / most)
    return f'<span class="bar {css}" style="width:{width}px"></span> {count}'


def preferences_section(view: RunView, stats: Mapping[str, list[CandidateStats]]) -> str:
    """Per searched parameter, how often the search tried each candidate and how it scored."""
    if not stats:
        return '<p class="note">No trials yet.</p>'
    parts = [
        "<p class='muted'>How often the search tried each candidate (blue: all trials; orange: the later "
        "half, where the surrogate's preference shows), its mean mini-batch score, and its best full "
        "evaluation. The chosen candidate is highlighted.</p>"
    ]
    for param, rows in stats.items():
        name, _, part = param.rpartition(".")
        chosen = (view.best_choice or {}).get(param)
        most = max((r.tried for r in rows), default=0)
        most_late = max((r.tried_late for r in rows), default=0)
        lines = []
        for row in rows:
            if part == "instruction":
                text = view.instructions.get(name, {}).get(row.index)
                what = escape((text or "")[:110] + ("…" if text and len(text) > 110 else ""))
                what = what or ("" if row.index == 0 else "<i>not journaled</i>")
            elif part == "format":
                formats = view.reply_formats.get(name, ())
                what = f"{formats[row.index]} reply" if row.index < len(formats) else "?"
            else:
                sets = view.demo_sets.get(name, ())
                what = f"{len(sets[row.index])} demos" if row.index < len(sets) else "?"
            if row.index == 0:
                what = f"<i>original</i> {what}"
            cells = [
                str(row.index),
                what,
                _bar(row.tried, most),
                _bar(row.tried_late, most_late, "late"),
                score_text(row.mean_score),
                score_text(row.best_full),
            ]
            css = ' class="chosen"' if row.index == chosen else ""
            lines.append(
                f"<tr{css}>"
                + "".join(
                    f'<td class="{"text" if n == 1 else "num" if n >= 4 else ""}">{c}</td>'
                    for n, c in enumerate(cells)
                )
                + "</tr>"
            )
        head = "".join(
            f"<th>{h}</th>" for h in ("#", "candidate", "tried", "later half", "mean mini-batch", "best full")
        )
        parts.append(f"<h3>{escape(param)}</h3><table class='wide'><tr>{head}</tr>{''.join(lines)}</table>")
    return "".join(parts)


def evaluations_section(view: RunView) -> str:
    """The full evaluations, and every mini-batch trial folded away."""
    rows = [
        [
            str(t["number"]),
            score_text(t.get("score")),
            str(len(t.get("example_ids", ()))),
            str(t.get("n_failed", 0)),
            f"{float(t.get('seconds', 0.0)):.1f}",
            choice_cell(t["choice"]),
        ]
        for t in view.trials
    ]
    fulls = [
        [
            str(f["after_trial"]),
            score_text(f["score"]),
            str(len(f.get("scores", {}))),
            str(f.get("n_failed", 0)),
            choice_cell(f["choice"]),
        ]
        for f in view.full_evals
    ]
    return (
        "<h3>Full evaluations (validation set)</h3>"
        + html_table(["after trial", "score", "examples", "failed", "choice"], fulls, numeric=(0, 1, 2, 3))
        + f"<details><summary>All {len(rows)} mini-batch trials</summary>"
        + html_table(["#", "score", "examples", "failed", "seconds", "choice"], rows, numeric=(0, 1, 2, 3, 4))
        + "</details>"
    )


def usage_section(view: RunView) -> str:
    """LM calls, tokens and seconds per phase of the run's last call, with what the columns mean."""
    if not view.phases:
        return (
            '<p class="note">Usage per phase is saved by <code>aprompt optimize</code> (in '
            "<code>result.json</code> beside the journal) once a run finishes; this run has none.</p>"
        )
    keys = (
        "requests",
        "retries",
        "cache_hits",
        "calls",
        "prompt_tokens",
        "completion_tokens",
        "rate_limited",
    )
    rows, totals = [], dict.fromkeys(keys, 0)
    seconds = 0.0
    for phase in view.phases:
        usage = phase.get("usage", {})
        seconds += float(phase.get("seconds", 0.0))
        for key in keys:
            totals[key] += int(usage.get(key, 0))
        rows.append(
            [escape(phase.get("phase", "?")), f"{float(phase.get('seconds', 0.0)):.1f}"]
            + [f"{int(usage.get(k, 0)):,}" for k in keys]
        )
    if all("started" in phase for phase in view.phases):
        # Phases overlap (a step starts when its inputs exist): the total is the span they cover.
        ends = [float(p["started"]) + float(p.get("seconds", 0.0)) for p in view.phases]
        seconds = max(ends) - min(float(p["started"]) for p in view.phases)
    rows.append(["<b>total</b>", f"<b>{seconds:.1f}</b>"] + [f"<b>{totals[k]:,}</b>" for k in keys])
    headers = [
        "phase",
        "seconds",
        "LM calls sent",
        "retries",
        "cache hits",
        "calls answered",
        "prompt tokens",
        "completion tokens",
        "429s",
    ]
    resumed = ""
    if view.lm_calls is not None and view.lm_calls != totals["requests"]:
        resumed = (
            f'<p class="note">The run was resumed: this table is its last call\'s; the run sent '
            f"{view.lm_calls:,} LM calls in all.</p>"
        )
    return html_table(headers, rows, numeric=range(1, 9)) + resumed + USAGE_TERMS


#: What the usage columns and cards mean (one meaning everywhere; see :mod:`aprompt.lm.usage`).
USAGE_TERMS = (
    '<p class="muted"><b>LM calls sent</b>: requests sent to the endpoints, retries included (what '
    "<code>max_lm_calls</code> counts). <b>Cache hits</b>: calls answered from the cache, which send "
    "nothing. <b>Calls answered</b>: cache hits plus calls an endpoint answered.</p>"
)


def _value(value: Any) -> str:
    """One input, output or label set, escaped and cut at :data:`MAX_VALUE_CHARS`."""
    if isinstance(value, Mapping):
        text = "\n".join(
            f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}" for k, v in value.items()
        )
    else:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 1] + "…"
    return escape(text)


def _output(outcome: ExampleOutcome) -> str:
    if not outcome.recorded:
        return '<span class="note">not recorded (the run was resumed after a crash)</span>'
    parts = [] if outcome.output is None else [_value(outcome.output)]
    if outcome.error:
        parts.append(f'<span class="bad">{_value(outcome.error)}</span>')
    if outcome.feedback:
        parts.append(f'<span class="muted">feedback: {_value(outcome.feedback)}</span>')
    return "\n".join(parts) or '<span class="note">no output</span>'


def _example_rows(rows: list[ExampleRow], baseline: bool, css: str = "") -> str:
    headers = ["example", "inputs", "output", "expected", "score"] + (
        ["baseline", "baseline output"] if baseline else []
    )

    def row_html(row: ExampleRow) -> str:
        cells = [
            f"<td>{escape(row.example_id)}</td>",
            f"<td>{_value(row.inputs)}</td>",
            f"<td>{_output(row.outcome)}</td>",
            f"<td>{_value(row.labels)}</td>",
            f'<td class="num">{score_text(row.outcome.score)}</td>',
        ]
        if baseline:
            base = row.baseline or ExampleOutcome(None, recorded=False)
            cells += [f'<td class="num">{score_text(base.score)}</td>', f"<td>{_output(base)}</td>"]
        return f"<tr>{''.join(cells)}</tr>"

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    shown = "".join(row_html(r) for r in rows[:MAX_EXAMPLES_SHOWN])
    table = f"<table class='wide examples {css}'><tr>{head}</tr>{shown}</table>"
    rest = rows[MAX_EXAMPLES_SHOWN:]
    if rest:
        more = "".join(row_html(r) for r in rest)
        table += (
            f"<details><summary>{len(rest)} more</summary>"
            f"<table class='wide examples {css}'><tr>{head}</tr>{more}</table></details>"
        )
    return table


def examples_section(view: RunView) -> str:
    """The validation examples the returned program still fails, and those it fixed or broke."""
    table: ExampleTable | None = view.examples
    if table is None or not len(table):
        return (
            '<p class="note">Per-example outcomes are journaled when a run finishes (by this aprompt '
            "version); this run has none.</p>"
        )
    baseline = any(r.baseline is not None for r in table.rows)
    failing, fixed, broken = table.failing(), table.fixed(), table.broken()
    scored = sum(1 for r in table.rows if r.outcome.score is not None)
    parts = [
        f"<h3 id='failing'>Still failing: {len(failing)} of {scored} validation examples</h3>",
        _example_rows(failing, baseline, "failing")
        if failing
        else '<p class="muted">None: every scored example passes.</p>',
    ]
    if baseline:
        parts += [
            f"<h3 id='fixed'>Fixed compared with the baseline: {len(fixed)}</h3>",
            _example_rows(fixed, baseline) if fixed else '<p class="muted">None.</p>',
            f"<h3 id='broken'>Broken compared with the baseline: {len(broken)}</h3>",
            _example_rows(broken, baseline) if broken else '<p class="muted">None.</p>',
        ]
    unscored = table.unscored()
    if unscored:
        parts.append(f'<p class="note">{len(unscored)} examples were left unscored by LM failures.</p>')
    return "".join(parts)
