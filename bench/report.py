"""Writing benchmark results: the command that produced them, a Markdown table, a JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """How to reproduce this run: ``python -m bench.<module> <args>``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([".venv/bin/python", "-m", f"bench.{module}", *args])


def git_commit(root: Path) -> str:
    """The commit the code under ``root`` is at (short hash), ``+changes`` when ``aprompt/`` or ``bench/``
    (results aside) differ from it; ``unknown`` outside a git checkout."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changes = git("status", "--porcelain", "--", "aprompt", "bench", ":(exclude)bench/results")
    except OSError:
        return "unknown"
    return commit + ("+changes" if changes else "")


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
        "python_reference_ms": python_reference_ms(),
        "versions": versions,
    }


def python_reference_ms(repeats: int = 7) -> float:
    """CPU milliseconds of a fixed pure-Python workload (JSON, string formatting, dicts, calls), median
    of ``repeats``: the machine's speed when a result is written. The same code's CPU figures differ
    two-fold between hours on a shared machine; figures from two runs compare after scaling by this."""
    body = {"model": "m", "messages": [{"role": "user", "content": "word " * 60} for _ in range(6)]}

    def once() -> int:
        total = 0
        for index in range(300):
            text = json.dumps(body)
            total += len(json.loads(text)["messages"])
            total += sum(len(f"{key}: {value!s:.20}") for key, value in body.items())
            total += len({str(index + n): n for n in range(20)})
        return total

    times = []
    for _ in range(repeats):
        started = time.process_time()
        once()
        times.append(time.process_time() - started)
    return round(1000 * statistics.median(times), 2)


def environment_line(env: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    load = "/".join(str(x) for x in env["load_average_1_5_15min"])
    speed = env.get("python_reference_ms")
    speed_text = (
        f", a fixed Python workload {speed} ms of CPU (`bench.report.python_reference_ms`)" if speed else ""
    )
    return (
        f"Python {env['python']}, {env['cpus']} CPUs (load average {load} when written{speed_text}), "
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


#: Two-sided 95 % quantiles of Student's t, by degrees of freedom 1 to 30.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (table to 30, then the
    Cornish-Fisher expansion, within 0.001 of the exact value there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The 95 % t-interval of the mean of ``values`` (None with fewer than two)."""
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile_975(len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = 2000, seed: str = "bootstrap"
) -> tuple[float, float] | None:
    """The 95 % percentile-bootstrap interval of the mean of ``values`` (None when empty); seeded, so the
    same values always give the same interval."""
    if not values:
        return None
    rng = random.Random(seed)
    n = len(values)
    means = sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


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
