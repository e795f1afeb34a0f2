"""The report's plots, drawn with matplotlib (``pip install 'aprompt[ui]'``) as PNG bytes.

matplotlib is imported when a plot is drawn, never with this module: :func:`plots` says when it is missing.
"""

from __future__ import annotations

import io
import math
from typing import Any

from aprompt.run._report_view import RunView

__all__ = ["plot_best_so_far", "plot_trial_scores", "plots"]


def _new_figure(height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    figure = Figure(figsize=(10, height), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_trial_scores(view: RunView) -> bytes:
    """PNG: each trial's mini-batch score and each full evaluation's score, by trial number."""
    figure, axes = _new_figure(3.6)
    scored = [(t["number"], float(t["score"])) for t in view.trials if t.get("score") is not None]
    if scored:
        axes.scatter(*zip(*scored, strict=True), s=28, color="#4c72b0", label="mini-batch trial", zorder=3)
    failed = [t["number"] for t in view.trials if t.get("score") is None]
    if failed:
        axes.scatter(failed, [0] * len(failed), marker="x", color="#c44e52", label="trial unscored")
    fulls = [(f["after_trial"] - 0.5, float(f["score"])) for f in view.full_evals]
    if fulls:
        axes.scatter(
            *zip(*fulls, strict=True), s=70, marker="D", color="#dd8452", label="full evaluation", zorder=4
        )
    if view.baseline_score is not None:
        axes.axhline(view.baseline_score, color="#999999", linestyle=":", label="baseline")
    axes.set(xlabel="trial", ylabel="score", ylim=(-0.03, 1.03), title="Score per trial")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return _png(figure)


def plot_best_so_far(view: RunView) -> bytes:
    """PNG: the best mini-batch score and the best full-evaluation score so far, by trial number."""
    figure, axes = _new_figure(3.2)
    best, xs, ys = -math.inf, [], []
    for trial in view.trials:
        if trial.get("score") is not None:
            best = max(best, float(trial["score"]))
        if best > -math.inf:
            xs.append(trial["number"])
            ys.append(best)
    if xs:
        axes.step(xs, ys, where="post", color="#4c72b0", label="best mini-batch")
    best, xs, ys = -math.inf, [], []
    for full in sorted(view.full_evals, key=lambda f: int(f["after_trial"])):
        best = max(best, float(full["score"]))
        xs.append(full["after_trial"])
        ys.append(best)
    if xs:
        last = max(xs[-1], len(view.trials))
        axes.step(
            [*xs, last],
            [*ys, ys[-1]],
            where="post",
            color="#dd8452",
            linewidth=2.5,
            label="best full evaluation",
        )
    axes.set(xlabel="trial", ylabel="score", ylim=(-0.03, 1.03), title="Best so far")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return _png(figure)


def plots(view: RunView) -> dict[str, bytes] | None:
    """The report's plots by name (``{}``: nothing to plot yet; ``None``: matplotlib is missing)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    if not view.trials and not view.full_evals:
        return {}
    return {"trial_scores": plot_trial_scores(view), "best_so_far": plot_best_so_far(view)}
