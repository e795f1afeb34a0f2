"""What a run did, read back from its journal: ``aprompt show`` (text) and ``aprompt report`` (HTML).

:func:`load_run` gathers a :class:`RunView` from ``run_dir``: the journal's trials, full evaluations,
candidates and result, plus two optional files beside it that the command line writes —
``original_program.json`` (the prompts before optimizing, when the journal holds no copy of them) and
``result.json`` (the saved
:class:`~aprompt._optimize.result.OptimizeResult`, with usage per phase). :func:`write_report` renders a
self-contained HTML page; its plots need matplotlib (``pip install 'aprompt[ui]'``) and are left out,
with a note, without it.

This module is the public face of the parts behind it: ``_report_view`` (loading a run),
``_report_text`` (the text), ``_report_plots`` (the plots) and ``_report_html`` (the page).

Example::

    print(describe_run(load_run("runs/qa")))
    write_report("runs/qa", "runs/qa/report.html")
"""

from __future__ import annotations

import os
from pathlib import Path

from aprompt._errors import ConfigError
from aprompt._files import write_text_atomically
from aprompt.run._report_html import render_report
from aprompt.run._report_plots import plot_best_so_far, plot_trial_scores, plots
from aprompt.run._report_text import describe_run
from aprompt.run._report_view import (
    ORIGINAL_FILE,
    RESULT_FILE,
    CandidateStats,
    PromptView,
    RunView,
    choice_stats,
    load_run,
)

__all__ = [
    "ORIGINAL_FILE",
    "RESULT_FILE",
    "CandidateStats",
    "PromptView",
    "RunView",
    "choice_stats",
    "describe_run",
    "load_run",
    "plot_best_so_far",
    "plot_trial_scores",
    "write_report",
]


def write_report(run_dir: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> Path:
    """Write the HTML report of ``run_dir`` (default: ``run_dir/report.html``); returns its path.

    One self-contained file: plots are embedded PNGs (left out, with a note, without matplotlib).

    Raises:
        ConfigError: ``run_dir`` holds no run journal, or the report cannot be written.
    """
    view = load_run(run_dir)
    target = Path(out_path) if out_path is not None else Path(run_dir) / "report.html"
    page = render_report(view, choice_stats(view), plots(view))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(target, page)
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {target}: {exc}") from None
    return target
