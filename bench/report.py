"""Writing benchmark results: the command that produced them, a Markdown table, a JSON file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """How to reproduce this run: ``python -m bench.<module> <args>``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([".venv/bin/python", "-m", f"bench.{module}", *args])


def environment() -> dict[str, Any]:
    """Versions and machine: what a reader needs to compare figures."""
    versions = {}
    for package in ("aprompt", "dspy", "xllamacpp", "litellm", "optuna"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # Other work on the machine slows a CPU-bound local model: say how busy it was.
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def environment_line(env: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    load = "/".join(str(x) for x in env["load_average_1_5_15min"])
    return (
        f"Python {env['python']}, {env['cpus']} CPUs (load average {load} when written), "
        f"{env['platform']}; {versions}."
    )


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A pipe table; ``align`` is one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(temporary, path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path
