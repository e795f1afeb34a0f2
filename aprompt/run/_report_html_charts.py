"""The charts of ``aprompt report``'s page: the plots as embedded PNGs, and the requests in flight as an
inline SVG (drawn here: no matplotlib needed).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from aprompt.run._report_html_tables import escape
from aprompt.run._report_view import RunView

__all__ = ["in_flight_chart", "plot_images"]


def plot_images(images: Mapping[str, bytes] | None) -> str:
    """The plots as embedded PNGs (``None``: matplotlib is missing; ``{}``: nothing to plot yet)."""
    if images is None:
        return '<p class="note">Plots need matplotlib: <code>pip install "aprompt[ui]"</code>.</p>'
    if not images:
        return '<p class="note">No trials yet.</p>'
    titles = {"trial_scores": "Score per trial", "best_so_far": "Best score so far"}
    return "".join(
        f'<img class="plot" alt="{escape(titles.get(name, name))}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        for name, png in images.items()
    )


def in_flight_chart(view: RunView) -> str:
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
