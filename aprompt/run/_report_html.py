"""The HTML page of ``aprompt report``: one self-contained file (inline CSS, plots as data: URIs).

Every value from the run is escaped: prompts and demos are user data and may hold markup.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping
from typing import Any

from aprompt._optimize.per_example import ExampleOutcome, ExampleRow, ExampleTable
from aprompt.run._report_text import AS_WRITTEN, pick_text, unreadable_text
from aprompt.run._report_view import CandidateStats, PromptView, RunView

__all__ = ["render_report"]

MAX_DEMOS_SHOWN = 3
#: Examples shown per list (failing, fixed, broken) before the rest fold away.
MAX_EXAMPLES_SHOWN = 20
#: Characters of one value (an input, an output, a label) shown in the examples' tables.
MAX_VALUE_CHARS = 600
#: The background of a failing example's row.
FAILING_ROW = "#fdf0ef"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       background: #f5f6f8; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 32px 0 10px; }
h3 { font-size: 14px; margin: 18px 0 6px; color: #3a4358; }
.muted { color: #6b7385; } .note { color: #6b7385; font-style: italic; }
.warn { color: #b3261e; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px;
         margin-top: 16px; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 10px 12px; }
.card .label { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: #6b7385; }
.card .value { font-size: 20px; font-weight: 600; margin-top: 2px; }
.good { color: #1f7a3f; } .bad { color: #b3261e; }
img.plot { width: 100%; max-width: 1000px; background: #fff; border: 1px solid #dde1e8; border-radius: 8px;
           display: block; margin: 10px 0; }
table { border-collapse: collapse; background: #fff; border: 1px solid #dde1e8; margin: 6px 0 12px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceef2; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; font-size: 12px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.wide { width: 100%; }
tr.chosen td { background: #eef7f0; font-weight: 600; }
.bar { display: inline-block; height: 10px; background: #4c72b0; border-radius: 2px; vertical-align: middle; }
.bar.late { background: #dd8452; }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; align-items: start; }
.prompt { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 10px 12px; min-width: 0; }
.prompt.optimized { border-color: #8cc49c; }
.prompt .head { font-weight: 600; margin-bottom: 6px; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f8fa; border-radius: 6px; padding: 8px;
      margin: 4px 0; font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.demo { border-left: 3px solid #c9d3e6; padding-left: 8px; margin: 6px 0; font-size: 12.5px; }
.demo b { color: #3a4358; }
details > summary { cursor: pointer; color: #3a5a9a; margin: 4px 0; }
td.text { max-width: 520px; font-size: 12.5px; }
p.why { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 10px 12px;
        margin-top: 12px; }
table.examples td { font-size: 12.5px; max-width: 300px; white-space: pre-wrap; word-break: break-word; }
table.examples td.num { white-space: nowrap; }
table.examples.failing td { background: FAILING_ROW; }
svg.inflight { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; display: block;
               margin: 10px 0; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _score(value: Any) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def _choice(choice: Mapping[str, int]) -> str:
    return ", ".join(f"{_e(k)}={v}" for k, v in choice.items()) or AS_WRITTEN


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], numeric: Iterable[int] = ()) -> str:
    right = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{cell}</td>' if i in right else f"<td>{cell}</td>" for i, cell in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _card(label: str, value: str, css: str = "") -> str:
    return (
        f'<div class="card"><div class="label">{_e(label)}</div><div class="value {css}">{value}</div></div>'
    )


def _summary(view: RunView) -> str:
    status = "finished" if view.finished else "unknown" if view.result_unreadable else "not finished"
    if view.stopped_by:
        status += f" (stopped by {view.stopped_by})"
    gain = ""
    if view.best_score is not None and view.baseline_score is not None:
        delta = view.best_score - view.baseline_score
        gain = _card("Improvement", f"{delta:+.3f}", "good" if delta > 0 else "bad" if delta < 0 else "")
    hits = sum(int(p.get("usage", {}).get("cache_hits", 0)) for p in view.phases)
    cards = [
        _card("Strategy", _e(view.strategy)),
        _card("Status", _e(status)),
        _card("Baseline", _score(view.baseline_score)),
        _card("Best", _score(view.best_score), "good"),
        gain,
        _card("Trials", str(len(view.trials))),
        _card("Full evaluations", str(len(view.full_evals))),
    ]
    # The run's, earlier calls of a resumed run included (what max_time counts), as the LM calls card.
    seconds = view.spent.get("seconds", view.seconds)
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        cards.append(_card("Time", f"{seconds:.0f} s"))
    if view.phases:
        # The run's, earlier calls of a resumed run included: what max_lm_calls counts.
        cards.append(_card("LM calls sent", f"{view.lm_calls or 0:,}"))
        cards.append(_card("Cache hits", f"{hits:,}"))
    evidence = (view.pick or {}).get("evidence")
    if isinstance(evidence, Mapping) and "mean" in evidence and "n" in evidence:
        # With the baseline kept, the evidence is the strongest challenger's, not the returned program's.
        title = (
            "Best challenger vs baseline"
            if (view.pick or {}).get("kept_baseline")
            else "Evidence vs baseline"
        )
        cards.append(_card(title, f"{float(evidence['mean']):+.3f} on {int(evidence['n'])}"))
    reason = pick_text(view.pick)
    why = f'<p class="why"><b>Why this program:</b> {_e(reason)}</p>' if reason else ""
    return f'<div class="cards">{"".join(cards)}</div>{why}'


def _plots(images: Mapping[str, bytes] | None) -> str:
    if images is None:
        return '<p class="note">Plots need matplotlib: <code>pip install "aprompt[ui]"</code>.</p>'
    if not images:
        return '<p class="note">No trials yet.</p>'
    titles = {"trial_scores": "Score per trial", "best_so_far": "Best score so far"}
    return "".join(
        f'<img class="plot" alt="{_e(titles.get(name, name))}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        for name, png in images.items()
    )


def _demos(demos: tuple[Mapping[str, Any], ...]) -> str:
    if not demos:
        return '<p class="muted">no demos</p>'

    def one(demo: Mapping[str, Any]) -> str:
        fields = "<br>".join(f"<b>{_e(k)}:</b> {_e(str(v)[:400])}" for k, v in demo.items())
        return f'<div class="demo">{fields}</div>'

    shown = "".join(one(d) for d in demos[:MAX_DEMOS_SHOWN])
    rest = demos[MAX_DEMOS_SHOWN:]
    more = f"<details><summary>{len(rest)} more</summary>{''.join(one(d) for d in rest)}</details>"
    return f"<p class='muted'>{len(demos)} demos</p>{shown}{more if rest else ''}"


def _prompt_box(title: str, prompt: PromptView, css: str) -> str:
    text = prompt.instruction
    body = f"<pre>{_e(text)}</pre>" if text is not None else '<p class="note">not in the journal</p>'
    return f'<div class="prompt {css}"><div class="head">{_e(title)}</div>{body}{_demos(prompt.demos)}</div>'


def _format_note(prompt: PromptView) -> str:
    return f", {prompt.reply_format} reply" if prompt.reply_format not in (None, "fields") else ""


def _prompts(view: RunView) -> str:
    if view.best_choice is None:
        return '<p class="note">No combination was fully evaluated yet.</p>'
    parts = []
    for name in view.predictors:
        i = view.best_choice.get(f"{name}.instruction", 0)
        d = view.best_choice.get(f"{name}.demos", 0)
        original = view.prompt(name, None)
        best = view.prompt(name, view.best_choice)
        parts.append(
            f"<h3>{_e(name)}</h3><div class='side'>"
            + _prompt_box("Original", original, "")
            + _prompt_box(
                f"Optimized · instruction #{i}, demo set #{d}{_format_note(best)}", best, "optimized"
            )
            + "</div>"
        )
    return "".join(parts)


def _bar(count: int, most: int, css: str = "") -> str:
    width = 0 if most == 0 else round(120 * count / most)
    return f'<span class="bar {css}" style="width:{width}px"></span> {count}'


def _preferences(view: RunView, stats: Mapping[str, list[CandidateStats]]) -> str:
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
                what = _e((text or "")[:110] + ("…" if text and len(text) > 110 else ""))
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
                _score(row.mean_score),
                _score(row.best_full),
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
        parts.append(f"<h3>{_e(param)}</h3><table class='wide'><tr>{head}</tr>{''.join(lines)}</table>")
    return "".join(parts)


def _trials(view: RunView) -> str:
    rows = [
        [
            str(t["number"]),
            _score(t.get("score")),
            str(len(t.get("example_ids", ()))),
            str(t.get("n_failed", 0)),
            f"{float(t.get('seconds', 0.0)):.1f}",
            _choice(t["choice"]),
        ]
        for t in view.trials
    ]
    fulls = [
        [
            str(f["after_trial"]),
            _score(f["score"]),
            str(len(f.get("scores", {}))),
            str(f.get("n_failed", 0)),
            _choice(f["choice"]),
        ]
        for f in view.full_evals
    ]
    return (
        "<h3>Full evaluations (validation set)</h3>"
        + _table(["after trial", "score", "examples", "failed", "choice"], fulls, numeric=(0, 1, 2, 3))
        + f"<details><summary>All {len(rows)} mini-batch trials</summary>"
        + _table(["#", "score", "examples", "failed", "seconds", "choice"], rows, numeric=(0, 1, 2, 3, 4))
        + "</details>"
    )


def _usage(view: RunView) -> str:
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
            [_e(phase.get("phase", "?")), f"{float(phase.get('seconds', 0.0)):.1f}"]
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
    return _table(headers, rows, numeric=range(1, 9)) + resumed + USAGE_TERMS


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
    return _e(text)


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
            f"<td>{_e(row.example_id)}</td>",
            f"<td>{_value(row.inputs)}</td>",
            f"<td>{_output(row.outcome)}</td>",
            f"<td>{_value(row.labels)}</td>",
            f'<td class="num">{_score(row.outcome.score)}</td>',
        ]
        if baseline:
            base = row.baseline or ExampleOutcome(None, recorded=False)
            cells += [f'<td class="num">{_score(base.score)}</td>', f"<td>{_output(base)}</td>"]
        return f"<tr>{''.join(cells)}</tr>"

    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
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


def _examples(view: RunView) -> str:
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


def _in_flight(view: RunView) -> str:
    """An inline SVG of the mean requests in flight per time slice (no matplotlib needed)."""
    points = view.in_flight
    if not points:
        return '<p class="note">No request timeline was journaled for this run.</p>'
    width, height, left, bottom = 900, 180, 44, 26
    end = points[-1][0] + (points[-1][0] - points[-2][0] if len(points) > 1 else 1.0) / 2
    top = max(1.0, max(n for _, n in points))

    def x(t: float) -> float:
        return left + (width - left - 10) * t / end if end > 0 else left

    def y(n: float) -> float:
        return 8 + (height - bottom - 8) * (1 - n / top)

    line = " ".join(f"{x(t):.1f},{y(n):.1f}" for t, n in points)
    area = f"{x(points[0][0]):.1f},{y(0):.1f} {line} {x(points[-1][0]):.1f},{y(0):.1f}"
    axis = (
        f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - 10}" y2="{y(0):.1f}" stroke="#999"/>'
        f'<text x="{left - 6}" y="{y(top) + 4:.1f}" text-anchor="end" font-size="11">{top:.0f}</text>'
        f'<text x="{left - 6}" y="{y(0) + 4:.1f}" text-anchor="end" font-size="11">0</text>'
        f'<text x="{width - 10}" y="{height - 6}" text-anchor="end" font-size="11">{end:.0f} s</text>'
        f'<text x="{left}" y="{height - 6}" font-size="11">0 s</text>'
    )
    return (
        f'<svg class="inflight" role="img" aria-label="LM requests in flight over time" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">{axis}'
        f'<polygon points="{area}" fill="#4c72b0" fill-opacity="0.25"/>'
        f'<polyline points="{line}" fill="none" stroke="#4c72b0" stroke-width="1.5"/></svg>'
        '<p class="muted">Mean LM requests in flight per time slice, over the last call of the run that '
        "sent requests (seconds since it began).</p>"
    )


def _dropped(view: RunView) -> str:
    if not view.dropped:
        return ""
    rows = [[_e(name), _e(reason[:300])] for name, reason in view.dropped]
    return "<h2>Dropped proposals</h2>" + _table(["predictor", "reason"], rows)


def _unreadable(view: RunView) -> str:
    text = unreadable_text(view)
    return "" if text is None else f'<p class="warn">Warning: {_e(text)}.</p>'


def render_report(
    view: RunView, stats: Mapping[str, list[CandidateStats]], images: Mapping[str, bytes] | None
) -> str:
    """The whole page; ``images`` maps plot names to PNG bytes (``None``: matplotlib is missing)."""
    config = json.dumps(dict(view.config), indent=2, ensure_ascii=False, default=str)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aprompt report · {_e(view.run_dir.name)}</title>
<style>{CSS.replace("FAILING_ROW", FAILING_ROW)}</style></head>
<body><main>
<h1>aprompt run report</h1>
<div class="muted">{_e(view.run_dir)} · seed {_e(view.config.get("seed", "?"))}</div>
{_summary(view)}
{_unreadable(view)}
<h2>Scores</h2>
{_plots(images)}
<h2>Final prompts</h2>
{_prompts(view)}
<h2>Examples</h2>
{_examples(view)}
<h2>What the search favoured</h2>
{_preferences(view, stats)}
<h2>Evaluations</h2>
{_trials(view)}
<h2>Usage and time</h2>
{_usage(view)}
<h3>Requests in flight</h3>
{_in_flight(view)}
{_dropped(view)}
<details><summary>Run configuration</summary><pre>{_e(config)}</pre></details>
</main></body></html>
"""
