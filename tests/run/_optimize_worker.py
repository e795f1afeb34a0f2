"""One journaled optimization of the simulated world against a fake server: the child the kill test kills.

``python -m tests.run._optimize_worker BASE_URL RUN_DIR OUT_JSON`` (run from the repository root, the API
key in ``$APROMPT_WORKER_KEY``, never on the command line) runs the optimization with ``run_dir=RUN_DIR``
and, once it finishes, writes :func:`summary` of the result to ``OUT_JSON``. The test process imports
:func:`run_world` and :func:`summary` too, so the child and its uninterrupted reference are one config.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

import aprompt
from aprompt import OpenAICompatibleLM
from tests.optimize.world import TwoStageProgram, examples, metric

KEY_ENV_VAR = "APROMPT_WORKER_KEY"
BUDGET = {"n_candidates": 4, "val_size": 40, "n_trials": 12, "minibatch_size": 15, "parallel_trials": 2}
SEED = 3
# Few calls in flight: what a kill loses (answered but not yet cached) stays small.
MAX_CONCURRENCY = 8


def world_lm(base_url: str | list[str], api_key: str, **lm_options: Any) -> OpenAICompatibleLM:
    """The client of every world run (``lm_options`` override its defaults)."""
    return OpenAICompatibleLM(
        "world", base_url, api_key=api_key, **{"max_concurrency": MAX_CONCURRENCY, **lm_options}
    )


async def optimize_world(
    lm: aprompt.LM,
    run_dir: str | os.PathLike[str] | None,
    *,
    scored_by: Callable[[aprompt.Example, Any], Any] = metric,
    **options: Any,
) -> aprompt.OptimizeResult:
    """The optimization both the child and the tests run (``options`` go to :func:`aprompt.optimize`;
    ``scored_by`` replaces the world's metric)."""
    return await aprompt.optimize(
        TwoStageProgram(),
        examples(0, 80),
        scored_by,
        valset=examples(200, 240),
        lm=lm,
        budget=BUDGET,
        seed=SEED,
        run_dir=run_dir,
        **{"concurrency": MAX_CONCURRENCY, **options},
    )


async def run_world(
    base_url: str,
    run_dir: str | os.PathLike[str] | None,
    api_key: str,
    *,
    lm_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> aprompt.OptimizeResult:
    """:func:`optimize_world` with a :func:`world_lm` closed afterwards."""
    async with world_lm(base_url, api_key, **(lm_options or {})) as lm:
        return await optimize_world(lm, run_dir, **options)


def summary(result: aprompt.OptimizeResult) -> dict[str, Any]:
    """What two runs must agree on, as plain JSON (a JSON round trip leaves it unchanged)."""
    data = {
        "best_choice": dict(result.best_choice),
        "score": result.score,
        "baseline_score": result.baseline_score,
        "trials": [[t.number, dict(t.choice), t.score, list(t.example_ids)] for t in result.trials],
        "full_evals": [[dict(f.choice), f.score, f.after_trial] for f in result.full_evals],
        "candidates": result.candidates.describe(),
    }
    parsed: dict[str, Any] = json.loads(json.dumps(data))
    return parsed


def main(argv: list[str]) -> None:
    base_url, run_dir, out = argv
    result = anyio.run(run_world, base_url, run_dir, os.environ[KEY_ENV_VAR])
    target = Path(out)
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(summary(result)), encoding="utf-8")
    partial.replace(target)


if __name__ == "__main__":
    main(sys.argv[1:])
