"""A journaled, limited optimization of the simulated world: the child the limit kill test kills.

``python -m tests.run._limited_worker BASE_URL RUN_DIR OUT_JSON MAX_LM_CALLS`` (API key in
``$APROMPT_WORKER_KEY``) runs :func:`tests.run._optimize_worker.run_world` with that ``max_lm_calls`` and
writes what it returned (``stopped_by``, ``spent``) to ``OUT_JSON``, and whether it warned that its result
may differ from an uninterrupted run's (``inexact``: an :class:`aprompt.InexactResumeWarning`).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from functools import partial
from pathlib import Path

import anyio

import aprompt
from tests.run._optimize_worker import KEY_ENV_VAR, run_world


def main(argv: list[str]) -> None:
    base_url, run_dir, out, limit = argv
    run = partial(
        run_world, base_url, run_dir, os.environ[KEY_ENV_VAR], limits=aprompt.Limits(max_lm_calls=int(limit))
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = anyio.run(run)
    inexact = any(issubclass(w.category, aprompt.InexactResumeWarning) for w in caught)
    Path(out).write_text(
        json.dumps({"stopped_by": result.stopped_by, "spent": dict(result.spent), "inexact": inexact})
    )


if __name__ == "__main__":
    main(sys.argv[1:])
