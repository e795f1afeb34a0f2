"""The HTML page of ``aprompt report``: one self-contained file (inline CSS, plots as data: URIs).

This module lays the page out: its style, the summary cards, the prompts side by side, and the sections in
order; the tables are drawn by ``_report_html_tables`` and the charts by ``_report_html_charts``.

Every value from the run is escaped: prompts and demos are user data and may hold markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aprompt.run._report_html_charts import in_flight_chart, plot_images
from aprompt.run._report_html_tables import (
    MAX_EXAMPLES_SHOWN,
    escape,
    evaluations_section,
    examples_section,
    html_table,
    preferences_section,
    usage_section,
)
from aprompt.run._report_text import pick_text, score_text, unreadable_text
from aprompt.run._report_view import CandidateStats, PromptView, RunView

__all__ = ["FAILING_ROW", "MAX_EXAMPLES_SHOWN", "render_report"]


MAX_DEMOS_SHOWN = 3
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


def _card(label: str, value: str, css: str = "") -> str:
    return (
        f'<div class="card"><div class="label">{escape(label)}</div>'
        f'<div class="value {css}">{value}</div></div>'
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
        _card("Strategy", escape(view.strategy)),
        _card("Status", escape(status)),
        _card("Baseline", score_text(view.baseline_score)),
        _card("Best", score_text(view.best_score), "good"),
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
        # result.json counts hits per phase of the last call alone: a resumed run's card says so.
        sent_last = sum(int(p.get("usage", {}).get("requests", 0)) for p in view.phases)
        resumed = view.lm_calls is not None and view.lm_calls != sent_last
        cards.append(_card("Cache hits, last call" if resumed else "Cache hits", f"{hits:,}"))
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
    why = f'<p class="why"><b>Why this program:</b> {escape(reason)}</p>' if reason else ""
    return f'<div class="cards">{"".join(cards)}</div>{why}'


def _demos(demos: tuple[Mapping[str, Any], ...]) -> str:
    if not demos:
        return '<p class="muted">no demos</p>'

    def one(demo: Mapping[str, Any]) -> str:
        fields = "<br>".join(f"<b>{escape(k)}:</b> {escape(str(v)[:400])}" for k, v in demo.items())
        return f'<div class="demo">{fields}</div>'

    shown = "".join(one(d) for d in demos[:MAX_DEMOS_SHOWN])
    rest = demos[MAX_DEMOS_SHOWN:]
    more = f"<details><summary>{len(rest)} more</summary>{''.join(one(d) for d in rest)}</details>"
    return f"<p class='muted'>{len(demos)} demos</p>{shown}{more if rest else ''}"


def _prompt_box(title: str, prompt: PromptView, css: str) -> str:
    text = prompt.instruction
    body = f"<pre>{escape(text)}</pre>" if text is not None else '<p class="note">not in the journal</p>'
    return (
        f'<div class="prompt {css}"><div class="head">{escape(title)}</div>{body}{_demos(prompt.demos)}</div>'
    )


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
            f"<h3>{escape(name)}</h3><div class='side'>"
            + _prompt_box("Original", original, "")
            + _prompt_box(
                f"Optimized · instruction #{i}, demo set #{d}{_format_note(best)}", best, "optimized"
            )
            + "</div>"
        )
    return "".join(parts)


def _dropped(view: RunView) -> str:
    if not view.dropped:
        return ""
    rows = [[escape(name), escape(reason[:300])] for name, reason in view.dropped]
    return "<h2>Dropped proposals</h2>" + html_table(["predictor", "reason"], rows)


def _unreadable(view: RunView) -> str:
    text = unreadable_text(view)
    return "" if text is None else f'<p class="warn">Warning: {escape(text)}.</p>'


def render_report(
    view: RunView, stats: Mapping[str, list[CandidateStats]], images: Mapping[str, bytes] | None
) -> str:
    """The whole page; ``images`` maps plot names to PNG bytes (``None``: matplotlib is missing)."""
    config = json.dumps(dict(view.config), indent=2, ensure_ascii=False, default=str)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aprompt report · {escape(view.run_dir.name)}</title>
<style>{CSS.replace("FAILING_ROW", FAILING_ROW)}</style></head>
<body><main>
<h1>aprompt run report</h1>
<div class="muted">{escape(view.run_dir)} · seed {escape(view.config.get("seed", "?"))}</div>
{_summary(view)}
{_unreadable(view)}
<h2>Scores</h2>
{plot_images(images)}
<h2>Final prompts</h2>
{_prompts(view)}
<h2>Examples</h2>
{examples_section(view)}
<h2>What the search favoured</h2>
{preferences_section(view, stats)}
<h2>Evaluations</h2>
{evaluations_section(view)}
<h2>Usage and time</h2>
{usage_section(view)}
<h3>Requests in flight</h3>
{in_flight_chart(view)}
{_dropped(view)}
<details><summary>Run configuration</summary><pre>{escape(config)}</pre></details>
</main></body></html>
"""
